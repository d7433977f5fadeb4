"""RSL 1.0 (Really Simple Licensing): licence documents found via robots.txt `License:`,
a `Link: rel="license"` header, or HTML `<link>` / inline `<script type="application/rsl+xml">`.

Implements RSL-SPEC-1.0 as summarised in signals.md §9. For each `<content>`
whose `url` matches the asset (RFC 9309 patterns; absolute URLs must also match
the origin), each `<license>` is an alternative offer:

* a use is permitted when the usage names it in `<permits type="usage">` or
  when no usage permits exist, and refused when `<prohibits type="usage">`
  names it (prohibits wins); the same for `user` with the policy's
  `rsl_user` class (geo restrictions are recorded, not evaluated);
* a permitted offer that is free (no `<payment>`, or `free` / `attribution`)
  and names no licence `server` allows; one that needs payment or a token
  from a licence server means the crawler would need a licence it does not
  hold, which blocks (signals.md: LICENSE is treated as BLOCK);
* any allowing offer allows the content entry; several matching entries
  combine to the most restrictive.

The purpose maps to RSL's usage vocabulary: `ai-train` (also `train-ai`,
`ai-all`, `all`), `ai-input` (`ai-all`, `all`), `search` (`all`). A licence
document that cannot be fetched or parsed gives no signal (recorded).
XML is parsed with defusedxml: no entity expansion, no external fetches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from defusedxml import ElementTree

from proxy.evidence import Document, Finding, Says
from proxy.origin import path_and_query
from proxy.signals.robots import PathPattern

NAME = "rsl"
MEDIA_TYPE = "application/rsl+xml"
MAX_BYTES = 1024 * 1024
USAGE_FOR_PURPOSE = {
    "ai-train": frozenset({"ai-train", "train-ai", "ai-all", "all"}),
    "ai-input": frozenset({"ai-input", "ai-all", "all"}),
    "search": frozenset({"search", "all"}),
}
FREE_PAYMENTS = frozenset({"free", "attribution"})


@dataclass(frozen=True, slots=True)
class Offer:
    permits: dict[str, frozenset[str]]
    prohibits: dict[str, frozenset[str]]
    payments: frozenset[str]


@dataclass(frozen=True, slots=True)
class Content:
    url: str
    server: str | None
    offers: tuple[Offer, ...]
    origin: tuple[str, str, int | None] | None  # scheme, host, port when `url` is absolute
    path: PathPattern

    @classmethod
    def of(cls, url: str, server: str | None, offers: tuple[Offer, ...]) -> Content:
        """A content entry with its URL pattern compiled."""
        if url.startswith(("http://", "https://")):
            p = urlsplit(url)
            return cls(url, server, offers, _origin_key(p), PathPattern(p.path or "/"))
        return cls(url, server, offers, None, PathPattern(url))

    def covers(self, origin: tuple[str, str, int | None], path: str) -> bool:
        """True if this entry's URL pattern matches an asset on `origin` at `path` (plus ?query)."""
        return (self.origin is None or self.origin == origin) and self.path.matches(path)


def _origin_key(parts: SplitResult) -> tuple[str, str, int | None]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port


@dataclass(frozen=True, slots=True)
class License:
    contents: tuple[Content, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _values(text: str | None) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in (text or "").replace(",", " ").split() if v.strip())


def parse(body: bytes | str) -> License | None:
    """The content entries of an RSL document, or None if it is not one."""
    try:
        root = ElementTree.fromstring(body)
    except Exception:  # ParseError, defusedxml's refusals (entities, DTDs), bad encodings
        return None
    if _local(root.tag) != "rsl":
        return None
    contents = []
    for content in root.iter():
        if _local(content.tag) != "content" or not content.get("url"):
            continue
        offers = []
        for lic in content:
            if _local(lic.tag) != "license":
                continue
            permits: dict[str, set[str]] = {}
            prohibits: dict[str, set[str]] = {}
            payments: set[str] = set()
            for el in lic:
                kind = _local(el.tag)
                if kind in ("permits", "prohibits"):
                    target = permits if kind == "permits" else prohibits
                    target.setdefault((el.get("type") or "usage").lower(), set()).update(_values(el.text))
                elif kind == "payment":
                    payments.add((el.get("type") or "free").lower())
            offers.append(Offer(
                {k: frozenset(v) for k, v in permits.items()},
                {k: frozenset(v) for k, v in prohibits.items()},
                frozenset(payments),
            ))  # fmt: skip
        contents.append(Content.of(content.get("url", ""), content.get("server"), tuple(offers)))
    return License(tuple(contents))


def _judge(offer: Offer, server: str | None, purpose: str, user: str) -> tuple[Says, str]:
    wanted = USAGE_FOR_PURPOSE[purpose]
    if offer.prohibits.get("usage", frozenset()) & wanted:
        return Says.DISALLOW, "usage prohibited"
    if "usage" in offer.permits and not offer.permits["usage"] & wanted:
        return Says.DISALLOW, "usage not permitted"
    if user in offer.prohibits.get("user", frozenset()):
        return Says.DISALLOW, f"user class {user} prohibited"
    if "user" in offer.permits and user not in offer.permits["user"]:
        return Says.DISALLOW, f"user class {user} not permitted"
    if server:
        return Says.DISALLOW, f"licence token required from {server}"
    paid = offer.payments - FREE_PAYMENTS
    if paid:
        return Says.DISALLOW, f"payment required ({', '.join(sorted(paid))})"
    return Says.ALLOW, "permitted free of charge"


def findings_for(
    url: str, license: License, purpose: str, user: str, document: Document | None, source: str
) -> list[Finding]:
    """The licence's finding for `url`: most restrictive over matching content entries."""
    results: list[tuple[Says, str]] = []
    origin, path = _origin_key(urlsplit(url)), path_and_query(url)
    for content in license.contents:
        if not content.covers(origin, path):
            continue
        judged = [_judge(o, content.server, purpose, user) for o in content.offers] or [
            (Says.DISALLOW, f"licence token required from {content.server}") if content.server
            else (Says.ALLOW, "no licence terms")
        ]  # fmt: skip
        allowing = [j for j in judged if j[0] is Says.ALLOW]
        verdict = allowing[0] if allowing else judged[0]
        results.append((verdict[0], f'<content url="{content.url}">: {verdict[1]}'))
    if not results:
        return [Finding(NAME, Says.UNKNOWN, f"{source}: no <content> entry matches", document)]
    says, why = next((r for r in results if r[0] is Says.DISALLOW), results[0])
    return [Finding(NAME, says, f"{source}: {why}", document)]


def unusable(source: str, document: Document | None, why: str) -> Finding:
    """The finding for a licence that could not be fetched or read (no signal, recorded)."""
    return Finding(NAME, Says.UNKNOWN, f"{source}: {why}", document)


_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:\"[^\"]*\"|[^;,]*))?)*)")
_LINK_PARAM = re.compile(r"""([^;,=\s]+)(?:\s*=\s*(?:"([^"]*)"|([^;,]*)))?""")


def license_links(link_header_values: list[str]) -> list[str]:
    """URLs of `Link: <...>; rel="license"; type="application/rsl+xml"` header values.

    RFC 8288: a target in `<...>` may hold commas; `rel` is a space-separated list
    (`rel="nofollow license"`). A link that names RSL's type counts whatever else it says.
    """
    out = []
    for value in link_header_values:
        for m in _LINK.finditer(value):
            params: dict[str, str] = {}
            for p in _LINK_PARAM.finditer(m.group(2)):
                params.setdefault(
                    p.group(1).lower(), (p.group(2) if p.group(2) is not None else p.group(3) or "")
                )
            rels = params.get("rel", "").lower().split()
            if "license" in rels and MEDIA_TYPE in params.get("type", "").lower():
                out.append(m.group(1).strip())
    return out
