"""How late this process's event loop has run: a timeout is only evidence against whoever we
waited for if the loop itself was awake to see the answer.

asyncio runs a timer that expired during a stall (a CPU-starved machine, a long synchronous
step) before the task that would read the answer already in the socket, so a stall longer than
a timeout turns every call in flight into a timeout. `LoopLag` ticks every `every` seconds and
remembers the stalls it saw; `stalled_since(t)` says whether the loop stalled after `t` (or is
stalled right now: its last tick is overdue). A stall under way at a timeout's
deadline, or ending after it, means the timeout fired late.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

STALL = 0.5  # seconds late a tick must be to count as a stall


class LoopLag:
    """A ticker on the running loop that keeps the loop's recent stalls (end time, seconds late)."""

    def __init__(self, every: float = 0.1, stall: float = STALL, clock: Callable[[], float] = time.monotonic):
        self.every, self.stall, self.clock = every, stall, clock
        self.stalls: collections.deque[tuple[float, float]] = collections.deque(maxlen=32)
        self.last_tick = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop (once)."""
        if self._task is None or self._task.done():
            self.last_tick = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            now = self.clock()
            late = now - self.last_tick - self.every
            self.last_tick = now
            if late >= self.stall:
                self.stalls.append((now, late))

    def stalled_since(self, since: float) -> float:
        """The longest stall (seconds) that ended after `since`, counting one under way; 0 if none."""
        overdue = self.clock() - self.last_tick - self.every if self._task is not None else 0.0
        seen = max((late for end, late in self.stalls if end >= since), default=0.0)
        longest = max(seen, overdue)
        return longest if longest >= self.stall else 0.0
