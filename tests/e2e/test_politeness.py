"""Crawl-delay and back-off, fleet-wide: real proxies, a real redis-server, origin-side timestamps.

A 50-request burst at an origin whose robots.txt says `Crawl-delay: 1` reaches it at most once a
second across two proxies; what would wait longer than politeness.max_wait gets our own 429 with
Retry-After and `X-Optout-Reason: crawl-delay`, and is on the record. An origin's 429 with
Retry-After holds back every proxy of the fleet."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.engines import RedisServer
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess, raw_get
from tests.sites import Reply, Site


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


async def burst(proxies: list[ProxyProcess], url: str, n: int) -> list[httpx.Response]:
    clients = [httpx.AsyncClient(proxy=p.url, trust_env=False, timeout=60) for p in proxies]
    try:
        return await asyncio.gather(*(clients[i % len(clients)].get(url) for i in range(n)))
    finally:
        for c in clients:
            await c.aclose()


def arrivals(site: Site, path: str) -> list[float]:
    return sorted(r["at"] for r in site.requests if r["path"] == path)


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_crawl_delay_holds_across_the_fleet(
    backend: str, redis_server: RedisServer, make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:  # fmt: skip
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nCrawl-delay: 1\nDisallow: /private/\n"),
                      "/page": Reply(200, "ok")})  # fmt: skip
    shared = redis_server.url if backend == "redis" else "memory"
    policy = write_policy(tmp_path, shared_state=shared, politeness={"max_wait": 3})
    proxies = [make_proxy(policy), make_proxy(policy)] if backend == "redis" else [make_proxy(policy)]
    asyncio.run(burst(proxies, site.url("/robots.txt"), 1))  # /robots.txt is always allowed: documents cached
    started = time.monotonic()
    responses = asyncio.run(burst(proxies, site.url("/page"), 50))
    took = time.monotonic() - started
    seen = arrivals(site, "/page")
    records = [json.loads(line) for p in proxies if p.audit for line in p.audit.read_text().splitlines()]
    # When each forwarded request was let go (its allow record, written right after its turn came),
    # by the proxies' clock: once a second, fleet-wide (turns are granted exactly 1 s apart; each
    # is let go when its proxy's event loop next runs it, a few ms later, more under load).
    released = sorted(
        datetime.fromisoformat(r["ts"]).timestamp()
        for r in records
        if r["url"].endswith("/page") and r["decision"] == "allow"
    )
    gaps = [b - a for a, b in itertools.pairwise(released)]
    assert len(released) >= 3 and all(g >= 0.9 for g in gaps), gaps
    # The origin saw them as spaced, give or take the forwarding of each: the first, let go at
    # once, is forwarded while the proxy is still answering the rest of the burst, so on a loaded
    # machine it can arrive up to a few hundred ms late (and its gap to the next shrinks so much).
    arrived = [b - a for a, b in itertools.pairwise(seen)]
    assert all(g >= 0.6 for g in arrived) and seen[-1] - seen[0] >= len(seen) - 1.5, arrived
    forwarded = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(forwarded) == len(seen) and len(forwarded) + len(refused) == 50
    assert len(forwarded) <= 5  # max_wait 3 s at one a second: the rest did not wait for ever
    assert took < 10
    for r in refused:
        assert r.headers["X-Optout-Reason"] == "crawl-delay"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "Crawl-delay: 1" in r.text and "robots.txt line 2" in r.text
    paced = [r for r in records if r.get("signal") == "crawl-delay"]
    assert len(paced) == len(refused) and all(r["status"] == 429 for r in paced)
    assert {r["evidence"][0]["line"] for r in paced} == {2}  # the Crawl-delay line is the evidence
    assert len([r for r in records if r["url"].endswith("/page") and r["decision"] == "allow"]) == len(
        forwarded
    )


@pytest.mark.parametrize("restart", [False, True], ids=["", "after-a-redis-restart"])
def test_an_origins_retry_after_holds_back_every_proxy(
    restart: bool, redis_server: RedisServer, make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:  # fmt: skip
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/page": Reply(200, "ok"),
                      "/busy": Reply(429, "slow down", {"Retry-After": "2"})})  # fmt: skip
    policy = write_policy(tmp_path, shared_state=redis_server.url)
    a, b = make_proxy(policy), make_proxy(policy)
    asyncio.run(burst([a, b], site.url("/page"), 2))  # both have the documents cached
    if restart:
        redis_server.kill()
        redis_server.start()  # b has no waiter and no traffic: nothing of its own would subscribe again
        assert b.wait_for_log("shared state subscription resumed", timeout=20)
    assert asyncio.run(burst([a], site.url("/busy"), 1))[0].status_code == 429  # the origin's own 429
    answered = time.monotonic()
    assert asyncio.run(burst([b], site.url("/page"), 1))[0].status_code == 200  # the other proxy waited
    assert arrivals(site, "/page")[-1] - answered >= 1.8


class InFlight:
    """An origin route that answers after `seconds` and counts how many requests it serves at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.now, self.most = seconds, 0, 0
        self.lock = threading.Lock()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.seconds)
            handler.send_response(200)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_max_concurrency_caps_requests_in_flight_across_the_fleet(
    backend: str, redis_server: RedisServer, make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:  # fmt: skip
    slow = InFlight(0.3)
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/slow": slow})
    shared = redis_server.url if backend == "redis" else "memory"
    policy = write_policy(
        tmp_path,
        shared_state=shared,
        politeness={"max_concurrency": 2, "max_wait": 8, "crawl_delay": "ignore"},
    )
    proxies = [make_proxy(policy), make_proxy(policy)] if backend == "redis" else [make_proxy(policy)]
    asyncio.run(burst(proxies, site.url("/robots.txt"), len(proxies)))  # documents cached everywhere
    responses = asyncio.run(burst(proxies, site.url("/slow"), 16))
    assert [r.status_code for r in responses] == [200] * 16  # 16 × 0.3 s / 2 = 2.4 s: all within max_wait
    assert slow.most == 2  # never more than two at once at the origin, and the two were used


def test_max_concurrency_refuses_past_max_wait_and_is_on_the_record(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    slow = InFlight(2.0)
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/slow": slow})
    policy = write_policy(tmp_path, politeness={"max_concurrency": 1, "max_wait": 0.5})
    proxy = make_proxy(policy)
    asyncio.run(burst([proxy], site.url("/robots.txt"), 1))
    responses = asyncio.run(burst([proxy], site.url("/slow"), 3))
    assert sorted(r.status_code for r in responses) == [200, 429, 429]
    for r in (r for r in responses if r.status_code == 429):
        assert r.headers["X-Optout-Reason"] == "crawl-delay" and r.headers["Retry-After"] == "1"
        assert "politeness.max_concurrency 1" in r.text
    assert slow.most == 1
    assert proxy.audit is not None
    records = [json.loads(line) for line in proxy.audit.read_text().splitlines()]
    refused = [r for r in records if r.get("signal") == "crawl-delay"]
    assert len(refused) == 2 and all(r["status"] == 429 and r["phase"] == "request" for r in refused)


def _reset(handler: BaseHTTPRequestHandler) -> None:
    handler.connection.shutdown(socket.SHUT_RDWR)  # no answer at all: mitmproxy's error hook


def _half_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"x" * 10)
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)


def test_every_way_a_flow_ends_gives_its_slot_back(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """With one slot and no wait, a slot kept by any ended flow would refuse the next request."""
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/page": Reply(200, "ok"),
        "/noai": Reply(200, "<p>x</p>", {"Content-Type": "text/html", "X-Robots-Tag": "noai"}),
        "/meta": Reply(200, '<meta name="robots" content="noai"><p>x</p>', {"Content-Type": "text/html"}),
        "/gone": Reply(404, "no"), "/reset": _reset, "/half": _half_body,
        "/big": Reply(200, b"y" * 300_000, {"Content-Type": "application/octet-stream"}),
    })  # fmt: skip
    # abandoned_hold 0: a request that failed after reaching the origin frees its slot at once too
    policy = write_policy(tmp_path, politeness={"max_concurrency": 1, "max_wait": 0, "abandoned_hold": 0})
    proxy = make_proxy(policy, optout_body_cap=100_000)
    ends = {
        "/page": 200,
        "/noai": 451,
        "/meta": 451,
        "/gone": 404,
        "/reset": 502,
        "/half": None,
        "/big": None,
    }
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(site.url("/robots.txt")).status_code == 200
        for path, status in ends.items():
            for _ in range(2):
                try:
                    got: int | None = client.get(site.url(path)).status_code
                except httpx.HTTPError:
                    got = None  # a body cut short reaches the client as a broken response
                if status is not None:
                    assert got == status, path
                assert client.get(site.url("/page")).status_code == 200, f"slot kept after {path}"


def test_a_request_its_client_gave_up_keeps_its_slot_while_the_origin_may_still_work(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """A crawler with a short timeout that retries must not stack requests at a slow origin."""
    slow = InFlight(1.5)
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/slow": slow})
    policy = write_policy(tmp_path, politeness={"max_concurrency": 1, "max_wait": 5, "abandoned_hold": 2})
    proxy = make_proxy(policy)
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(site.url("/robots.txt")).status_code == 200
        with (
            httpx.Client(proxy=proxy.url, trust_env=False, timeout=0.5) as impatient,
            pytest.raises(httpx.TimeoutException),
        ):
            impatient.get(site.url("/slow"))  # gives up after 0.5 s; the origin works on for 1 s more
        assert client.get(site.url("/slow")).status_code == 200  # the retry, patient this time
    first, retry = arrivals(site, "/slow")
    assert retry - first >= 1.5  # not sent while the origin was still busy with the first
    assert slow.most == 1


def test_a_request_whose_connection_was_dropped_keeps_its_slot_for_the_hold(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """A raw client that closes its socket: mitmproxy drops the flow at once, and its slot must
    not go back with it while the origin may still work (abandoned_hold)."""
    slow = InFlight(2.0)
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/slow": slow})
    other = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/page": Reply(200, "ok")})
    policy = write_policy(tmp_path, politeness={"max_concurrency": 1, "max_wait": 0.3, "abandoned_hold": 3})
    proxy = make_proxy(policy)
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(site.url("/robots.txt")).status_code == 200
        with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
            raw.sendall(f"GET {site.url('/slow')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.5)
        dropped = time.monotonic()
        for _ in range(10):  # other traffic meanwhile: the collector runs, and takes the dead flow's state
            assert client.get(other.url("/page")).status_code == 200
        assert client.get(site.url("/slow")).status_code == 429  # the slot is still the dropped one's
        time.sleep(max(0.0, dropped + 3.3 - time.monotonic()))
        assert client.get(site.url("/slow")).status_code == 200  # the hold is over
    assert slow.most == 1


def test_our_own_429_does_not_hold_the_origin_back(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """Only the origin's Retry-After holds an origin back: ours, on each refusal, would lock out
    every crawler for as long as an eager one keeps asking."""
    site = make_site(
        {"/robots.txt": Reply(200, "User-agent: *\nCrawl-delay: 1\n"), "/page": Reply(200, "ok")}
    )
    proxy = make_proxy(write_policy(tmp_path, politeness={"max_wait": 0}))
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(site.url("/robots.txt")).status_code in (200, 429)
        time.sleep(1.1)
        started = time.monotonic()
        assert client.get(site.url("/page")).status_code == 200  # its turn; the next is 1 s on
        assert client.get(site.url("/page")).status_code == 429  # ours, Retry-After: 1
        time.sleep(max(0.0, started + 0.5 - time.monotonic()))
        assert client.get(site.url("/page")).status_code == 429  # ours again, before the turn
        time.sleep(max(0.0, started + 1.2 - time.monotonic()))
        assert client.get(site.url("/page")).status_code == 200  # the turn came: nothing held it


def test_a_retry_after_we_cannot_read_never_skips_the_judgement(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    secret = b"SECRET-OPTED-OUT"
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"),
        # "²" in UTF-8 (http.server writes headers in Latin-1): a digit to str.isdigit, not to float
        "/busy": Reply(503, secret, {"Retry-After": "²".encode().decode("latin-1"), "X-Robots-Tag": "noai"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path))
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(site.url("/robots.txt")).status_code == 200
        r = client.get(site.url("/busy"))
    assert (r.status_code, r.headers.get("X-Optout-Reason")) == (451, "x-robots-tag")
    assert secret not in r.content


def test_one_server_under_many_address_spellings_is_one_origin(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = make_site(
        {"/robots.txt": Reply(200, "User-agent: *\nCrawl-delay: 5\n"), "/page": Reply(200, "ok")}
    )
    proxy = make_proxy(write_policy(tmp_path, politeness={"max_wait": 0}))
    port = site.url("/").split(":")[2].split("/")[0]
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        assert client.get(f"http://127.0.0.1:{port}/page").status_code == 200
    for spelling in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]"):
        answer = raw_get(proxy, f"http://{spelling}:{port}/page")  # as written: clients refuse some
        assert answer.startswith(b"HTTP/1.1 429") and b"crawl-delay" in answer, (spelling, answer[:200])
    assert len(arrivals(site, "/page")) == 1
    assert len(arrivals(site, "/robots.txt")) == 1  # one origin: its robots.txt fetched once


def test_workers_that_share_nothing_divide_the_pace_between_them(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """One of two workers on `shared_state: memory` (what `run --workers 2` starts): together they
    keep Crawl-delay 1 only if each keeps 2 s."""
    site = make_site(
        {"/robots.txt": Reply(200, "User-agent: *\nCrawl-delay: 1\n"), "/page": Reply(200, "ok")}
    )
    proxy = make_proxy(write_policy(tmp_path, politeness={"max_wait": 0}), optout_fleet_size=2)
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=20) as client:
        client.get(site.url("/robots.txt"))
        time.sleep(2.1)
        started = time.monotonic()
        assert client.get(site.url("/page")).status_code == 200
        time.sleep(max(0.0, started + 1.3 - time.monotonic()))
        assert client.get(site.url("/page")).status_code == 429  # 1.3 s on: this worker's turn is 2 s
        time.sleep(max(0.0, started + 2.1 - time.monotonic()))
        assert client.get(site.url("/page")).status_code == 200
