"""AIPREF Content-Usage: in robots.txt groups and as a response header.

Implements draft-ietf-aipref-vocab-07 and draft-ietf-aipref-attach-05 (see
shared/reference/signals.md §7). The value is an RFC 9651 Structured Fields
dictionary; `train-ai=n` reserves AI training, `search=n` search. In robots.txt
a Content-Usage line is a rule of its group, optionally scoped by a path: the
longest matching path wins, and equal paths combine to the most restrictive.

Read relative to the policy's purpose: `ai-train` reads `train-ai`, `search`
reads `search`; `ai-input` has no AIPREF label, so nothing here binds it.

Deliberate strictness (`lenient_readings: block`, the default; signals.md §13.8):
labels of earlier drafts that meant training (`ai`, `genai`, `tdm`,
`train-genai`, `all`, `bots`) with `n`, near-miss values (`no`, `"n"`) and
values that only fail to parse for case or spacing are read as a reservation
and marked "legacy" or "lenient" in the evidence. With `lenient_readings:
ignore` they are unknown, as vocab-07 says.
"""

from __future__ import annotations

from collections.abc import Sequence

import http_sf

from proxy.evidence import Document, Finding, Says
from proxy.signals.robots import Record, RobotsTxt, ScopedValues

NAME = "content-usage"
KEY = "content-usage"
LABEL_FOR_PURPOSE = {"ai-train": "train-ai", "search": "search"}
LEGACY_TRAINING_LABELS = ("ai", "genai", "tdm", "train-genai", "all", "bots")
_NO = ("n", "no")
_RESTRICTIVENESS = {Says.DISALLOW: 2, Says.ALLOW: 1, Says.UNKNOWN: 0}


def _strict(value: str) -> dict[str, object] | None:
    try:
        parsed = http_sf.parse(value.encode("utf-8", "replace"), tltype="dictionary")
    except Exception:  # http_sf raises its own error (and others on odd bytes)
        return None
    return dict(parsed) if isinstance(parsed, dict) else None


def _lenient(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip().lower()] = val.split(";")[0].strip().strip('"').lower()
    return out


def evaluate(value: str, purpose: str, *, legacy: bool) -> tuple[Says, str]:
    """What a Content-Usage value says for `purpose`, with a short explanation."""
    label = LABEL_FOR_PURPOSE.get(purpose)
    if label is None:
        return Says.UNKNOWN, f"no AIPREF label for purpose {purpose}"
    parsed = _strict(value)
    if parsed is None:
        if legacy and purpose == "ai-train":
            loose = _lenient(value)
            for key in (label, *LEGACY_TRAINING_LABELS):
                if loose.get(key) in _NO:
                    return Says.DISALLOW, f"{key}={loose[key]} (lenient reading of an unparseable value)"
        return Says.UNKNOWN, "not a Structured Fields dictionary: every category unknown"
    item = parsed.get(label)
    if item is not None:
        bare = item[0] if isinstance(item, tuple) else item
        if isinstance(bare, http_sf.Token) and str(bare) in ("y", "n"):
            return (Says.DISALLOW if str(bare) == "n" else Says.ALLOW), f"{label}={bare}"
        if legacy and str(bare).lower() in _NO:
            return Says.DISALLOW, f"{label}={bare!s} (near-miss value read as n)"
    if legacy and purpose == "ai-train":
        for key in LEGACY_TRAINING_LABELS:
            old = parsed.get(key)
            bare = old[0] if isinstance(old, tuple) else old
            if bare is not None and str(bare).lower() in _NO:
                return Says.DISALLOW, f"{key}={bare!s} (legacy label)"
    if item is not None:
        return Says.UNKNOWN, f"{label} has no y/n token"
    return Says.UNKNOWN, f"no {label} preference"


def _split(value: str) -> tuple[str, str]:
    """(path, preference) of a robots.txt Content-Usage value (attach-05 §3)."""
    if value.startswith("/"):
        path, _, pref = value.partition(" ")
        if not pref:
            path, _, pref = value.partition("\t")
        return path, pref.strip()
    return "", value.strip()


def findings_for(
    path: str,
    robots: RobotsTxt,
    agent: str,
    purpose: str,
    document: Document | None,
    *,
    legacy: bool,
    inherit_star: bool,
) -> list[Finding]:
    """The Content-Usage finding for `path` from the groups that apply to `agent`."""
    records = robots.records_for(agent, KEY, inherit_star=inherit_star)
    if not records:
        return []
    who = {id(r): w for r, w in records}
    scoped = ScopedValues((_split(r.value)[0], r) for r, _ in records)
    best = scoped.best(path)
    if not best:
        return []
    judged: list[tuple[Says, str, Record]] = []
    for record in best:
        says, why = evaluate(_split(record.value)[1], purpose, legacy=legacy)
        judged.append((says, why, record))
    # attach-05 §3: equal paths with conflicting preferences: most restrictive wins.
    says, why, record = max(judged, key=lambda j: _RESTRICTIVENESS[j[0]])
    detail = f"Content-Usage: {record.value} ({why})"
    return [Finding(NAME, says, detail, document, line=record.line, agent=who[id(record)])]


def findings_from_headers(
    values: Sequence[str], purpose: str, document: Document | None, *, legacy: bool
) -> list[Finding]:
    """The finding of the Content-Usage response header lines, combined as HTTP does."""
    if not values:
        return []
    joined = ", ".join(v.strip() for v in values)
    says, why = evaluate(joined, purpose, legacy=legacy)
    return [Finding(NAME, says, f"Content-Usage: {joined[:200]} ({why})", document)]
