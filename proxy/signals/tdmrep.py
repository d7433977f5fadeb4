"""TDMRep: /.well-known/tdmrep.json, the tdm-reservation header, HTML <meta>, PDF/EPUB metadata.

Implements the W3C TDM Reservation Protocol, Final Community Group Report
(signals.md §4). `tdm-reservation: 1` reserves text and data mining rights
(EU CDSM Art. 4(3)); `0` does not; any other value is a protocol error and
counts as unset. The file's entries are matched in array order, the first
match wins; `location` uses robots.txt patterns.

Channels and precedence (§4.5): file < header < HTML meta < PDF/EPUB metadata;
an absent value never resets. Two readings, chosen by the policy key
`tdmrep_precedence` (signals.md §13.9):

* `reservation-wins` (default): any channel that says 1 blocks; a file's 1
  blocks before the fetch, so a reserved page is never requested. A later 0
  does not lift an earlier 1. This protects the rights holder.
* `spec`: the report's precedence: the file's 1 is carried to the response,
  where a header or meta 0 lifts it; the last channel present decides.

Deliberate leniency: a JSON string "1"/"0" for tdm-reservation is read as the
number (signals.md D13), which can only add reservations. Near-misses whose
intent is clear (one object instead of an array, an entry with no location,
a boolean) are read and marked lenient, unless `lenient_readings: ignore`.
Anything else that is not a JSON array of objects means the protocol is not
in use. TDM reservations
bind the purposes `ai-train` and `ai-input`, not `search`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.evidence import Document, Finding, Says
from proxy.signals.robots import PathPattern

NAME = "tdmrep"
PATH = "/.well-known/tdmrep.json"
MAX_BYTES = 1024 * 1024
CHANNELS = ("file", "header", "meta", "metadata")  # in order of precedence
BINDS = ("ai-train", "ai-input")


@dataclass(frozen=True, slots=True)
class TdmRule:
    location: PathPattern
    reservation: int  # 1 or 0
    policy: str | None
    index: int  # 1-based position in the array
    lenient: str | None = None  # why the entry is read although it misses the protocol's form


@dataclass(frozen=True, slots=True)
class TdmRules:
    rules: tuple[TdmRule, ...]
    skipped: int  # malformed entries


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel's statement: where it was read and what it said."""

    channel: str  # file | header | meta | metadata
    reservation: int | None  # None: protocol error (value neither 0 nor 1)
    policy: str | None
    detail: str
    document: Document | None
    line: int | None = None


def _reservation(value: object) -> tuple[int | None, str | None]:
    """(0, 1 or None, why it was read leniently)."""
    if isinstance(value, bool):
        return int(value), f"tdm-reservation {str(value).lower()} (a JSON boolean)"
    if isinstance(value, int | float) and value in (0, 1):
        # JSON has one number type: 1, 1.0 and 1e0 are the same value to every JSON reader.
        return int(value), None
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip()), None
    return None, None


def parse(body: bytes) -> TdmRules | None:
    """The rules of a tdmrep.json, or None when it is not the protocol.

    The protocol is a JSON array of objects, each with a `location`. Near-misses
    whose intent is clear are read and marked lenient (policy key
    `lenient_readings`): one object instead of an array, an entry with no
    `location` (it covers the whole site), a boolean `tdm-reservation`.
    """
    try:
        data = json.loads(body.decode("utf-8-sig", errors="replace"))
    except (ValueError, RecursionError):
        return None
    file_lenient = None
    if isinstance(data, dict) and "tdm-reservation" in data:
        data, file_lenient = [data], "the file is one object, not an array"
    if not isinstance(data, list):
        return None
    rules: list[TdmRule] = []
    skipped = 0
    for index, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            skipped += 1
            continue
        reasons = [file_lenient] if file_lenient else []
        location = item.get("location")
        if location is None and "tdm-reservation" in item:
            location = "/"
            reasons.append("no location: read as the whole site")
        if not isinstance(location, str):
            skipped += 1
            continue
        reservation, why = _reservation(item.get("tdm-reservation"))
        if reservation is None:
            skipped += 1
            continue
        if why:
            reasons.append(why)
        policy = item.get("tdm-policy")
        kept = policy if isinstance(policy, str) else None
        rules.append(TdmRule(PathPattern(location), reservation, kept, index, "; ".join(reasons) or None))
    return TdmRules(tuple(rules), skipped)


def file_channel(
    path: str, rules: TdmRules, document: Document | None, *, lenient: bool = True
) -> Channel | None:
    """The file's statement for `path`: the first matching entry, or None.

    `lenient`: whether entries read from a near-miss of the protocol count; when
    they do not, the file is matched as if they were not there.
    """
    for rule in rules.rules:
        if rule.lenient and not lenient:
            continue
        if rule.location.matches(path):
            detail = (
                f'entry {rule.index}: location "{rule.location.value}", tdm-reservation {rule.reservation}'
            )
            if rule.lenient:
                detail += f" (lenient: {rule.lenient})"
            return Channel("file", rule.reservation, rule.policy, detail, document)
    return None


def value_channel(
    channel: str, values: Sequence[str], policies: Sequence[str], document: Document | None, label: str
) -> Channel | None:
    """A header, meta or metadata statement from its raw values.

    The report expects one value per channel. Of several, a `1` anywhere counts
    (else the last): a page cannot lift its own reservation with a decoy `0` in a
    script string or a second header, whichever a reader happens to see last.
    """
    if not values:
        return None
    stripped = [v.strip() for v in values]
    at = stripped.index("1") if "1" in stripped else len(stripped) - 1
    raw = stripped[at]
    reservation = int(raw) if raw in ("0", "1") else None
    detail = f"{label}: {raw[:100]}" + ("" if reservation is not None else " (protocol error: unset)")
    if len(stripped) > 1:
        detail += f" (one of {len(stripped)} values: {', '.join(v[:20] for v in stripped[:8])})"
    policy = policies[min(at, len(policies) - 1)].strip() if policies else None
    return Channel(channel, reservation, policy, detail, document)


def _finding(ch: Channel, purpose: str, says: Says | None = None) -> Finding:
    if says is None:
        says = Says.UNKNOWN
        if ch.reservation == 1:
            says = Says.DISALLOW if purpose in BINDS else Says.UNKNOWN
        elif ch.reservation == 0:
            says = Says.ALLOW
    detail = f"{ch.channel}: {ch.detail}"
    if ch.policy and ch.reservation == 1:
        detail += f"; tdm-policy {ch.policy[:200]}"
    return Finding(NAME, says, detail, ch.document, line=ch.line)


def prefetch_findings(file: Channel | None, purpose: str, precedence: str) -> list[Finding]:
    """The file's finding before the fetch; under `spec` a 1 waits for the response."""
    if file is None:
        return []
    if precedence == "spec" and file.reservation == 1:
        return [_finding(file, purpose, Says.UNKNOWN)]
    return [_finding(file, purpose)]


def response_findings(channels: Sequence[Channel], purpose: str, precedence: str) -> list[Finding]:
    """Findings of the response-side channels (and, under `spec`, the file's, to be superseded)."""
    present = [c for c in channels if c is not None]
    if precedence != "spec":
        return [_finding(c, purpose) for c in present if c.channel != "file"]
    valid = [c for c in present if c.reservation is not None]
    if not valid:
        return [_finding(c, purpose) for c in present if c.channel != "file"]
    # §4.5: later, more granular channels supersede earlier ones; absence never resets.
    deciding = max(valid, key=lambda c: CHANNELS.index(c.channel))
    out = [_finding(deciding, purpose)]
    out += [_finding(c, purpose, Says.UNKNOWN) for c in present if c is not deciding and c.channel != "file"]
    return out
