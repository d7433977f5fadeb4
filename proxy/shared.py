"""What the workers of a fleet share: policy documents, their fetches, and each origin's pace.

One small interface, two backends, chosen by the policy key `shared_state`:

* `memory` (the default; nothing to install): this process only. Documents
  are not shared (the origin cache already fetches each origin once per
  process) and the pace is kept here, by the same GCRA as below.
* a Redis URL (`redis://host:6379/0`): the fleet. A policy document fetched
  by one worker is stored in Redis (raw bytes, status, headers, fetch time)
  for its RFC 9309 lifetime (at most 24 h); at most one worker fetches a
  document at a time (`SET NX PX` lock with a random token, released only by
  its holder, which extends it while its fetch runs; a holder that dies loses
  it within LOCK_TTL, however long fetches may take); the others wait on a
  pub/sub message, not a hot loop, for as long as the holder's fetch may
  last; a store never overwrites a newer fetch. The pace of each origin is a
  GCRA on Redis's clock (one Lua script).

Redis is a helper, never a gate to open: when it is down or slow, a worker
fetches documents itself and paces origins locally at the interval times the
number of workers, says so (log and `optout_shared_state_up`), and goes back
to Redis by itself when it answers again. Nothing is forwarded undecided
either way: a failure here only ever means a fetch of our own or a wait.
A call whose timeout fired late because this process's own event loop was
stalled says nothing about Redis (`proxy.looplag`): it is tried once more, so
every script is safe to run twice (a turn is remembered by its token; a hold
run twice ends at most the stall's length later).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.evidence import Document
from proxy.fetch import Fetched
from proxy.looplag import LoopLag
from proxy.slots import Lease, Slots

logger = logging.getLogger(__name__)

LOCK_TTL = 30.0  # seconds a fetch lock outlives a crashed holder (a live one extends it)
MAX_CONNECTIONS = 32  # per worker; a pub/sub subscription holds one
DOWN_FOR = 5.0  # after a Redis failure, seconds before it is tried again
HEARTBEAT_EVERY = 5.0  # seconds between a worker's "alive" notes in Redis (and slot renewals)
HEARTBEAT_TTL = 30  # seconds a silent worker stays listed
LEASE_TTL = 30.0  # seconds an origin slot outlives a worker that stopped renewing it (killed)
SLOT_POLL = 0.5  # a waiter for a fleet slot looks again this often even without a "free" message
REDIS_TIMEOUT = 2.0  # seconds any Redis call may take before it counts as down
TURN_MEMORY_MS = 10_000  # how long Redis remembers the answer to a turn, for a retried call
PREFIX = "optout:"
Fetch = Callable[[], Awaitable[Fetched]]


@dataclass(frozen=True, slots=True)
class Turn:
    """The answer to "may I ask this origin now?": wait `wait` seconds first, or (not `granted`)
    do not ask at all: the turn is more than the bound away (`wait` says how far)."""

    granted: bool
    wait: float


class Pace:
    """GCRA per origin in this process: one request per `interval`, no burst; the same algorithm
    as the Redis script, on the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}  # theoretical arrival time of the next request, per origin
        self._clock = clock
        self._latest = 0.0  # the furthest TAT set: past it, no origin waits (a cheap test per request)

    def turn(self, key: str, interval: float, max_wait: float) -> Turn:
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        wait = tat - now
        if wait > max_wait:
            return Turn(False, wait)
        if interval > 0:
            self._tat[key] = tat + interval
            self._latest = max(self._latest, tat + interval)
        if len(self._tat) > 100_000:  # forget origins whose turn is long past
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return Turn(True, wait)

    def ahead(self, key: str) -> float:
        """Seconds until `key`'s next turn here (0: now)."""
        tat = self._tat.get(key)
        return 0.0 if tat is None else max(0.0, tat - self._clock())

    def hold(self, key: str, seconds: float) -> None:
        """No turn for `key` for `seconds` (an origin's Retry-After)."""
        now = self._clock()
        self._tat[key] = max(self._tat.get(key, now), now + seconds)
        self._latest = max(self._latest, self._tat[key])

    def anything_held(self) -> bool:
        """Whether any origin's turn is still ahead (False: no request needs to ask)."""
        return self._latest > self._clock()

    def held(self, key: str) -> bool:
        """Whether `key`'s next turn is still ahead (a request to it would wait)."""
        tat = self._tat.get(key)
        return tat is not None and tat > self._clock()


class SharedState:
    """The in-process backend (`shared_state: memory`) and the interface the enforcer uses."""

    kind = "memory"

    def __init__(self, workers: int = 1) -> None:
        self.pace = Pace()
        self.slots = Slots()
        self.workers = max(1, workers)
        self.spec = "memory"  # the policy's shared_state this backend serves

    @property
    def up(self) -> bool:
        return True

    async def document(self, url: str, fetch: Fetch, *, lasts: float = 0.0) -> Fetched:
        """The document at `url`: fetched by `fetch`, or (Redis) by another worker.

        `lasts` is the longest `fetch` may take (its own deadline): how long a
        worker waits for another worker's fetch of the same document before it
        fetches the document itself.
        """
        return await fetch()

    def held(self, origin: str) -> bool:
        """Whether requests to `origin` must wait their turn now although it sets no interval (a
        Retry-After in force): answered from this process's memory, no round trip."""
        return self.pace.held(origin)

    async def turn(self, origin: str, interval: float, max_wait: float) -> Turn:
        """The origin's next turn. Workers that share nothing (`run --workers N` on memory) each
        pace it at N times the interval: together, the fleet keeps the interval on average."""
        return self.pace.turn(origin, interval * self.workers, max_wait)

    async def hold(self, origin: str, seconds: float) -> None:
        self.pace.hold(origin, seconds)

    async def acquire_slot(self, origin: str, limit: int, max_wait: float) -> Lease | None:
        """One of `origin`'s `limit` slots (politeness.max_concurrency), or None when none came
        free within `max_wait` seconds; each of N workers that share nothing has limit / N (at
        least one)."""
        return await self.slots.acquire(origin, max(1, limit // self.workers), max_wait)

    def release_slot(self, lease: Lease) -> None:
        """Give a slot back (synchronous: it runs from flow hooks and finalizers)."""
        self.slots.release(lease)

    async def renew_slots(self) -> None:
        """Keep the fleet slots of live flows from expiring (Redis; called with the heartbeat)."""

    async def start(self) -> None:
        """Begin listening to the fleet (Redis: holds other workers announce)."""

    async def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        """Say this worker is alive (Redis: seen by `optout-proxy fleet status`)."""

    async def close(self) -> None:
        pass


def encode(got: Fetched) -> bytes:
    d = got.document
    return orjson.dumps({
        "outcome": got.outcome, "ttl": got.ttl, "headers": got.headers, "stored": time.time(),
        "body": base64.b64encode(got.body).decode() if got.body is not None else None,
        "document": {"url": d.url, "status": d.status, "sha256": d.sha256, "fetched_at": d.fetched_at,
                     "final_url": d.final_url, "error": d.error, "truncated": d.truncated},
    })  # fmt: skip


def decode(raw: bytes) -> Fetched:
    """A stored fetch, its lifetime shortened by the time it spent in the store."""
    v = orjson.loads(raw)
    body = base64.b64decode(v["body"]) if v["body"] is not None else None
    left = float(v["ttl"]) - max(0.0, time.time() - float(v["stored"]))
    return Fetched(
        v["outcome"], Document(**v["document"]), body, max(1.0, left), tuple(tuple(h) for h in v["headers"])
    )


# KEYS[1] the document; ARGV: value, lifetime ms, fetched_at. A store never replaces a newer fetch.
_STORE = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and at > ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# The fetch lock: SET NX PX, and "already ours" when the same token asks again (a retried call).
# KEYS[1] the lock, KEYS[2] the document; ARGV[1] the token, ARGV[2] its lifetime (ms).
# 2: the document is stored (a holder finished between our look and this take: do not fetch again).
_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('HEXISTS', KEYS[2], 'v') == 1 then return 2 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS[1] the lock; ARGV[1] the holder's token, ARGV[2] the new lifetime (ms): only the holder
# extends it, every third of its lifetime while its fetch runs.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] the lock; ARGV[1] the holder's token: only the holder releases it.
# KEYS[2] the waiters' channel: told when the lock goes, stored or not (a holder whose fetch failed
# stored nothing; its waiters look again now instead of at their next poll).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], '0')
  return 1
end
return 0
"""
# GCRA on Redis's clock. KEYS[1] the origin's TAT (ms), KEYS[2] this request's turn: the time it
# was granted (kept TURN_MEMORY_MS, so a retried call gets the same turn, not the next; a refusal or
# an interval of 0 changes nothing and is not kept); ARGV: interval ms, max wait ms, TURN_MEMORY_MS,
# and the ms until the asking worker's own next turn (no turn before it: what it granted alone).
# Returns {1, wait ms} (granted: ask after the wait) or {0, wait ms} (refused).
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local granted = tonumber(redis.call('GET', KEYS[2]))
if granted then return {1, math.max(0, granted - now)} end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local floor = now + tonumber(ARGV[4] or 0)
if tat < floor then tat = floor end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local interval = tonumber(ARGV[1])
if interval > 0 then
  redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', wait + interval + 1000)
  redis.call('SET', KEYS[2], string.format('%d', tat), 'PX', ARGV[3])
end
return {1, wait}
"""
# KEYS[1] the origin's TAT; ARGV[1] ms to hold it back (Retry-After), on Redis's clock.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < until_ then redis.call('SET', KEYS[1], until_, 'PX', tonumber(ARGV[1]) + 1000) end
return 1
"""
# An origin's slots (politeness.max_concurrency): KEYS[1] a sorted set of lease tokens scored by
# their expiry (ms, Redis's clock). Take: ARGV token, limit, lease ms; 1 when taken.
_SLOT_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
# Free: ARGV token, the channel that wakes the waiters of every worker, the limit. Published only
# when the slots were all taken (someone may be waiting): not one message per request fleet-wide.
_SLOT_FREE = """
local before = redis.call('ZCARD', KEYS[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and before >= tonumber(ARGV[3]) then
  redis.call('PUBLISH', ARGV[2], '1')
end
return 1
"""
# Renew: KEYS the slot sets, ARGV[1] lease ms, ARGV[i + 1] the token held in KEYS[i].
_SLOT_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ms, ARGV[i + 1]) == 1 then redis.call('PEXPIRE', key, ms) end
end
return 1
"""


class RedisState(SharedState):
    """`shared_state: redis://...`: documents, fetch locks and pace shared by every worker."""

    kind = "redis"

    def __init__(
        self, url: str, workers: int = 1, *, on_change: Callable[[bool], None] | None = None,
        lock_ttl: float = LOCK_TTL,
    ) -> None:  # fmt: skip
        super().__init__(workers)
        self.spec = url
        self.lock_ttl = lock_ttl  # seconds a crashed holder's fetch lock lives on
        import redis.asyncio as aioredis

        # A bounded pool that waits for a free connection: a burst of new origins queues here
        # instead of failing with "Too many connections" (which would read as Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )  # fmt: skip
        self.redis: Any = aioredis.Redis(connection_pool=pool)
        self._down_until = 0.0
        self._on_change = on_change
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._leases: dict[str, str] = {}  # token -> origin of the fleet slots this worker holds
        # What Redis must still hear from us, by token: the release of a fetch lock or the free of
        # a slot whose call (or whose take) met Redis down. Each is run again when Redis answers
        # and with every heartbeat until it lands: else the other workers would wait out the
        # whole lock or lease for something nobody holds. (Every one is safe to run twice.)
        self._owed: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._holders = 0  # fetches under our lock in flight: close() leaves them their store and release
        self._tasks: set[asyncio.Task[Any]] = set()  # slot and lock releases under way
        scripts = (
            ("store", _STORE), ("lock", _LOCK), ("extend", _EXTEND), ("release", _RELEASE), ("turn", _TURN),
            ("hold", _HOLD),
            ("take", _SLOT_TAKE), ("free", _SLOT_FREE), ("renew", _SLOT_RENEW),
        )  # fmt: skip
        self._scripts = {name: self.redis.register_script(src) for name, src in scripts}
        self.calls = 0  # Redis round trips (bench/fleet.py reports them per request)
        self.lag = LoopLag()
        self.closed = False  # close() ran: no call starts (nor restarts the ticker)

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: BaseException) -> None:
        if self.closed:
            return  # a call under way when a reload replaced this state: the new one speaks now
        was_up = self.up
        self._down_until = time.monotonic() + DOWN_FOR
        if was_up:
            logger.warning(
                "optout: shared state %s unavailable (%s); deciding on our own fetches", self.spec, e
            )
            if self._on_change:
                self._on_change(False)
            if self._probe is None or self._probe.done():
                self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Ping Redis every DOWN_FOR seconds while it is down: back in use (and said so) as soon as
        it answers, traffic or not."""
        while self._down_until and not self.closed:
            await asyncio.sleep(DOWN_FOR)
            try:
                await asyncio.wait_for(self.redis.ping(), REDIS_TIMEOUT * 2)
            except (TimeoutError, OSError, _redis_errors()):
                self._down_until = time.monotonic() + DOWN_FOR
                continue
            self._worked()

    def _worked(self) -> None:
        if self._down_until and not self.closed:
            self._down_until = 0.0
            logger.warning("optout: shared state %s is back", self.spec)
            if self._on_change:
                self._on_change(True)
            if self._owed:
                self._spawn(self._pay_all())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _owe(self, token: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Note a release Redis must hear of (run by `_pay`, again until it lands)."""
        self._owed[token] = call

    async def _pay(self, token: str) -> None:
        """Run the release owed under `token`; it stays owed if Redis does not answer."""
        call = self._owed.get(token)
        if call is None:
            return
        with contextlib.suppress(_Down):
            await self._call(call, finishing=True)
            if self._owed.get(token) is call:
                del self._owed[token]

    async def _pay_all(self) -> None:
        for token in list(self._owed):
            if self.up:
                await self._pay(token)

    async def _call(self, what: Callable[[], Awaitable[Any]], *, finishing: bool = False) -> Any:
        """One Redis round trip; raises _Down when Redis is down or slow (and marks it so).

        A timeout that fired late, because our own loop was stalled, is tried once more: the answer
        may have been waiting in the socket all along. (Every script is safe to run twice.)
        After close() only `finishing` calls run: the store and release of a fetch already under
        our lock, the free of a slot, what is owed; nothing new starts."""
        if not self.up or (self.closed and not finishing):
            raise _Down
        self.lag.start()
        retried = False
        while True:
            self.calls += 1
            began = time.monotonic()
            try:
                result = await asyncio.wait_for(what(), REDIS_TIMEOUT * 2)
            except (TimeoutError, OSError, _redis_errors()) as e:
                # A stall under way at, or ending after, the attempt's first deadline: the timeout
                # fired late, whatever other work the loop did after the stall.
                stalled = self.lag.stalled_since(began + REDIS_TIMEOUT) if _timed_out(e) else 0.0
                if stalled and not retried and not self.closed:
                    retried = True
                    logger.info(
                        "optout: a Redis call timed out while this process's event loop was stalled "
                        "%.1f s; trying it again",
                        stalled,
                    )
                    continue
                self._failed(e)
                raise _Down from e
            self._worked()
            return result

    # -- documents ------------------------------------------------------------

    async def document(self, url: str, fetch: Fetch, *, lasts: float = 0.0) -> Fetched:
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        key, lock, channel = f"{PREFIX}doc:{digest}", f"{PREFIX}lock:{digest}", f"{PREFIX}done:{digest}"
        # A live holder began no earlier than we did and ends within `lasts`; a dead one's lock
        # goes within lock_ttl. Past both, something is wrong: fetch it ourselves.
        deadline = time.monotonic() + max(lasts, self.lock_ttl) + 5
        try:
            while True:
                stored = await self._call(lambda: self.redis.hget(key, "v"))
                if stored is not None:
                    return decode(stored)
                token = os.urandom(16).hex()
                lock_ms = int(self.lock_ttl * 1000)
                take = functools.partial(self._scripts["lock"], keys=[lock, key], args=[token, lock_ms])
                try:
                    taken = await self._call(take)
                except _Down:
                    self._owe(token, self._lock_release(lock, channel, token))  # the take may have landed
                    raise
                if taken == 2:
                    continue  # stored meanwhile: read it
                if taken:
                    return await self._fetch_and_store(fetch, key, lock, channel, token, lasts)
                if time.monotonic() > deadline:
                    break  # the holder is taking too long: fetch it ourselves
                await self._wait_for(channel, lock)
        except _Down:
            pass
        return await fetch()

    async def _fetch_and_store(
        self, fetch: Fetch, key: str, lock: str, channel: str, token: str, lasts: float
    ) -> Fetched:
        self._holders += 1
        keeper = asyncio.get_running_loop().create_task(
            self._keep_lock(lock, token, max(lasts, self.lock_ttl))
        )
        try:
            try:
                got = await fetch()
            finally:
                keeper.cancel()
            if got.outcome in ("ok", "unavailable", "unreachable"):
                with contextlib.suppress(_Down):
                    ms = max(1000, int(got.ttl * 1000))
                    await self._call(
                        lambda: self._scripts["store"](
                            keys=[key], args=[encode(got), ms, got.document.fetched_at]
                        ),
                        finishing=True,
                    )
                    await self._call(lambda: self.redis.publish(channel, b"1"), finishing=True)
            return got
        finally:
            self._owe(token, self._lock_release(lock, channel, token))
            await self._pay(token)
            self._holders -= 1
            if self.closed and not self._holders:
                with contextlib.suppress(Exception):
                    await self.redis.aclose()  # the last holder of a closed state: its connections

    async def _keep_lock(self, lock: str, token: str, lasts: float) -> None:
        """Extend our fetch lock every third of its lifetime while the fetch runs, for at most
        `lasts` seconds (the fetch's own bound): a fetch slower than the lock's lifetime is not
        fetched a second time by a waiter that thinks us dead, and one that overruns its bound
        (a bug) lets the lock lapse instead of holding the fleet's waiters for ever.

        Not gated by `up`: a Redis that stalled once an instant ago still keeps the lock alive
        if it answers now."""
        ms = int(self.lock_ttl * 1000)
        until = time.monotonic() + lasts
        while time.monotonic() + self.lock_ttl / 3 < until:
            await asyncio.sleep(self.lock_ttl / 3)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._scripts["extend"](keys=[lock], args=[token, ms]), REDIS_TIMEOUT)

    def _lock_release(self, lock: str, channel: str, token: str) -> Callable[[], Awaitable[Any]]:
        """The call that releases our fetch lock (if Redis cannot say it did, it stays owed: else
        the other workers wait out the lock's whole lifetime)."""
        return functools.partial(self._scripts["release"], keys=[lock, channel], args=[token])

    async def _wait_for(self, channel: str, lock: str) -> None:
        """Until the fetch behind `lock` is stored (a pub/sub message), or the lock is gone, or a
        quarter of its lifetime passed (then look again: its holder may have died)."""
        await self._listen()
        future = self._wait_on(channel)
        try:
            # Subscribed before looking: a store that lands now is not missed.
            if not await self._call(lambda: self.redis.exists(lock)):
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(future, self.lock_ttl / 4)
        finally:
            self._unwait(channel, future)

    def _wait_on(self, channel: str) -> asyncio.Future[None]:
        """A future the next message on `channel` completes (register before looking)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(future)
        return future

    def _unwait(self, channel: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiters.get(channel, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiters.pop(channel, None)

    async def _listen(self) -> None:
        """Subscribe once per process (the first waiter does; the others await the same)."""
        if self._subscribed is None or (self._subscribed.done() and self._subscribed.exception() is not None):
            self._subscribed = asyncio.get_running_loop().create_task(self._subscribe())
        await asyncio.shield(self._subscribed)

    async def start(self) -> None:
        with contextlib.suppress(_Down):
            await self._listen()

    async def _subscribe(self) -> None:
        pubsub = self.redis.pubsub()
        patterns = (f"{PREFIX}done:*", f"{PREFIX}free:*", f"{PREFIX}hold")
        await self._call(lambda: pubsub.psubscribe(*patterns))

        waiting = len(patterns)  # outside `confirmed`: a retried call goes on counting

        async def confirmed() -> None:
            # Redis's word that the patterns are in force: until then a store published after a
            # waiter's look would be missed (it would wait a quarter of the lock's lifetime).
            nonlocal waiting
            while waiting:
                message = await pubsub.get_message(timeout=REDIS_TIMEOUT)
                if message is None:
                    raise TimeoutError("no subscription confirmation from Redis")
                if message.get("type") == "psubscribe":
                    waiting -= 1
                else:
                    self._on_message(message)

        try:
            await self._call(confirmed)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        if self.closed:  # closed while we subscribed: no listener outlives the state
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise _Down
        self._listener = asyncio.get_running_loop().create_task(self._dispatch(pubsub))

    def _on_message(self, message: dict[str, Any]) -> None:
        """A fleet message: a hold on an origin, or a channel whose waiters look again now."""
        if message.get("type") != "pmessage":
            return
        if message["pattern"] in (b"optout:hold", "optout:hold"):
            hold = orjson.loads(message["data"])
            self.pace.hold(str(hold["origin"]), float(hold["seconds"]))
            return
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        for future in self._waiters.pop(channel, []):
            if not future.done():
                future.set_result(None)

    async def _dispatch(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                self._on_message(message)
        except Exception as e:  # the connection dropped: waiters fall back to their timeouts
            logger.info("optout: shared state subscription ended (%s)", e)
        finally:
            self._subscribed = None  # the next waiter subscribes again
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if not self.closed:
                # Not only waiters need it: the holds other workers announce arrive only this
                # way, and a worker with no waiter would never hear one again after a restart.
                self._spawn(self._resubscribe())

    async def _resubscribe(self) -> None:
        """Subscribe again after the subscription ended, every DOWN_FOR seconds until it holds."""
        while not self.closed:
            try:
                await self._listen()
                logger.info("optout: shared state subscription resumed")
                return
            except (_Down, TimeoutError, OSError, _redis_errors()):
                await asyncio.sleep(DOWN_FOR)

    # -- pace -------------------------------------------------------------------

    async def turn(self, origin: str, interval: float, max_wait: float) -> Turn:
        # The two ledgers, Redis's and this worker's, each start where the other left off: turns
        # this worker granted alone while Redis was away are not granted again by an empty Redis
        # (restarted), and the local pace, should Redis go, continues from the fleet's last turn.
        ahead = self.pace.ahead(origin)
        try:
            args = [int(interval * 1000), int(max_wait * 1000), TURN_MEMORY_MS, int(ahead * 1000)]
            keys = [f"{PREFIX}pace:{origin}", f"{PREFIX}turn:{os.urandom(12).hex()}"]
            granted, wait_ms = await self._call(lambda: self._scripts["turn"](keys=keys, args=args))
            turn = Turn(bool(granted), int(wait_ms) / 1000)
            if turn.granted and interval > 0:
                self.pace.hold(origin, turn.wait + interval)
            return turn
        except _Down:
            # Alone now: pace as if every worker asked this origin at the same interval.
            return self.pace.turn(origin, interval * self.workers, max_wait)

    async def hold(self, origin: str, seconds: float) -> None:
        self.pace.hold(origin, seconds)
        with contextlib.suppress(_Down):
            # Every worker hears of it at once, so none asks the origin before its turn.
            message = orjson.dumps({"origin": origin, "seconds": seconds})
            await self._call(functools.partial(self.redis.publish, f"{PREFIX}hold", message))
            await self._call(
                lambda: self._scripts["hold"](keys=[f"{PREFIX}pace:{origin}"], args=[int(seconds * 1000)])
            )

    # -- slots (politeness.max_concurrency) -------------------------------------

    async def acquire_slot(self, origin: str, limit: int, max_wait: float) -> Lease | None:
        key, channel = f"{PREFIX}slots:{origin}", f"{PREFIX}free:{origin}"
        deadline = time.monotonic() + max_wait
        lease_ms = int(LEASE_TTL * 1000)
        try:
            await self._listen()
            while True:
                token = os.urandom(12).hex()
                future = self._wait_on(channel)  # before trying: a release meanwhile is not missed
                try:
                    # Slots this worker took locally while Redis was down are still in flight.
                    room = limit - self.slots.in_use(origin)
                    if room > 0:
                        script = self._scripts["take"]
                        take = functools.partial(script, keys=[key], args=[token, room, lease_ms])
                        try:
                            taken = await self._call(take)
                        except _Down:
                            # The take may have landed all the same: its free is owed.
                            self._owe(token, self._slot_free(origin, limit, token))
                            raise
                        if taken:
                            self._leases[token] = origin
                            return Lease(origin, token, fleet=True, limit=limit)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    # A slot freed anywhere in the fleet wakes us; a lease that expired (its
                    # worker died) does not, so look again every SLOT_POLL seconds as well.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(future, min(remaining, SLOT_POLL))
                finally:
                    self._unwait(channel, future)
        except _Down:
            # Alone now: this worker's share of the origin's slots, at least one.
            remaining = max(0.0, deadline - time.monotonic())
            return await self.slots.acquire(origin, max(1, limit // self.workers), remaining)

    def release_slot(self, lease: Lease) -> None:
        if not lease.fleet:
            self.slots.release(lease)
            return
        if self._leases.pop(lease.token, None) is None:
            return  # released already
        self._owe(lease.token, self._slot_free(lease.origin, lease.limit, lease.token))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a finalizer at exit): the lease, no longer renewed, expires
        self._spawn(self._pay(lease.token))

    def _slot_free(self, origin: str, limit: int, token: str) -> Callable[[], Awaitable[Any]]:
        """The call that frees a fleet slot (owed until Redis says so)."""
        key, channel = f"{PREFIX}slots:{origin}", f"{PREFIX}free:{origin}"
        return functools.partial(self._scripts["free"], keys=[key], args=[token, channel, limit])

    async def renew_slots(self) -> None:
        await self._pay_all()
        if not self._leases:
            return
        held = list(self._leases.items())
        keys = [f"{PREFIX}slots:{origin}" for _, origin in held]
        args: list[str | int] = [int(LEASE_TTL * 1000), *(token for token, _ in held)]
        # XX: a lease that expired during a Redis outage longer than LEASE_TTL is not put back (a
        # renewal racing its own free would resurrect it); its flow is then not counted until it ends.
        with contextlib.suppress(_Down):
            await self._call(lambda: self._scripts["renew"](keys=keys, args=args))

    async def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        with contextlib.suppress(_Down):
            payload = orjson.dumps({**info, "seen": time.time()})
            await self._call(
                functools.partial(self.redis.set, f"{PREFIX}worker:{worker}", payload, ex=HEARTBEAT_TTL)
            )

    async def close(self) -> None:
        """Stop: nothing new starts; what this worker owes the fleet (releases, frees) is paid
        while Redis answers, within a bound; fetches under our lock still store and release theirs
        (the last one closes the connections)."""
        self.closed = True
        self.lag.stop()
        for task in (self._listener, self._probe):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pay_all(), REDIS_TIMEOUT * 2)
        if not self._holders:
            with contextlib.suppress(Exception):
                await self.redis.aclose()


class _Down(Exception):
    """Redis did not answer in time (or at all)."""


def _redis_errors() -> type[BaseException]:
    import redis.exceptions

    return redis.exceptions.RedisError


def _timed_out(e: BaseException) -> bool:
    import redis.exceptions

    return isinstance(e, TimeoutError | redis.exceptions.TimeoutError)


def make_shared_state(
    spec: str, workers: int = 1, on_change: Callable[[bool], None] | None = None
) -> SharedState:
    """The backend the policy's `shared_state` names."""
    if spec == "memory":
        return SharedState(workers)
    return RedisState(spec, workers, on_change=on_change)


async def fleet_workers(url: str) -> list[dict[str, Any]]:
    """The workers that said they were alive in the last HEARTBEAT_TTL seconds, by id."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(
        url, socket_timeout=REDIS_TIMEOUT * 2, socket_connect_timeout=REDIS_TIMEOUT * 2
    )
    try:
        keys = sorted([k async for k in client.scan_iter(match=f"{PREFIX}worker:*", count=500)])
        values = await client.mget(keys) if keys else []
    finally:
        await client.aclose()
    out = []
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            info = orjson.loads(value)
            info["id"] = key.decode().removeprefix(f"{PREFIX}worker:")
            out.append(info)
    return out
