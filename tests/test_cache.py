"""OriginCache: single flight, independence of keys, TTL and LRU bounds."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache import OriginCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_gets_cause_one_load() -> None:
    cache: OriginCache[str, str] = OriginCache(10)
    release = asyncio.Event()
    calls = 0

    async def load(previous: str | None) -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await release.wait()
        return "doc", 60.0

    tasks = [asyncio.create_task(cache.get("a", load)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == ["doc"] * 100
    assert calls == 1


async def test_other_keys_are_not_held_up() -> None:
    cache: OriginCache[str, str] = OriginCache(10)
    never = asyncio.Event()

    async def slow(previous: str | None) -> tuple[str, float]:
        await never.wait()
        return "slow", 60.0

    async def fast(previous: str | None) -> tuple[str, float]:
        return "fast", 60.0

    slow_task = asyncio.create_task(cache.get("slow", slow))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(cache.get("fast", fast), timeout=5) == "fast"
    assert not slow_task.done()
    slow_task.cancel()


async def test_a_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    cache: OriginCache[str, str] = OriginCache(10)
    release = asyncio.Event()

    async def load(previous: str | None) -> tuple[str, float]:
        await release.wait()
        return "doc", 60.0

    first = asyncio.create_task(cache.get("a", load))
    second = asyncio.create_task(cache.get("a", load))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "doc"


async def test_ttl_expiry_reloads_with_previous_value() -> None:
    clock = Clock()
    cache: OriginCache[str, int] = OriginCache(10, clock=clock)
    seen: list[int | None] = []

    async def load(previous: int | None) -> tuple[int, float]:
        seen.append(previous)
        return (previous or 0) + 1, 3600.0

    assert await cache.get("a", load) == 1
    clock.now += 3599
    assert await cache.get("a", load) == 1
    clock.now += 2
    assert await cache.get("a", load) == 2
    assert seen == [None, 1]


async def test_lru_eviction() -> None:
    cache: OriginCache[str, str] = OriginCache(2)

    async def load(previous: str | None) -> tuple[str, float]:
        return "v", 60.0

    await cache.get("a", load)
    await cache.get("b", load)
    await cache.get("a", load)  # a is now most recent
    await cache.get("c", load)  # evicts b
    assert cache.peek("a") == "v" and cache.peek("c") == "v" and cache.peek("b") is None
    assert cache.stats.evictions == 1
    cache.resize(1)
    assert len(cache) == 1 and cache.peek("c") == "v"


async def test_a_failed_load_is_not_cached() -> None:
    cache: OriginCache[str, str] = OriginCache(2)
    attempts = 0

    async def load(previous: str | None) -> tuple[str, float]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("boom")
        return "ok", 60.0

    with pytest.raises(RuntimeError):
        await cache.get("a", load)
    assert await cache.get("a", load) == "ok"
