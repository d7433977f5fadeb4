"""A fleet on the engines users run: three real proxies behind the shipped HAProxy config (balance
on Host, consistent hashing). 1,000 concurrent requests over 50 new origins: each origin's
robots.txt is fetched once fleet-wide, counted at the origins."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

from tests.bursts import burst
from tests.engines import HAProxy
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private/\n"


def test_haproxy_in_front_of_three_proxies_fetches_each_origin_once(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    sites = [make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok"),
                        "/private/x": Reply(200, "s")}) for _ in range(50)]  # fmt: skip
    policy = write_policy(tmp_path)
    workers = [make_proxy(policy) for _ in range(3)]
    front = HAProxy([w.url.removeprefix("http://") for w in workers])
    try:
        targets = [s.url(p) for s in sites for p in ("/page", "/private/x")] * 10
        random.Random(5).shuffle(targets)
        statuses = [r.status_code for r in asyncio.run(burst(front.url, targets, connections=200))]
    finally:
        front.stop()
    assert statuses == [451 if "/private/" in t else 200 for t in targets]
    assert [s.hits["/robots.txt"] for s in sites] == [1] * len(sites)  # once per origin, fleet-wide
    served = [sum(1 for line in w.audit.read_text().splitlines()) for w in workers if w.audit]
    assert sum(served) == len(targets) and all(served), served  # all three took a share, all recorded
