"""How often one origin may be asked: Crawl-delay, a minimum interval, and back-off.

The interval for an origin is the larger of the policy's
`politeness.min_interval` and the `Crawl-delay` of the robots.txt group that
binds our agent (its own group, else `*`; capped at `max_crawl_delay`). An
origin that answered 429 or 503 with `Retry-After` is held back for that
long (`politeness.backoff`). The pace itself is a GCRA kept by the shared
state (proxy.shared): fleet-wide with Redis, in this process otherwise.

A request whose turn is more than `max_wait` away is not forwarded: it gets
429 with `Retry-After` and `X-Optout-Reason: crawl-delay`, and is audited as
refused before the fetch. This module decides nothing about opt-outs: a
request it delays or refuses was allowed by every signal first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.documents import OriginDocuments
from proxy.evidence import Decision, Finding, Says, Verdict
from proxy.fields import retry_after as retry_after_seconds
from proxy.policy import Policy

CODE = "crawl-delay"
STATUS = 429
MAX_HOLD = 3600.0  # an origin's Retry-After is honoured up to an hour


@dataclass(frozen=True, slots=True)
class Interval:
    """Seconds between two requests to one origin, and what set them (for the evidence)."""

    seconds: float
    finding: Finding | None  # the Crawl-delay line, when it set the interval


def interval_for(policy: Policy, docs: OriginDocuments | None) -> Interval:
    """The origin's interval under `policy` (0: no pace of its own)."""
    rules = policy.politeness
    seconds, finding = rules.min_interval, None
    if rules.crawl_delay == "honor" and docs is not None and docs.robots is not None:
        for record, group in docs.robots.records_for(policy.agent, "crawl-delay", inherit_star=False):
            try:
                value = float(record.value)
            except ValueError:
                continue
            if not math.isfinite(value) or value <= 0:
                continue
            value = min(value, rules.max_crawl_delay)
            if value > seconds:
                seconds = value
                finding = Finding(
                    CODE,
                    Says.DISALLOW,
                    f"Crawl-delay: {record.value}",
                    docs.robots_document,
                    record.line,
                    group,
                )
    return Interval(seconds, finding)


def slow_down(policy: Policy, origin: str, wait: float, interval: Interval) -> Decision:
    """The refusal of a request whose turn at `origin` is `wait` seconds away (over max_wait)."""
    why = (
        f"{interval.finding.detail} (robots.txt line {interval.finding.line})"
        if interval.finding is not None
        else f"politeness.min_interval {policy.politeness.min_interval:g} s"
        if interval.seconds > 0
        else "the origin asked us to wait (Retry-After)"
    )
    sentence = (
        f"{origin} may be asked again in {wait:.1f} s ({why}); that is more than politeness.max_wait "
        f"({policy.politeness.max_wait:g} s), so this request was not forwarded. "
        f"Retry after {retry_after(wait)} s."
    )
    crawl = interval.finding
    finding = (
        Finding(CODE, Says.DISALLOW, crawl.detail, crawl.document, crawl.line, crawl.agent)
        if crawl is not None
        else Finding(CODE, Says.DISALLOW, sentence)
    )
    return Decision(
        Verdict.BLOCK, enforced=True, signal=CODE, reason=sentence, deciding=finding, findings=(finding,),
        policy_sha256=policy.digest,
    )  # fmt: skip


def too_many(policy: Policy, origin: str, limit: int) -> Decision:
    """The refusal of a request that found all `limit` slots of `origin` taken for max_wait."""
    sentence = (
        f"{limit} request{'s were' if limit != 1 else ' was'} already in flight to {origin} "
        f"(politeness.max_concurrency {limit}) and none finished within politeness.max_wait "
        f"({policy.politeness.max_wait:g} s), so this request was not forwarded. Retry after 1 s."
    )
    finding = Finding(CODE, Says.DISALLOW, sentence)
    return Decision(
        Verdict.BLOCK, enforced=True, signal=CODE, reason=sentence, deciding=finding, findings=(finding,),
        policy_sha256=policy.digest,
    )  # fmt: skip


def retry_after(wait: float) -> int:
    """Whole seconds for a Retry-After header (at least 1)."""
    return max(1, math.ceil(wait))


def hold_for(status: int, value: str | None, now: float | None = None) -> float | None:
    """Seconds an origin asked us to stay away (429/503 with Retry-After), capped; None otherwise."""
    if status not in (429, 503):
        return None
    seconds = retry_after_seconds(value, now)
    return None if seconds is None else min(seconds, MAX_HOLD)
