"""ai.txt in both published forms, at `/ai.txt` and `/.well-known/ai.txt`.

**Spawning's form** (signals.md §5): robots.txt-shaped `User-Agent` groups of
`Allow`/`Disallow` rules with file-extension patterns. There is no formal
specification: the grammar is what Spawning's generator emits. We read it
with the RFC 9309 engine of `signals/robots.py` (same grouping, our token or
`*`, honored tokens, longest match, Allow wins a tie).

**The key/value form** of the individual draft draft-car-ai-txt-wellknown-00
(June 2026): `Key: value` lines, site-wide, and `Agent: NAME` blocks whose
indented lines override them for that agent (`Agent: *` for every agent).
What each key means for each purpose:

* `Training: allow | deny | conditional` binds `ai-train`; under `conditional`
  the `Training-Allow` / `Training-Deny` path globs say which paths.
* `Scraping: allow | deny` binds `ai-train` and `ai-input` (reading the
  content for AI at all).
* `Indexing: allow | deny` binds `search`.

For one agent a key is resolved as the draft's reference implementation does:
its own block, then `Agent: *`, then the site-wide line, then the draft's
default (`Training` defaults to deny; the others to allow). Under
`conditional`, a path matching a `Training-Deny` glob is denied, else one
matching a `Training-Allow` glob is allowed, else denied; globs are read as
robots.txt patterns (`*` matches anything, `/` included: the broader, stricter
reading for a denial), and as shell globs too (`?`, `[a-z]`). Values are
case-insensitive; an unknown value counts as unset; a key said twice for one
agent keeps its stricter value. `Agent` names a product token as
`User-agent` does (`ExampleBot/1.0` is ExampleBot). A file is taken as this
form only if it has one of the draft's keys; a honored token's own block that
denies binds us as in robots.txt. A file with both forms is read both ways,
and the strictest answer wins.

Deliberate choices, both forms:

* `*.jpg` keeps robots semantics: it also matches `/a.jpg?w=200` and
  `/a.jpgx` (signals.md §13.10, vectors A4/A5). This over-blocks slightly,
  in the rights holder's favour.
* Any answer but 2xx means no signal: ai.txt is optional, so robots.txt's
  "unreachable means disallow" is not imported.
* A file in neither form (Markdown context files and the like) gives no signal.
* Spawning's file addresses dataset and training use: for the purposes
  `search` and `ai-input` its reservations are recorded but do not block.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.evidence import Document, Finding, Says
from proxy.signals import robots

NAME = "ai-txt"
PATH = "/ai.txt"
WELL_KNOWN_PATH = "/.well-known/ai.txt"
MAX_BYTES = robots.MAX_BYTES

# The draft's preference keys: what each one governs, and its default when absent.
PREFERENCES = {"training": "deny", "scraping": "allow", "indexing": "allow", "caching": "allow"}
_DRAFT_KEYS = frozenset({
    *PREFERENCES, "site-name", "site-url", "agent", "training-allow", "training-deny", "training-license",
    "training-fee", "ai-json", "attribution", "ai-disclosure", "rate-limit", "spec-version",
})  # fmt: skip
_STRICTNESS = {"allow": 0, "conditional": 1, "deny": 2}
# purpose -> the keys that bind it
BINDING = {"ai-train": ("training", "scraping"), "ai-input": ("scraping",), "search": ("indexing",)}


@dataclass(frozen=True, slots=True)
class Line:
    value: str  # lower-cased, stripped
    number: int


@dataclass(frozen=True, slots=True)
class KeyValueAiTxt:
    """A draft-car-ai-txt-wellknown file: site-wide lines and per-agent blocks (names lower-case)."""

    site: Mapping[str, Line]
    agents: Mapping[str, Mapping[str, Line]]
    training_allow: tuple[tuple[robots.PathPattern, int], ...]
    training_deny: tuple[tuple[robots.PathPattern, int], ...]


@dataclass(frozen=True, slots=True)
class MixedAiTxt:
    """A file in both forms (Spawning's rules and the draft's keys): each is read, the strictest wins."""

    rules: robots.RobotsTxt
    keys: KeyValueAiTxt


def parse_key_value(body: bytes) -> KeyValueAiTxt | None:
    """The draft's key/value form, or None when the file has none of its keys."""
    text = robots.decode(body)[0]
    site: dict[str, Line] = {}
    agents: dict[str, dict[str, Line]] = {}
    allow: list[tuple[robots.PathPattern, int]] = []
    deny: list[tuple[robots.PathPattern, int]] = []
    block: dict[str, Line] | None = None
    recognised = False
    for number, raw in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        indented = line[:1] in (" ", "\t")
        key = key.strip().lower()
        value = value.strip()
        if key in _DRAFT_KEYS:
            recognised = True
        if not indented:
            block = None
        if key == "agent" and not indented:
            # The product token, as robots.txt reads `User-agent` (`ExampleBot/1.0` is ExampleBot).
            block = agents.setdefault(robots.product_token(value), {})
            continue
        if key in PREFERENCES:
            lines = block if block is not None and indented else site
            new = Line(value.lower(), number)
            old = lines.get(key)
            # Said twice (two blocks for one agent, a repeated line): the stricter one stands.
            if old is None or _STRICTNESS.get(new.value, -1) >= _STRICTNESS.get(old.value, -1):
                lines[key] = new
        elif key == "training-allow" and value and not indented:
            allow.append((robots.PathPattern(value), number))
        elif key == "training-deny" and value and not indented:
            deny.append((robots.PathPattern(value), number))
    if not recognised:
        return None
    return KeyValueAiTxt(site, agents, tuple(allow), tuple(deny))


def parse(body: bytes) -> robots.RobotsTxt | KeyValueAiTxt | MixedAiTxt | None:
    """An ai.txt in Spawning's robots-like form, the draft's key/value form, or both; None for neither."""
    parsed = robots.parse(body)
    keys = parse_key_value(body)
    if parsed.groups and any(g.rules for g in parsed.groups):
        return parsed if keys is None else MixedAiTxt(parsed, keys)
    return keys


def _resolve(parsed: KeyValueAiTxt, token: str | None, key: str) -> tuple[str, str, Line | None]:
    """(value, where it was set, the line) of `key` for `token` (None: only `*` and site-wide)."""
    for where, lines in (
        (f"Agent: {token}", parsed.agents.get(robots.product_token(token)) if token else None),
        ("Agent: *", parsed.agents.get("*")),
        ("site-wide", parsed.site),
    ):
        line = lines.get(key) if lines else None
        if line is not None and line.value in ("allow", "deny", "conditional"):
            return line.value, where, line
    return PREFERENCES[key], "the draft's default", None


def _key_value_findings(
    path: str, parsed: KeyValueAiTxt, agent: str, honor_agents: Iterable[str], purpose: str,
    document: Document | None,
) -> list[Finding]:  # fmt: skip
    found: list[Finding] = []
    for key in BINDING.get(purpose, ()):
        value, where, line = _resolve(parsed, agent, key)
        says, detail = _says(parsed, key, value, path)
        name = key.capitalize()
        found.append(Finding(
            NAME, says, f"{name}: {value} ({where}){detail}", document,
            line=line.number if line else None, agent=agent,
        ))  # fmt: skip
        for token in honor_agents:
            own = parsed.agents.get(robots.product_token(token), {}).get(key)
            if own is None or own.value not in ("deny", "conditional"):
                continue
            says, detail = _says(parsed, key, own.value, path)
            if says is Says.DISALLOW:
                found.append(Finding(
                    NAME, says, f"{name}: {own.value} (Agent: {token}){detail}", document,
                    line=own.number, agent=token,
                ))  # fmt: skip
    return found


def _says(parsed: KeyValueAiTxt, key: str, value: str, path: str) -> tuple[Says, str]:
    if value == "allow":
        return Says.ALLOW, ""
    if value == "deny" or key != "training":
        return Says.DISALLOW, ""
    for pattern, number in parsed.training_deny:
        # Read as a robots.txt pattern and as a shell glob (`?`, `[a-z]`): a denial takes the
        # broader reading.
        if pattern.matches(path) or fnmatch.fnmatchcase(path, pattern.value):
            return Says.DISALLOW, f"; Training-Deny: {pattern.value} (line {number})"
    for pattern, number in parsed.training_allow:
        if pattern.matches(path):
            return Says.ALLOW, f"; Training-Allow: {pattern.value} (line {number})"
    return Says.DISALLOW, "; no Training-Allow matches the path"


def findings_for(
    path: str,
    parsed: robots.RobotsTxt | KeyValueAiTxt | MixedAiTxt,
    agent: str,
    honor_agents: Iterable[str],
    purpose: str,
    document: Document | None,
) -> list[Finding]:
    """Findings for `path`: our agent's (or `*`'s) verdict plus honored tokens' disallows."""
    if isinstance(parsed, MixedAiTxt):
        return [
            *findings_for(path, parsed.rules, agent, honor_agents, purpose, document),
            *_key_value_findings(path, parsed.keys, agent, honor_agents, purpose, document),
        ]
    if isinstance(parsed, KeyValueAiTxt):
        return _key_value_findings(path, parsed, agent, honor_agents, purpose, document)
    found = robots.findings_for(path, parsed, agent, honor_agents, document, signal=NAME)
    if purpose == "ai-train":
        return found
    return [
        dataclasses.replace(f, says=Says.UNKNOWN, detail=f"{f.detail} (ai.txt addresses training only)")
        if f.says is Says.DISALLOW
        else f
        for f in found
    ]
