"""The policy documents of one origin, fetched once and cached together.

For now that is robots.txt (RFC 9309); later signals add their documents
here and fetch them concurrently with it. An `OriginDocuments` is the cache
value: immutable, replaced whole on refresh.

Caching (RFC 9309 §2.4): a good answer is kept for min(Cache-Control, 24 h);
an unreachable one is retried after `unreachable_retry` seconds. When a
refresh finds the origin unreachable but a good copy younger than
`STALE_LIMIT` is at hand, the good copy stays in force (signals.md §2.2, S8)
and the failed refresh is recorded beside it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from proxy.evidence import Document, Finding, Says
from proxy.fetch import Fetched, fetch_document
from proxy.origin import Origin
from proxy.signals import robots

# RFC 9309 §2.3.1.4: after "a reasonably long period (e.g. 30 days)" of
# unreachability a crawler MAY stop using its cached copy; we then fall back to
# complete disallow, never to allow-all.
STALE_LIMIT = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class OriginDocuments:
    """What one origin's policy documents said when last fetched."""

    origin: Origin
    robots_outcome: str  # ok | unavailable | unreachable
    robots_document: Document
    robots: robots.RobotsTxt | None  # parsed, when ok
    stale_because: Document | None = None  # a failed refresh while an older good copy stays in force

    def robots_findings(self, path: str, agent: str, honor_agents: Iterable[str]) -> list[Finding]:
        """robots.txt findings for `path` on this origin."""
        doc = self.robots_document
        if self.robots_outcome == "ok" and self.robots is not None:
            return robots.findings_for(path, self.robots, agent, honor_agents, doc)
        if path == robots.PATH:
            # RFC 9309 §2.3: /robots.txt itself is always allowed, reachable or not.
            return [Finding(robots.NAME, Says.ALLOW, "/robots.txt is always allowed", doc)]
        if self.robots_outcome == "unavailable":
            return [Finding(robots.NAME, Says.UNAVAILABLE, f"HTTP {doc.status}: no restrictions", doc)]
        return [Finding(robots.NAME, Says.UNREACHABLE, doc.error or "unreachable", doc)]


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def load_origin(
    client: httpx.AsyncClient,
    origin: Origin,
    previous: OriginDocuments | None,
    *,
    total_timeout: float,
    unreachable_retry: float,
) -> tuple[OriginDocuments, float]:
    """Fetch `origin`'s documents; returns the new cache value and its TTL in seconds."""
    fetched: Fetched = await fetch_document(
        client, origin.url(robots.PATH), max_bytes=robots.MAX_BYTES, total_timeout=total_timeout
    )
    if fetched.outcome == "ok":
        parsed = robots.parse(fetched.body or b"")
        return OriginDocuments(origin, "ok", fetched.document, parsed), fetched.ttl
    if fetched.outcome == "unavailable":
        return OriginDocuments(origin, "unavailable", fetched.document, None), fetched.ttl
    # Unreachable: keep a good copy in force if we have a recent one.
    if previous is not None and previous.robots_outcome != "unreachable":
        age = _parse_time(fetched.document.fetched_at) - _parse_time(previous.robots_document.fetched_at)
        if age < STALE_LIMIT:
            kept = OriginDocuments(
                origin,
                previous.robots_outcome,
                previous.robots_document,
                previous.robots,
                stale_because=fetched.document,
            )
            return kept, unreachable_retry
    return OriginDocuments(origin, "unreachable", fetched.document, None), unreachable_retry
