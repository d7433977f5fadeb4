"""How many requests may be in flight to one origin at once (`politeness.max_concurrency`).

A request that may be forwarded takes a slot of its origin first and gives it
back when its flow ends (the response delivered or withheld, or an error). In
one process the slots are counted here, and a request that finds them all
taken queues for the next one in arrival order. With Redis the slots are the
members of one sorted set per origin (proxy.shared); this class then only
counts for the time Redis is down.

A slot is a lease, not a promise to remember: a flow whose end we never see
(a worker killed with -9) holds its Redis slot only until the lease expires
(renewed while the flow lives), and a flow collected without an end hook
gives its slot back as it goes (a weakref finalizer on its state).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot at `origin`, taken under `limit`; `fleet`: held in Redis (else in this process)."""

    origin: str
    token: str
    fleet: bool = False
    limit: int = 1


class Slots:
    """Per-origin slots in this process, handed to waiters first come, first served.

    The limit is the one the latest request brought (a policy reload may change
    it while requests are queued): a freed slot goes to a waiter only while
    fewer than that many are held, and a raised limit serves waiters at once.
    """

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._queues: dict[str, deque[asyncio.Future[Lease | None]]] = {}
        self._limits: dict[str, int] = {}

    def in_use(self, origin: str) -> int:
        return len(self._held.get(origin, ()))

    async def acquire(self, origin: str, limit: int, max_wait: float) -> Lease | None:
        """A slot at `origin` (at most `limit` held at once), or None when none came free within
        `max_wait` seconds."""
        self._limits[origin] = limit
        held = self._held.setdefault(origin, set())
        self._hand_over(origin)  # a raised limit serves those already waiting first
        if len(held) < limit and not self._waiting(origin):
            return self._take(origin, held, limit)
        if max_wait <= 0:
            self._tidy(origin)
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease | None] = loop.create_future()
        self._queues.setdefault(origin, deque()).append(future)
        # Not asyncio.wait_for: a slot handed over just as the wait times out would be lost.
        timer = loop.call_later(max_wait, _give_up, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and (lease := future.result()) is not None:
                self.release(lease)
            raise
        finally:
            timer.cancel()
            queue = self._queues.get(origin)
            if queue is not None and future in queue:
                queue.remove(future)
            self._tidy(origin)

    def release(self, lease: Lease) -> None:
        """Give `lease`'s slot back: to the first waiter, if any. Releasing twice is harmless.
        Call on the event loop's thread (`release_soon` from anywhere else)."""
        held = self._held.get(lease.origin)
        if held is None or lease.token not in held:
            return
        held.discard(lease.token)
        self._hand_over(lease.origin)
        self._tidy(lease.origin)

    def _hand_over(self, origin: str) -> None:
        held = self._held.get(origin)
        queue = self._queues.get(origin)
        limit = self._limits.get(origin, 1)
        while queue and held is not None and len(held) < limit:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(self._take(origin, held, limit))

    def _waiting(self, origin: str) -> bool:
        return any(not f.done() for f in self._queues.get(origin, ()))

    def _take(self, origin: str, held: set[str], limit: int) -> Lease:
        token = os.urandom(8).hex()
        held.add(token)
        return Lease(origin, token, limit=limit)

    def _tidy(self, origin: str) -> None:
        """Forget an origin with nothing held and nobody waiting."""
        if self._queues.get(origin) is not None and not self._queues[origin]:
            del self._queues[origin]
        if not self._held.get(origin, True) and origin not in self._queues:
            del self._held[origin]
            self._limits.pop(origin, None)


def _give_up(future: asyncio.Future[Lease | None]) -> None:
    if not future.done():
        future.set_result(None)


def release_soon(loop: asyncio.AbstractEventLoop, release: Callable[[Lease], None], lease: Lease) -> None:
    """`release(lease)` on `loop`'s thread: at once when called there, else scheduled on it.

    A flow state's finalizer can run wherever the garbage collector runs, which
    may be an executor thread; the slots are the event loop's alone.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        release(lease)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(release, lease)
