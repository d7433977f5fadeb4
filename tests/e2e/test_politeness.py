"""Crawl-delay and back-off, fleet-wide: real proxies, a real redis-server, origin-side timestamps.

A 50-request burst at an origin whose robots.txt says `Crawl-delay: 1` reaches it at most once a
second across two proxies; what would wait longer than politeness.max_wait gets our own 429 with
Retry-After and `X-Optout-Reason: crawl-delay`, and is on the record. An origin's 429 with
Retry-After holds back every proxy of the fleet."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.engines import RedisServer
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess
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
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(seen) >= 3 and all(g >= 0.9 for g in gaps), gaps  # once a second, fleet-wide
    forwarded = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(forwarded) == len(seen) and len(forwarded) + len(refused) == 50
    assert len(forwarded) <= 5  # max_wait 3 s at one a second: the rest did not wait for ever
    assert took < 10
    for r in refused:
        assert r.headers["X-Optout-Reason"] == "crawl-delay"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "Crawl-delay: 1" in r.text and "robots.txt line 2" in r.text
    records = [json.loads(line) for p in proxies if p.audit for line in p.audit.read_text().splitlines()]
    paced = [r for r in records if r.get("signal") == "crawl-delay"]
    assert len(paced) == len(refused) and all(r["status"] == 429 for r in paced)
    assert {r["evidence"][0]["line"] for r in paced} == {2}  # the Crawl-delay line is the evidence
    assert len([r for r in records if r["url"].endswith("/page") and r["decision"] == "allow"]) == len(
        forwarded
    )


def test_an_origins_retry_after_holds_back_every_proxy(
    redis_server: RedisServer, make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), "/page": Reply(200, "ok"),
                      "/busy": Reply(429, "slow down", {"Retry-After": "2"})})  # fmt: skip
    policy = write_policy(tmp_path, shared_state=redis_server.url)
    a, b = make_proxy(policy), make_proxy(policy)
    asyncio.run(burst([a, b], site.url("/page"), 2))  # both have the documents cached
    assert asyncio.run(burst([a], site.url("/busy"), 1))[0].status_code == 429  # the origin's own 429
    answered = time.monotonic()
    assert asyncio.run(burst([b], site.url("/page"), 1))[0].status_code == 200  # the other proxy waited
    assert arrivals(site, "/page")[-1] - answered >= 1.8
