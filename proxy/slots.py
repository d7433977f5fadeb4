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
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot at `origin`; `fleet`: held in Redis (else in this process)."""

    origin: str
    token: str
    fleet: bool = False


class Slots:
    """Per-origin slots in this process, handed to waiters first come, first served."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._queues: dict[str, deque[asyncio.Future[Lease | None]]] = {}

    def in_use(self, origin: str) -> int:
        return len(self._held.get(origin, ()))

    async def acquire(self, origin: str, limit: int, max_wait: float) -> Lease | None:
        """A slot at `origin` (at most `limit` held at once), or None when none came free within
        `max_wait` seconds."""
        held = self._held.setdefault(origin, set())
        queue = self._queues.get(origin)
        if len(held) < limit and not queue:
            return self._take(origin, held)
        if max_wait <= 0:
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
            self._forget_queue(origin, future)

    def release(self, lease: Lease) -> None:
        """Give `lease`'s slot back: to the first waiter, if any. Releasing twice is harmless."""
        held = self._held.get(lease.origin)
        if held is None or lease.token not in held:
            return
        held.discard(lease.token)
        queue = self._queues.get(lease.origin)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(self._take(lease.origin, held))
                return
        if not held:
            del self._held[lease.origin]

    def _take(self, origin: str, held: set[str]) -> Lease:
        token = os.urandom(8).hex()
        held.add(token)
        return Lease(origin, token)

    def _forget_queue(self, origin: str, future: asyncio.Future[Lease | None]) -> None:
        queue = self._queues.get(origin)
        if queue is None:
            return
        if future in queue:
            queue.remove(future)
        if not queue:
            del self._queues[origin]
        if not self._held.get(origin, True):
            del self._held[origin]


def _give_up(future: asyncio.Future[Lease | None]) -> None:
    if not future.done():
        future.set_result(None)
