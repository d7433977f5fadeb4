"""LoopLag sees a blocked event loop, both after the stall and while it is under way."""

from __future__ import annotations

import asyncio
import time

from proxy.looplag import LoopLag


def test_a_stall_is_seen_after_it_and_while_it_lasts() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        lag = LoopLag(every=0.05, stall=0.3)
        lag.start()
        await asyncio.sleep(0.2)
        began = time.monotonic()
        quiet = lag.stalled_since(began)
        time.sleep(0.6)  # the loop is blocked: the ticker's tick is overdue
        during = lag.stalled_since(began)
        await asyncio.sleep(0.1)  # the ticker runs and records the stall
        after = lag.stalled_since(began)
        later = lag.stalled_since(time.monotonic())  # a window that began after the stall
        lag.stop()
        return quiet, during, after, later

    quiet, during, after, later = asyncio.run(scenario())
    assert quiet == 0.0
    assert 0.45 <= during < 2.0, during
    assert 0.45 <= after < 2.0, after
    assert later == 0.0
