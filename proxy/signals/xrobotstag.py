"""`noai` / `noimageai` in X-Robots-Tag headers and HTML robots meta tags.

Implements the DeviantArt convention with robots-meta syntax (signals.md §6):

* Every X-Robots-Tag field line is read on its own; a bot prefix covers the
  rest of its line up to the next `Name:` item (two lines an intermediary
  combined with a comma stay two groups); directive names are case-insensitive.
* `Name: directives` is bot-specific unless `Name` is a valued directive
  (`max-snippet:-1`, `unavailable_after: ...`); it binds us when `Name` is our
  agent or one of `honor_agents`, case-insensitively.
* HTML: `<meta name="robots">` for all bots, `<meta name="<token>">` for one.
* `noai` reserves AI training and AI input; `noimageai` the same for images.
  `noimageai` on an HTML page blocks the page too under
  `noimageai_scope: all` (the default, signals.md §13.11); `images` limits it
  to image responses.
* For the purpose `search`, `noindex` and `none` (and `noimageindex` on
  images) are the reservations instead.

A malformed item is ignored on its own; it never decides the whole header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from proxy.evidence import Document, Finding, Says

NAME_HEADER = "x-robots-tag"
NAME_META = "html-meta"
VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
_BOT_PREFIX = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*:\s*(.*)$", re.DOTALL)
_CONTROLS = str.maketrans("\x00\r\n", "   ")
AI_DIRECTIVES = frozenset({"noai"})
AI_IMAGE_DIRECTIVES = frozenset({"noimageai"})
SEARCH_DIRECTIVES = frozenset({"noindex", "none"})
SEARCH_IMAGE_DIRECTIVES = frozenset({"noimageindex"})


def directives(line: str, tokens: Iterable[str]) -> list[tuple[list[str], str | None]]:
    """The (directives, bot) groups of one header line or meta content that bind us: those for
    every bot (bot None) and those for one of `tokens`.

    `Name: ...` starts a group for bot `Name` (unless `Name` is a valued directive), also after a
    comma: RFC 9110 §5.3 lets an intermediary combine two field lines into one, so
    `googlebot: nofollow, ExampleBot: noai` is two groups. NUL, CR and LF count as spaces (§5.5);
    words separated by spaces or semicolons alone count one by one.
    """
    wanted = {t.lower() for t in tokens}
    groups: list[tuple[list[str], str | None]] = []
    names: list[str] = []
    bot: str | None = None
    for item in line.translate(_CONTROLS).split(","):
        m = _BOT_PREFIX.match(item)
        if m and m.group(1).lower() not in VALUED_DIRECTIVES:
            if names or bot is not None:
                groups.append((names, bot))
            names, bot, item = [], m.group(1), m.group(2)
        # Directives separated by spaces or semicolons (`noindex noai`, `noindex;noai`) are not
        # the syntax, but readers take them: each word counts, so a list that forgot its commas
        # still reserves.
        names += item.split(":", 1)[0].lower().replace(";", " ").split()
    groups.append((names, bot))
    return [(n, b) for n, b in groups if b is None or b.lower() in wanted]


def _reserving(purpose: str, *, is_image: bool, image_scope: str) -> frozenset[str]:
    if purpose == "search":
        return SEARCH_DIRECTIVES | (SEARCH_IMAGE_DIRECTIVES if is_image else frozenset())
    if is_image or image_scope == "all":
        return AI_DIRECTIVES | AI_IMAGE_DIRECTIVES
    return AI_DIRECTIVES


def _findings(
    name: str,
    lines: Sequence[tuple[str, str]],
    tokens: Sequence[str],
    purpose: str,
    document: Document | None,
    *,
    is_image: bool,
    image_scope: str,
) -> list[Finding]:
    reserving = _reserving(purpose, is_image=is_image, image_scope=image_scope)
    known = AI_DIRECTIVES | AI_IMAGE_DIRECTIVES | SEARCH_DIRECTIVES | SEARCH_IMAGE_DIRECTIVES
    out: list[Finding] = []
    for label, line in lines:
        shown = f"{label}: {line.strip()[:200]}"
        for names, bot in directives(line, tokens):
            hits = [n for n in names if n in reserving]
            if hits:
                out.append(Finding(name, Says.DISALLOW, f"{shown} ({', '.join(hits)})", document, agent=bot))
            elif any(n in known for n in names):
                out.append(
                    Finding(
                        name, Says.UNKNOWN, f"{shown} (not a reservation for {purpose})", document, agent=bot
                    )
                )
    return out


def findings_from_headers(
    values: Sequence[str],
    tokens: Sequence[str],
    purpose: str,
    document: Document | None,
    *,
    is_image: bool,
    image_scope: str,
) -> list[Finding]:
    """Findings of every X-Robots-Tag line (each line read on its own)."""
    return _findings(
        NAME_HEADER, [("X-Robots-Tag", v) for v in values], tokens, purpose, document,
        is_image=is_image, image_scope=image_scope,
    )  # fmt: skip


def findings_from_meta(
    metas: Sequence[tuple[str, str]],
    tokens: Sequence[str],
    purpose: str,
    document: Document | None,
    *,
    image_scope: str,
) -> list[Finding]:
    """Findings of `<meta name="robots"|"<token>" content=...>` elements (name, content)."""
    wanted = {t.lower() for t in tokens}
    lines = []
    for name, content in metas:
        n = name.strip().lower()
        if n == "robots":
            lines.append((f'<meta name="{name}">', content))
        elif n in wanted:
            lines.append((f'<meta name="{name}">', f"{name}: {content}"))
    return _findings(NAME_META, lines, tokens, purpose, document, is_image=False, image_scope=image_scope)
