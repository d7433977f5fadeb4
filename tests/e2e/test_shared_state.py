"""Shared state on a real redis-server: two real proxies fetch each new origin's robots.txt once
between them; with Redis killed mid-load they keep deciding on their own fetches (nothing forwarded
undecided, no record lost, every chain intact) and go back to Redis when it returns."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from proxy.audit import verify_chain
from proxy.policy import load_policy
from tests.engines import RedisServer
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private/\n"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def origins(make_site: Callable[..., Site], n: int) -> list[Site]:
    return [make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok"), "/private/x": Reply(200, "s")})
            for _ in range(n)]  # fmt: skip


async def spray(proxies: list[ProxyProcess], targets: list[str]) -> list[tuple[str, int]]:
    """Each target through a proxy chosen at random, all at once: (url, status)."""
    clients = [httpx.AsyncClient(proxy=p.url, trust_env=False, timeout=60) for p in proxies]
    rng = random.Random(7)

    async def one(url: str) -> tuple[str, int]:
        return url, (await rng.choice(clients).get(url)).status_code

    try:
        return await asyncio.gather(*(one(u) for u in targets))
    finally:
        for c in clients:
            await c.aclose()


def expected(url: str) -> int:
    return 451 if "/private/" in url else 200


def test_two_proxies_fetch_each_robots_txt_once_between_them(
    redis_server: RedisServer, make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    sites = origins(make_site, 20)
    policy = write_policy(tmp_path, shared_state=redis_server.url)
    proxies = [make_proxy(policy), make_proxy(policy)]
    targets = [s.url(p) for s in sites for p in ("/page", "/private/x")] * 10
    random.Random(3).shuffle(targets)
    results = asyncio.run(spray(proxies, targets))
    assert all(status == expected(url) for url, status in results)
    assert [s.hits["/robots.txt"] for s in sites] == [1] * len(sites)  # once per origin, fleet-wide
    assert [s.hits["/ai.txt"] for s in sites] == [1] * len(sites)  # the other documents too
    assert int(redis_server.cli("DBSIZE")) >= len(sites)  # the documents are in Redis

    # `fleet status` lists both workers, with the policy each enforces and what it has done
    deadline = time.monotonic() + 15
    while True:
        done = subprocess.run([sys.executable, "-m", "proxy", "fleet", "status", "--redis", redis_server.url,
                               "--json"], capture_output=True, text=True, timeout=30)  # fmt: skip
        workers = json.loads(done.stdout)
        if sum(w["requests"] for w in workers) >= len(targets) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(workers) == 2 and {w["pid"] for w in workers} == {p.proc.pid for p in proxies}
    assert {w["policy_sha256"] for w in workers} == {load_policy(policy).digest}
    assert sum(w["requests"] for w in workers) == len(targets)
    table = subprocess.run([sys.executable, "-m", "proxy", "fleet", "status", "--policy", str(policy)],
                           capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    assert table.startswith(f"2 worker(s) seen in the last 30 s at {redis_server.url}; 1 policy version(s)")


def test_redis_down_mid_load_decides_alone_and_recovers(
    redis_server: RedisServer, make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    sites = origins(make_site, 10)
    policy = write_policy(tmp_path, shared_state=redis_server.url)
    proxies = [make_proxy(policy), make_proxy(policy)]
    first = [s.url("/page") for s in sites[:5]] * 4
    asyncio.run(spray(proxies, first))
    redis_server.kill()
    targets = [s.url(p) for s in sites for p in ("/page", "/private/x")] * 5
    results = asyncio.run(spray(proxies, targets))
    assert all(status == expected(url) for url, status in results)  # nothing forwarded undecided
    assert all(s.hits["/robots.txt"] <= 2 for s in sites)  # at most once per proxy, on their own
    assert any(p.wait_for_log(f"shared state {redis_server.url} unavailable") for p in proxies)
    redis_server.start()
    assert all(p.wait_for_log(f"shared state {redis_server.url} is back", timeout=20) for p in proxies)
    fresh = origins(make_site, 5)  # new origins: through Redis again, once between the two
    more = [s.url("/page") for s in sites + fresh] * 2
    assert all(status == 200 for _, status in asyncio.run(spray(proxies, more)))
    assert [s.hits["/robots.txt"] for s in fresh] == [1] * len(fresh)
    for p in proxies:
        p.stop()
        assert p.audit is not None
        report = verify_chain(p.audit)
        assert report.ok, report.problem
    records = sum(report.records for report in (verify_chain(p.audit) for p in proxies if p.audit))
    assert records == len(first) + len(targets) + len(more)  # every decision on the record, once
