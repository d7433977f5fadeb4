"""A bounded per-origin cache with TTLs and one in-flight load per key.

A hundred concurrent requests to a new origin cause one load: the first
caller starts it and the rest await the same future (Scrapy's placeholder
idea). Requests for other keys never wait on it. Least recently used entries
are evicted beyond `max_size`. Time comes from `clock`, so tests can move it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0


class OriginCache(Generic[K, V]):
    """LRU + TTL cache whose loads are de-duplicated per key."""

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> V | None:
        """The cached value for `key` even if expired, without touching its recency."""
        hit = self._entries.get(key)
        return hit[0] if hit is not None else None

    def fresh(self, key: K) -> V | None:
        """The value for `key` if it is cached and fresh (a hit), else None; never loads."""
        hit = self._entries.get(key)
        if hit is not None and hit[1] > self._clock():
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return hit[0]
        return None

    async def get(self, key: K, load: Callable[[V | None], Awaitable[tuple[V, float]]]) -> V:
        """The fresh value for `key`, loading it (once, however many callers) when missing or stale.

        `load(previous)` gets the stale value (or None) and returns (value, ttl_seconds).
        """
        hit = self._entries.get(key)
        if hit is not None and hit[1] > self._clock():
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return hit[0]
        task = self._inflight.get(key)
        if task is None:
            self.stats.misses += 1
            self.stats.loads += 1
            # The load runs as its own task, so a caller that goes away (a
            # crawler hanging up) cannot cancel it for everyone else.
            task = asyncio.create_task(self._load(key, load, hit[0] if hit is not None else None))
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
        else:
            self.stats.hits += 1
        return await asyncio.shield(task)

    async def _load(
        self, key: K, load: Callable[[V | None], Awaitable[tuple[V, float]]], previous: V | None
    ) -> V:
        try:
            value, ttl = await load(previous)
            self._store(key, value, ttl)
            return value
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: K, value: V, ttl: float) -> None:
        self._entries[key] = (value, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def resize(self, max_size: int) -> None:
        """Change the bound, evicting the least recently used entries beyond it."""
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a load's exception as seen: its callers got it, or all went away."""
    if not task.cancelled():
        task.exception()
