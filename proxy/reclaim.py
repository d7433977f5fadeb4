"""Give back the memory of a body mitmproxy aborted, now rather than at some later full collection.

When a body outgrows `body_size_limit`, mitmproxy drops the flow but its
partly read buffer (up to the limit) stays in a reference cycle of the HTTP
layer's stream objects. Only a full collection frees a cycle, and Python
starts one by counting allocations, not bytes: an origin that sends endless
bodies one after another held several buffers at once (about 400 MiB with a
32 MiB cap, bench/attack.py). A collection shortly after each abort keeps
that to one. At most one a second, so an attacker cannot turn it into a stall.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    # glibc only; elsewhere the collection alone has to do.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


class Reclaimer:
    """Schedules a full garbage collection soon after an abort, at most once per `interval` seconds."""

    def __init__(self, *, delay: float = 0.3, interval: float = 1.0) -> None:
        self.delay = delay  # lets mitmproxy finish tearing the flow down first
        self.interval = interval
        self._pending = False
        self._last = float("-inf")
        self._settled = False

    def settle(self) -> None:
        """Once started: move everything alive now (mitmproxy, our modules, the policy) out of the
        collector's sight (`gc.freeze`), so a full collection, ours or Python's own, scans
        only what flows create instead of stalling every connection on the whole heap."""
        if not self._settled:
            self._settled = True
            gc.collect()
            gc.freeze()

    def soon(self) -> None:
        """Collect once the current event has been handled (no-op outside a running loop)."""
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._pending = True
        loop.call_later(max(self.delay, self._last + self.interval - loop.time()), self._collect, loop)

    def _collect(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = False
        self._last = loop.time()
        freed = gc.collect()
        if _trim is not None:
            _trim(0)  # hand the freed heap back to the OS (glibc keeps it otherwise)
        logger.debug("optout: collected %d objects after an aborted body", freed)
