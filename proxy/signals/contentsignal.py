"""Cloudflare Content Signals: `Content-Signal:` lines in robots.txt groups, and the header.

Implements the Content Signals Policy (contentsignals.org; signals.md §8).
`ai-train=no` reserves training, `search=no` search, `ai-input=no` use as AI
input; each read relative to the policy's purpose. Parsed leniently: split on
commas, then on the first `=`, case-insensitively; unknown keys and values
other than yes/no are ignored (`use=reference` among them). A Content-Signal
line is a group record: it never ends a run of User-agent lines.

Group scoping (signals.md §13.7): with `star_group_preferences: inherit` (the
default) the `*` group's signals also bind our agent when our own group has
none; `strict` applies only our own group's.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.evidence import Document, Finding, Says
from proxy.signals.robots import RobotsTxt

NAME = "content-signal"
KEY = "content-signal"
LABEL_FOR_PURPOSE = {"ai-train": "ai-train", "search": "search", "ai-input": "ai-input"}


def parse(value: str) -> dict[str, str]:
    """The signals of one value, keys and values lower-cased."""
    out: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if sep and key.strip():
            out[key.strip().lower()] = val.strip().lower()
    return out


def evaluate(value: str, purpose: str) -> Says:
    """What one Content-Signal value says for `purpose`."""
    said = parse(value).get(LABEL_FOR_PURPOSE[purpose])
    return {"no": Says.DISALLOW, "yes": Says.ALLOW}.get(said or "", Says.UNKNOWN)


def findings_for(
    robots: RobotsTxt, agent: str, purpose: str, document: Document | None, *, inherit_star: bool
) -> list[Finding]:
    """One finding per Content-Signal line of the groups that apply to `agent`."""
    return [
        Finding(NAME, evaluate(r.value, purpose), f"Content-Signal: {r.value[:200]}", document, r.line, who)
        for r, who in robots.records_for(agent, KEY, inherit_star=inherit_star)
    ]


def findings_from_headers(values: Sequence[str], purpose: str, document: Document | None) -> list[Finding]:
    """One finding per Content-Signal response header line."""
    return [
        Finding(NAME, evaluate(v, purpose), f"Content-Signal: {v.strip()[:200]}", document) for v in values
    ]
