"""The Redis backend's guarantees on a real redis-server: a lock left by a holder that died is
recovered within its lifetime, a store never replaces a newer fetch, waiters are woken by the
store (not a hot loop), and the GCRA keeps one turn per interval on Redis's clock."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.evidence import Document
from proxy.fetch import Fetched
from proxy.shared import PREFIX, RedisState, decode, encode
from tests.engines import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def fetched(url: str, at: str, body: bytes = b"User-agent: *\nDisallow: /\n") -> Fetched:
    return Fetched("ok", Document(url, 200, "ab" * 32, at), body, 3600.0, (("Content-Type", "text/plain"),))


class Origin:
    """A document fetch that counts its calls and takes `seconds` (a stand-in for the origin)."""

    def __init__(self, url: str, seconds: float = 0.0, at: str = "2026-12-03T10:00:00.000Z") -> None:
        self.url, self.seconds, self.at, self.calls = url, seconds, at, 0

    async def __call__(self) -> Fetched:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return fetched(self.url, self.at)


def lock_of(url: str) -> str:
    """The Redis key of `url`'s fetch lock."""
    return f"{PREFIX}lock:{hashlib.sha256(url.encode()).hexdigest()[:32]}"


def test_a_lock_left_by_a_dead_holder_is_recovered_within_its_lifetime(redis_server: RedisServer) -> None:
    url = "http://dead-holder.example/robots.txt"

    async def scenario() -> tuple[float, int]:
        state = RedisState(redis_server.url, lock_ttl=1.0)
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        # A worker took the lock and died before storing anything or releasing it.
        await state.redis.set(f"{PREFIX}lock:{digest}", "a-dead-workers-token", px=1000)
        calls = 0

        async def fetch() -> Fetched:
            nonlocal calls
            calls += 1
            return fetched(url, "2026-12-03T10:00:00.000Z")

        started = time.monotonic()
        got = await state.document(url, fetch)
        took = time.monotonic() - started
        assert got.body is not None and got.document.url == url
        await state.close()
        return took, calls

    took, calls = asyncio.run(scenario())
    assert calls == 1  # fetched once, by us, after the dead holder's lock ran out
    assert 0.5 <= took < 5  # not before the lock's lifetime, and not much after


def test_a_fetch_slower_than_the_locks_lifetime_is_still_fetched_once(redis_server: RedisServer) -> None:
    """The holder's fetch takes three lock lifetimes (a slow origin, optout_fetch_timeout above
    half of LOCK_TTL): the holder keeps its lock alive, so the other worker waits for its copy
    instead of taking the lock and fetching the origin a second time."""
    url = "http://slower-than-the-lock.example/robots.txt"

    async def scenario() -> tuple[int, bytes | None, float]:
        a, b = RedisState(redis_server.url, lock_ttl=1.0), RedisState(redis_server.url, lock_ttl=1.0)
        slow = Origin(url, seconds=3.0)
        first = asyncio.create_task(a.document(url, slow, lasts=10.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        got = await b.document(url, slow, lasts=10.0)
        waited = time.monotonic() - started
        await first
        left = await a.redis.exists(lock_of(url))
        await a.close()
        await b.close()
        assert left == 0  # released by its holder once stored
        return slow.calls, got.body, waited

    calls, body, waited = asyncio.run(scenario())
    assert calls == 1  # the holder's fetch only
    assert body == b"User-agent: *\nDisallow: /\n"
    assert 2.0 < waited < 5  # woken by the store (about 2.8 s), not by a deadline


def test_the_subscription_is_in_force_when_start_returns(redis_server: RedisServer) -> None:
    """A waiter looks at a lock only after the fleet's channels are subscribed: a store published
    right after its look is then never missed. Redis counts the patterns once `start` returns."""

    async def scenario() -> tuple[int, bool]:
        state = RedisState(redis_server.url)
        await state.start()
        patterns = await state.redis.execute_command("PUBSUB", "NUMPAT")
        channel = f"{PREFIX}done:right-after"
        future = state._wait_on(channel)
        await state.redis.publish(channel, b"1")
        await asyncio.wait_for(future, 2)
        await state.close()
        return int(patterns), future.done()

    patterns, woken = asyncio.run(scenario())
    assert patterns == 3  # done:*, free:* and hold
    assert woken


def test_a_holder_that_overruns_its_own_bound_lets_the_lock_lapse(redis_server: RedisServer) -> None:
    """The holder's fetch said it lasts at most 1 s and hangs: its lock is extended for that long
    only, then lapses, so the next worker takes it and fetches (once) instead of every request of
    the fleet waiting out a lock kept alive for ever."""
    url = "http://overrun.example/robots.txt"

    async def scenario() -> tuple[int, float]:
        a, b = RedisState(redis_server.url, lock_ttl=1.0), RedisState(redis_server.url, lock_ttl=1.0)
        hang = asyncio.Event()

        async def hung() -> Fetched:
            await hang.wait()
            return fetched(url, "2026-12-03T10:00:00.000Z")

        quick = Origin(url, at="2026-12-03T10:00:01.000Z")
        holder = asyncio.create_task(a.document(url, hung, lasts=1.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await b.document(url, quick, lasts=1.0)
        waited = time.monotonic() - started
        await b.document(url, quick, lasts=1.0)  # stored by b's fetch: read, not fetched
        hang.set()
        await holder
        await a.close()
        await b.close()
        return quick.calls, waited

    calls, waited = asyncio.run(scenario())
    assert calls == 1
    assert waited < 4  # the lock lapsed about 2 s after it was taken, not at the waiter's deadline (6 s)


def test_a_fetch_under_way_when_its_state_closes_still_stores_and_releases(redis_server: RedisServer) -> None:
    """A reload replaces the shared state while one of its flows holds a fetch lock: the holder
    still stores the document and releases its lock, so the fleet reads it instead of waiting out
    the lock and fetching the origin again."""
    url = "http://closing.example/robots.txt"

    async def scenario() -> tuple[int, float, bool]:
        old, other = RedisState(redis_server.url, lock_ttl=3.0), RedisState(redis_server.url, lock_ttl=3.0)
        slow = Origin(url, seconds=1.0)
        holder = asyncio.create_task(old.document(url, slow, lasts=5))
        await asyncio.sleep(0.3)
        await old.close()
        await holder
        locked = bool(await other.redis.exists(lock_of(url)))
        started = time.monotonic()
        await other.document(url, slow, lasts=5)
        waited = time.monotonic() - started
        await other.close()
        return slow.calls, waited, locked

    calls, waited, locked = asyncio.run(scenario())
    assert not locked
    assert calls == 1 and waited < 1


def test_a_state_closed_while_it_subscribes_keeps_no_listener(redis_server: RedisServer) -> None:
    """close() at any point of start(): no subscription outlives the state (a reload would leak a
    connection and keep applying the fleet's holds to a state nobody uses)."""

    async def scenario() -> list[int]:
        leaked = []
        for steps in range(0, 40, 2):
            state = RedisState(redis_server.url)
            starting = asyncio.create_task(state.start())
            for _ in range(steps):
                await asyncio.sleep(0)
            await state.close()
            await starting
            await asyncio.sleep(0.05)
            if state._listener is not None and not state._listener.done():
                leaked.append(steps)
                state._listener.cancel()
        return leaked

    assert asyncio.run(scenario()) == []


def test_a_store_never_replaces_a_newer_fetch(redis_server: RedisServer) -> None:
    url = "http://race.example/robots.txt"

    async def scenario() -> Fetched:
        state = RedisState(redis_server.url)
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        key = f"{PREFIX}doc:{digest}"
        newer = fetched(url, "2026-12-03T12:00:00.000Z", b"User-agent: *\nDisallow: /new\n")
        older = fetched(url, "2026-12-03T11:00:00.000Z", b"User-agent: *\nDisallow: /old\n")
        store = state._scripts["store"]
        assert await store(keys=[key], args=[encode(newer), 60_000, newer.document.fetched_at]) == 1
        assert (
            await store(keys=[key], args=[encode(older), 60_000, older.document.fetched_at]) == 0
        )  # slow, stale
        stored = decode(await state.redis.hget(key, "v"))
        await state.close()
        return stored

    stored = asyncio.run(scenario())
    assert stored.body == b"User-agent: *\nDisallow: /new\n" and stored.document.fetched_at.startswith(
        "2026-12-03T12"
    )


def test_waiters_are_woken_by_the_store_and_fetch_nothing(redis_server: RedisServer) -> None:
    url = "http://slow.example/robots.txt"

    async def scenario() -> tuple[int, int, float]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        calls = 0

        async def slow() -> Fetched:
            nonlocal calls
            calls += 1
            await asyncio.sleep(1.0)
            return fetched(url, "2026-12-03T10:00:00.000Z")

        first = asyncio.create_task(a.document(url, slow))
        await asyncio.sleep(0.1)
        before = b.calls
        started = time.monotonic()
        await asyncio.gather(*(b.document(url, slow) for _ in range(20)))
        waited = time.monotonic() - started
        await first
        round_trips = b.calls - before
        await a.close()
        await b.close()
        return calls, round_trips, waited

    calls, round_trips, waited = asyncio.run(scenario())
    assert calls == 1  # one fetch for 21 callers on two workers
    assert waited < 2.5  # woken when the store landed (about 0.9 s), not after a poll timeout
    assert round_trips <= 20 * 5  # a few look-ups each, not a hot loop


def test_a_fetch_that_lands_between_our_look_and_our_lock_is_read_not_fetched_again(
    redis_server: RedisServer,
) -> None:
    """Worker A stores the document and frees its lock just after worker B looked (nothing stored)
    and just before B takes the lock: B reads A's copy instead of fetching the origin a second time."""
    url = "http://between.example/robots.txt"

    async def scenario() -> tuple[int, bytes | None]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        calls = 0

        async def fetch() -> Fetched:
            nonlocal calls
            calls += 1
            return fetched(url, "2026-12-03T10:00:00.000Z")

        real_hget, looks = b.redis.hget, 0

        async def hget_then_a_finishes(*args: object) -> object:
            nonlocal looks
            looks += 1
            seen = await real_hget(*args)
            if looks == 1:
                await a.document(url, fetch)  # A fetches, stores and releases its lock right now
            return seen

        b.redis.hget = hget_then_a_finishes
        got = await b.document(url, fetch)
        await a.close()
        await b.close()
        return calls, got.body

    calls, body = asyncio.run(scenario())
    assert calls == 1  # A's fetch only
    assert body == b"User-agent: *\nDisallow: /\n"


def test_the_pace_is_one_turn_per_interval_on_redis_clock(redis_server: RedisServer) -> None:
    async def scenario() -> list[tuple[bool, float]]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        turns = [await (a if i % 2 else b).turn("http://paced.example:80", 1.0, 2.5) for i in range(5)]
        await a.close()
        await b.close()
        return [(t.granted, t.wait) for t in turns]

    turns = asyncio.run(scenario())
    waits = [w for granted, w in turns if granted]
    assert [granted for granted, _ in turns] == [True, True, True, False, False]  # 0, 1, 2 s; 3 s > max_wait
    assert [round(w) for w in waits] == [0, 1, 2]


def test_the_local_and_redis_ledgers_each_start_where_the_other_left_off(redis_server: RedisServer) -> None:
    """Redis restarted empty: turns this worker granted must not be granted again. Redis gone: the
    local pace goes on from the fleet's last turn, not from now."""
    origin = "http://ledgers.example:80"

    async def scenario() -> list[float]:
        state = RedisState(redis_server.url)
        waits = [(await state.turn(origin, 1.0, 5.0)).wait]  # granted now: the next is 1 s on
        await state.redis.flushall()  # a restart that lost the keys
        waits.append((await state.turn(origin, 1.0, 5.0)).wait)  # still 1 s on, from our ledger
        redis_server.kill()
        waits.append((await state.turn(origin, 1.0, 5.0)).wait)  # alone: 2 s on, not now
        await state.close()
        return waits

    waits = asyncio.run(scenario())
    assert [round(w, 1) for w in waits] == [0.0, 1.0, 2.0], waits


def test_a_slot_held_by_a_dead_worker_frees_when_its_lease_expires(redis_server: RedisServer) -> None:
    origin = "http://leased.example:80"

    async def scenario() -> tuple[bool, float, int]:
        state = RedisState(redis_server.url)
        # A worker took the only slot and was killed: its lease (expiring in 0.8 s) is never renewed.
        now_s, now_us = await state.redis.time()
        await state.redis.zadd(
            f"{PREFIX}slots:{origin}", {"dead-workers-token": now_s * 1000 + now_us // 1000 + 800}
        )
        started = time.monotonic()
        lease = await state.acquire_slot(origin, 1, 3.0)
        took = time.monotonic() - started
        assert lease is not None and lease.fleet
        held = await state.redis.zcard(f"{PREFIX}slots:{origin}")
        state.release_slot(lease)
        await asyncio.sleep(0.2)  # the release runs in the background
        left = await state.redis.zcard(f"{PREFIX}slots:{origin}")
        await state.close()
        return held == 1, took, left

    only_ours, took, left = asyncio.run(scenario())
    assert only_ours  # the dead worker's lease was dropped, ours is the one slot
    assert 0.6 <= took < 2.0  # after the lease ran out (found by the waiter's own poll), not later
    assert left == 0


def test_a_released_slot_wakes_a_waiter_on_another_worker(redis_server: RedisServer) -> None:
    origin = "http://busy.example:80"

    async def scenario() -> tuple[float, bool]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        first = await a.acquire_slot(origin, 1, 0)
        assert first is not None
        assert await b.acquire_slot(origin, 1, 0) is None  # taken, and no wait allowed
        waiting = asyncio.create_task(b.acquire_slot(origin, 1, 5.0))
        await asyncio.sleep(0.2)
        released = time.monotonic()
        a.release_slot(first)
        second = await waiting
        took = time.monotonic() - released
        await a.close()
        await b.close()
        return took, second is not None

    took, got = asyncio.run(scenario())
    assert got and took < 0.4  # woken by the release message, sooner than the 0.5 s poll


def test_slots_fall_back_to_this_workers_share_while_redis_is_down(redis_server: RedisServer) -> None:
    async def scenario() -> list[bool]:
        state = RedisState(redis_server.url, workers=2)
        await state.redis.ping()
        redis_server.kill()
        # Four slots fleet-wide, two workers: alone, this worker takes two at most.
        leases = [await state.acquire_slot("http://down.example:80", 4, 0) for _ in range(3)]
        await state.close()
        return [lease is not None for lease in leases]

    assert asyncio.run(scenario()) == [True, True, False]


def test_a_slot_freed_while_redis_stalls_is_freed_when_it_answers_again(redis_server: RedisServer) -> None:
    origin = "http://blip.example:80"

    async def scenario() -> tuple[int, int]:
        state = RedisState(redis_server.url)
        lease = await state.acquire_slot(origin, 1, 0)
        assert lease is not None and lease.fleet
        redis_server.cli("CLIENT", "PAUSE", "4500", "ALL")  # a failover, a fork, a slow disk
        state.release_slot(lease)  # the flow ended; the free times out
        await asyncio.sleep(5.0)
        await state.renew_slots()  # the heartbeat's renewal frees it again, Redis answering
        await asyncio.sleep(5.5)  # (and past DOWN_FOR, so the worker uses Redis again)
        await state.renew_slots()
        left = await state.redis.zcard(f"{PREFIX}slots:{origin}")
        taken = await state.acquire_slot(origin, 1, 0)
        await state.close()
        return left, int(taken is not None)

    assert asyncio.run(scenario()) == (0, 1)


def test_slots_taken_while_redis_was_down_count_when_it_is_back(redis_server: RedisServer) -> None:
    origin = "http://back.example:80"

    async def scenario() -> tuple[bool, bool]:
        state = RedisState(redis_server.url, workers=1)
        await state.redis.ping()
        redis_server.cli("CLIENT", "PAUSE", "2500", "ALL")
        local = await state.acquire_slot(origin, 1, 0)  # Redis slow: this worker's share, locally
        await asyncio.sleep(6)  # Redis back, and tried again
        fleet = await state.acquire_slot(origin, 1, 0)  # the local slot is still in flight
        await state.close()
        return local is not None, fleet is not None

    assert asyncio.run(scenario()) == (True, False)


@pytest.mark.parametrize("piled_up", [0, 400], ids=["alone", "work-piled-up-behind-the-stall"])
def test_a_stalled_event_loop_is_not_redis_being_down(redis_server: RedisServer, piled_up: int) -> None:
    """A reply that arrived while this process's loop was blocked (a CPU-starved machine, a long
    synchronous step) is not Redis being slow: the call is tried again, Redis stays in use, even
    when the work queued during the stall runs before the timeout is handled."""
    from proxy.shared import REDIS_TIMEOUT

    async def scenario() -> tuple[object, bool, object]:
        state = RedisState(redis_server.url)
        await state.start()
        await state.redis.set("stall-key", "v")  # a pooled connection, ready
        # Redis answers this after 0.3 s (nothing to pop); the loop is blocked from 0.1 s on.
        call = asyncio.create_task(state._call(lambda: state.redis.blpop(["stall-list"], timeout=0.3)))

        async def stall() -> None:
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            for _ in range(piled_up):  # 1 ms each, all run right after the stall
                loop.call_soon(time.sleep, 0.001)
            time.sleep(REDIS_TIMEOUT + 1.5)

        await asyncio.gather(call, stall(), return_exceptions=True)
        got = call.exception() or call.result()
        up = state.up
        after = await state._call(lambda: state.redis.get("stall-key"))
        await state.close()
        return got, up, after

    got, up, after = asyncio.run(scenario())
    assert got is None, repr(got)  # BLPOP's nil: the answer Redis gave, not a timeout
    assert up
    assert after == b"v"


def test_a_turn_asked_twice_with_one_token_is_one_turn(redis_server: RedisServer) -> None:
    """A retried turn (its first answer lost in a stall) gets the same answer, not the next turn."""

    async def scenario() -> list[list[int]]:
        state = RedisState(redis_server.url)
        turn = state._scripts["turn"]
        pace = f"{PREFIX}pace:twice.example"
        first = await turn(keys=[pace, f"{PREFIX}turn:t1"], args=[1000, 5000, 10_000])
        again = await turn(keys=[pace, f"{PREFIX}turn:t1"], args=[1000, 5000, 10_000])
        other = await turn(keys=[pace, f"{PREFIX}turn:t2"], args=[1000, 5000, 10_000])
        await state.close()
        return [first, again, other]

    first, again, other = asyncio.run(scenario())
    assert first == again == [1, 0]  # granted now, once
    assert other[0] == 1 and 900 <= other[1] <= 1000  # the next request's turn is one interval on


def test_a_hung_redis_with_a_responsive_loop_is_down_after_one_timeout(redis_server: RedisServer) -> None:
    """No stall of ours: the first timeout marks Redis down (no retry stretches the outage)."""
    import signal

    from proxy.shared import REDIS_TIMEOUT, _Down

    async def scenario() -> tuple[float, bool]:
        state = RedisState(redis_server.url)
        await state.start()
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(_Down):
                await state._call(lambda: state.redis.get("anything"))
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        took = time.monotonic() - started
        up = state.up
        await state.close()
        return took, up

    took, up = asyncio.run(scenario())
    assert not up
    assert took < REDIS_TIMEOUT * 2 + 1, took


def test_waiters_look_again_at_once_when_the_holders_fetch_fails(redis_server: RedisServer) -> None:
    """The holder's fetch raised (a local limit): nothing is stored, but its release tells the
    waiters, who fetch at once rather than at their next poll (a quarter of the lock's life)."""
    url = "http://failing-holder.example/robots.txt"

    async def scenario() -> tuple[float, int]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        await a.start()
        await b.start()
        calls = 0

        async def failing() -> Fetched:
            await asyncio.sleep(0.3)
            raise RuntimeError("no free connection of our own")

        async def fine() -> Fetched:
            nonlocal calls
            calls += 1
            return fetched(url, "2026-12-03T10:00:00.000Z")

        holder = asyncio.create_task(a.document(url, failing))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        got = await b.document(url, fine)
        took = time.monotonic() - started
        with pytest.raises(RuntimeError):
            await holder
        assert got.body is not None
        await a.close()
        await b.close()
        return took, calls

    took, calls = asyncio.run(scenario())
    assert calls == 1
    assert took < 2.0, took  # not the 7.5 s poll


def test_a_lock_whose_take_reply_was_lost_is_released_when_redis_is_back(redis_server: RedisServer) -> None:
    """A's lock take ran in Redis but its reply was lost (a timeout): A fetched on its own. When
    Redis answers A again, A releases that lock, so B waits seconds, not the lock's 30 s."""
    import redis.exceptions

    url = "http://lost-reply.example/robots.txt"

    async def scenario() -> tuple[float, list[str]]:
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        await a.start()
        await b.start()
        fetches: list[str] = []

        def fetch_as(who: str):  # type: ignore[no-untyped-def]
            async def fetch() -> Fetched:
                fetches.append(who)
                return fetched(url, "2026-12-03T10:00:00.000Z")

            return fetch

        real_lock = a._scripts["lock"]

        async def lock_then_lose_the_reply(**kwargs: object) -> object:
            await real_lock(**kwargs)
            a._scripts["lock"] = real_lock
            raise redis.exceptions.TimeoutError("the reply was lost")

        a._scripts["lock"] = lock_then_lose_the_reply
        await a.document(url, fetch_as("A"))  # Redis "down" for A: fetched alone, lock left behind
        started = time.monotonic()
        await b.document(url, fetch_as("B"))
        took = time.monotonic() - started
        await a.close()
        await b.close()
        return took, fetches

    took, fetches = asyncio.run(scenario())
    assert fetches == ["A", "B"]
    assert took < 12, took  # A's recovery probe (every 5 s) released it; not the 30 s lock
