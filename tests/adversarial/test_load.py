"""Issue 8, no false blocks under load: a burst of new origins queues for our fetch slots, never 451s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.adversarial.rawnet import CountingOrigin
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess


def slow_robots(delay: float) -> Callable[[str, bytes], bytes]:
    def answer(path: str, head: bytes) -> bytes:
        if path == "/robots.txt":
            time.sleep(delay)
            body = b"User-agent: *\nDisallow: /private\n"
        else:
            body = b"page"
        return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    return answer


def test_a_burst_of_new_origins_queues_and_is_never_falsely_blocked(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    origins = [CountingOrigin(respond=slow_robots(0.4)) for _ in range(30)]
    try:
        # Four origins at a time, each taking 0.4 s: the last waits ~3 s in the queue, three
        # times its own 1 s fetch deadline, which only starts when its turn comes.
        proxy = make_proxy(write_policy(tmp_path), optout_fetch_concurrency=4, optout_fetch_timeout=1)

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(proxy=proxy.url, trust_env=False, timeout=60, limits=limits) as c:
                urls = [f"http://127.0.0.1:{o.port}/page/{i}" for o in origins for i in range(5)]
                return await asyncio.gather(*(c.get(u) for u in urls))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 150
        assert all(o.paths().count("/robots.txt") == 1 for o in origins)
    finally:
        for o in origins:
            o.close()
