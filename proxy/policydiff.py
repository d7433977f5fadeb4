"""`policy diff OLD NEW --urls FILE`: which URLs' decisions a policy change would change.

Each origin's policy documents are fetched once and judged under both
policies, so the difference is the policies', not the network's. Decisions
are the pre-fetch ones (registry and the origin's policy documents); signals
that need the response are out of scope here (`check` shows those).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.assess import assess
from proxy.documents import OriginDocuments, load_origin
from proxy.evidence import Decision
from proxy.fetch import answer_deadline, make_client
from proxy.origin import Origin, path_and_query
from proxy.policy import Policy


@dataclass(frozen=True, slots=True)
class Change:
    url: str
    before: Decision
    after: Decision

    def describe(self) -> str:
        def one(d: Decision) -> str:
            return f"{d.verdict.value}" + (f" ({d.signal})" if d.signal else "")

        return f"{self.url}: {one(self.before)} -> {one(self.after)}"


async def diff(old: Policy, new: Policy, urls: Sequence[str], *, timeout: float = 5.0,
               concurrency: int = 16) -> tuple[list[Change], list[str]]:  # fmt: skip
    """(changed decisions, URLs that could not be judged) for `urls` under `old` and `new`."""
    client = make_client(timeout=timeout, agent=new.agent)
    pending: dict[Origin, asyncio.Task[OriginDocuments]] = {}
    limit = asyncio.Semaphore(concurrency)

    async def documents(origin: Origin) -> OriginDocuments:
        if origin not in pending:

            async def fetch() -> OriginDocuments:
                async with limit:
                    docs, _ = await load_origin(
                        client, origin, None, total_timeout=answer_deadline(timeout), unreachable_retry=0
                    )
                    return docs

            pending[origin] = asyncio.create_task(fetch())
        return await pending[origin]

    async def judge(url: str) -> Change | str | None:
        try:
            origin = Origin.from_url(url)
        except ValueError:
            return url
        path = path_and_query(url)
        before = await assess(old, origin, path, [origin.host], documents)
        after = await assess(new, origin, path, [origin.host], documents)
        if (before.verdict, before.signal, before.enforced) != (after.verdict, after.signal, after.enforced):
            return Change(url, before, after)
        return None

    async with client:
        results = await asyncio.gather(*(judge(u) for u in urls))
    changes = [r for r in results if isinstance(r, Change)]
    bad = [r for r in results if isinstance(r, str)]
    return changes, bad
