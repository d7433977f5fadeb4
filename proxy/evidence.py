"""Value types that carry a decision and the evidence behind it.

A `Finding` is one statement read from one source (a robots.txt rule, a
registry entry, an unreachable origin). `decide()` turns findings into a
`Decision`; the audit log stores both as they are.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import time
from dataclasses import dataclass, field
from typing import Any


def utc_now() -> str:
    """Current UTC time, RFC 3339 with milliseconds: how every timestamp in the evidence is written."""
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    # Formatted once per second: an aware datetime per record costs more than the record's hash.
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"


class Says(enum.StrEnum):
    """What a finding says about the URL, in the vocabulary of signals.md §1."""

    DISALLOW = "disallow"  # a reservation: do not fetch / do not train
    ALLOW = "allow"  # an explicit grant (never overrides another source's reservation)
    UNAVAILABLE = "unavailable"  # document absent (4xx): no restrictions from this source
    UNREACHABLE = "unreachable"  # 5xx, 429, timeout, connection error
    UNKNOWN = "unknown"  # present, but states nothing for our purpose (kept as evidence)


@dataclass(frozen=True, slots=True)
class Document:
    """Where a finding came from: one fetched policy document, as fetched."""

    url: str
    status: int | None  # HTTP status of the final response; None when no response came
    sha256: str | None  # of the bytes we parsed (after the size cap); None without a body
    fetched_at: str  # UTC RFC 3339
    final_url: str | None = None  # after redirects, when different from url
    error: str | None = None  # why it is unreachable, when it is
    truncated: bool = False  # the body exceeded the size cap and was cut

    def to_json(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies and is 5x slower on the hot path.
        out: dict[str, Any] = {"url": self.url, "status": self.status}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        out["fetched_at"] = self.fetched_at
        if self.final_url is not None:
            out["final_url"] = self.final_url
        if self.error is not None:
            out["error"] = self.error
        if self.truncated:
            out["truncated"] = True
        return out


@dataclass(frozen=True, slots=True)
class Finding:
    """One statement about a URL from one signal source, with where it was read."""

    signal: str  # "robots-txt", "registry", ...
    says: Says
    detail: str  # the matched rule or entry, trimmed, as a person would quote it
    document: Document | None = None  # the fetched document, for file-based signals
    line: int | None = None  # 1-based line of the rule in the document
    agent: str | None = None  # the product token whose group the rule belongs to
    entry: dict[str, Any] | None = None  # the registry entry, for registry findings

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"signal": self.signal, "says": str(self.says), "detail": self.detail}
        if self.document is not None:
            out["document"] = self.document.to_json()
        if self.line is not None:
            out["line"] = self.line
        if self.agent is not None:
            out["agent"] = self.agent
        if self.entry is not None:
            out["entry"] = self.entry
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one request, the finding that decided it and all the others."""

    verdict: Verdict
    enforced: bool  # False when the deciding signal (or the whole policy) is in monitor mode
    signal: str | None  # the X-Optout-Reason code of the deciding finding; None for a plain allow
    reason: str  # one human sentence
    deciding: Finding | None
    findings: tuple[Finding, ...] = field(default=())
    policy_sha256: str = ""
    # The audit record's `evidence` (serialised) and `deciding`, made once per decision
    # (proxy.audit.evidence_of): a decision is often shared by many requests (proxy.assess).
    _evidence: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def blocks(self) -> bool:
        """True when the crawler must not receive the content."""
        return self.verdict is Verdict.BLOCK and self.enforced
