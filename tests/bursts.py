"""Many requests through a proxy at once, from one httpx client, without the client being the bottleneck."""

from __future__ import annotations

import asyncio

import httpx


async def burst(
    proxy_url: str, targets: list[str], connections: int, *, timeout: float = 120
) -> list[httpx.Response]:
    """Every target through the proxy, `connections` requests in flight at a time over as many
    kept-alive connections; the responses in the order of `targets`.

    At most `connections` requests are handed to httpx at once: httpcore matches every queued
    request against every connection on each event, so a thousand queued requests cost the test
    process about a minute of CPU, and a test would measure its own client instead of the proxy.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    gate = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(proxy=proxy_url, trust_env=False, timeout=timeout, limits=limits) as c:

        async def one(target: str) -> httpx.Response:
            async with gate:
                return await c.get(target)

        return await asyncio.gather(*(one(t) for t in targets))
