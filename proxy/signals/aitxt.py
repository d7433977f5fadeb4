"""Spawning ai.txt: `/ai.txt`, robots.txt-shaped rules with file-extension patterns.

There is no formal specification (signals.md §5): the grammar is what
Spawning's generator emits. We read it with the RFC 9309 engine of
`signals/robots.py` (same grouping, our token or `*`, honored tokens, longest
match, Allow wins a tie).

Deliberate choices:

* `*.jpg` keeps robots semantics: it also matches `/a.jpg?w=200` and
  `/a.jpgx` (signals.md §13.10, vectors A4/A5). This over-blocks slightly,
  in the rights holder's favour.
* Any answer but 2xx means no signal: ai.txt is optional, so robots.txt's
  "unreachable means disallow" is not imported.
* A file with no User-Agent/Allow/Disallow lines is another format that is
  also called ai.txt (Markdown context files, other drafts): no signal.
* ai.txt addresses dataset and training use: for the purposes `search` and
  `ai-input` its reservations are recorded but do not block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from proxy.evidence import Document, Finding, Says
from proxy.signals import robots

NAME = "ai-txt"
PATH = "/ai.txt"
MAX_BYTES = robots.MAX_BYTES


def parse(body: bytes) -> robots.RobotsTxt | None:
    """The rules of an ai.txt, or None when the file is not in Spawning's robots-like format."""
    parsed = robots.parse(body)
    if not parsed.groups or not any(g.rules for g in parsed.groups):
        return None
    return parsed


def findings_for(
    path: str,
    parsed: robots.RobotsTxt,
    agent: str,
    honor_agents: Iterable[str],
    purpose: str,
    document: Document | None,
) -> list[Finding]:
    """Findings for `path`: our agent's (or `*`'s) verdict plus honored tokens' disallows."""
    found = robots.findings_for(path, parsed, agent, honor_agents, document, signal=NAME)
    if purpose == "ai-train":
        return found
    return [
        dataclasses.replace(f, says=Says.UNKNOWN, detail=f"{f.detail} (ai.txt addresses training only)")
        if f.says is Says.DISALLOW
        else f
        for f in found
    ]
