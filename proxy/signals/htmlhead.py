"""What an HTML document says about itself: meta tags, licence links, inline RSL and C2PA.

A byte-level reader, not a parser: the tags that matter (`<meta>`, `<link>`,
`<script>`) are found with one compiled pattern over the whole body (a meta
tag after a megabyte of body still counts; signals.md §6.2: be lenient about
`<head>`), and only those are taken apart. Markup that would stop a parser
(marked sections `<![foo[ ... ]]>`, stray `</`, broken attributes) is simply
not what the pattern looks for. Comments are skipped, as browsers skip them.
Never raises on content.

Text is decoded the way browsers decide (WHATWG Encoding, HTML §13.2.3.1):
a BOM first, then the Content-Type charset, then a `<meta charset>` or
`http-equiv=Content-Type` in the first 1024 bytes, else UTF-8.
`<meta http-equiv=NAME content=...>` is kept apart: for X-Robots-Tag and
the like it stands for the response header of that name.
"""

from __future__ import annotations

import bisect
import codecs
import html
import re
from dataclasses import dataclass, field
from typing import Any

from proxy.sniff import contains

MAX_SCRIPT = 256 * 1024
# How far a <meta charset> is looked for (HTML §13.2.3.2: the first 1024 bytes).
PRESCAN_BYTES = 1024

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")
_SCRIPT_END = re.compile(r"</script", re.IGNORECASE)
_TAG = re.compile(r"<(meta|link|script)(?=[\s/>])([^>]*)>", re.IGNORECASE)
_BTAG = re.compile(rb"<(meta|link|script)(?=[\s/>])([^>]*)>", re.IGNORECASE)
_BCOMMENT = re.compile(rb"<!--.*?(?:-->|\Z)", re.DOTALL)
_BSCRIPT_END = re.compile(rb"</script", re.IGNORECASE)
_PRESCAN_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


@dataclass
class HtmlHead:
    metas: list[tuple[str, str]] = field(default_factory=list)  # (name, content)
    equivs: list[tuple[str, str]] = field(default_factory=list)  # (http-equiv, content), names lower-case
    links: list[dict[str, str]] = field(default_factory=list)  # licence links: attributes, names lower-case
    rsl_scripts: list[str] = field(default_factory=list)
    c2pa_scripts: list[str] = field(default_factory=list)  # base64 manifests (C2PA 2.4 Annex A.7)
    encoding: str = "utf-8"

    def meta(self, name: str) -> list[str]:
        """Contents of the meta tags called `name` (case-insensitive), in order."""
        return [c for n, c in self.metas if n.strip().lower() == name]

    def equiv(self, name: str) -> list[str]:
        """Contents of the `http-equiv` meta tags standing for header `name` (lower-case)."""
        return [c for n, c in self.equivs if n == name]


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    # WHATWG Encoding: the Latin-1 labels mean windows-1252; a meta saying UTF-16 means UTF-8.
    utf16 = {"utf-16": "utf-8", "utf-16-le": "utf-8", "utf-16-be": "utf-8"}
    return {"latin-1": "cp1252", "iso8859-1": "cp1252", **utf16}.get(name, name)


def encoding_of(body: bytes, charset: str | None) -> tuple[str, int]:
    """(codec, bytes to skip): BOM, then the header's charset, then a meta prescan, then UTF-8."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name, len(bom)
    header = _codec(charset)
    if header is not None:
        return header, 0
    m = _PRESCAN_CHARSET.search(body[:PRESCAN_BYTES])
    meta = _codec(m.group(1).decode("ascii", "replace")) if m else None
    return meta or "utf-8", 0


def _attrs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ATTR.finditer(text):
        name = m.group(1).lower()
        if name not in out:  # HTML: the first of a repeated attribute counts
            value = (
                m.group(2) if m.group(2) is not None else m.group(3) if m.group(3) is not None else m.group(4)
            )
            out[name] = html.unescape(value or "")
    return out


def read(body: bytes, charset: str | None = None) -> HtmlHead:
    """The meta tags, http-equiv tags, links and inline RSL/C2PA of an HTML body.

    Read as the browser would decode it and, when that is not UTF-8, as UTF-8
    too: a charset (or BOM) that contradicts the bytes must not hide a tag that
    a client decoding differently would see.
    """
    encoding, skip = encoding_of(body, charset)
    head = HtmlHead(encoding=encoding)
    if encoding.startswith(("utf-16", "utf-32")):
        _scan(body[skip:].decode(encoding, errors="replace"), head)
    else:
        # ASCII-compatible: the tags are found in the bytes, and only what they hold is decoded.
        _scan(body[skip:], head, encoding)
    if encoding != "utf-8":
        _scan(body, head, "utf-8")
    return head


def _scan(source: str | bytes, head: HtmlHead, encoding: str = "") -> None:
    """Collect the tags of `source`: text, or bytes in an ASCII-compatible `encoding`."""
    data: Any = source  # one scan for both; the patterns below match its type
    if isinstance(data, bytes):
        tags, comment, script_end = _BTAG, _BCOMMENT, _BSCRIPT_END
        wanted_link: Any = b"licen"
        wanted_script: Any = b"application/"

        def text(raw: bytes) -> str:
            return raw.decode(encoding, errors="replace")
    else:
        tags, comment, script_end = _TAG, _COMMENT, _SCRIPT_END  # type: ignore[assignment]
        wanted_link, wanted_script = "licen", "application/"

        def text(raw: str) -> str:  # type: ignore[misc]
            return raw

    # In bytes from memchr of "!", which is rarer in HTML than "<" (sniff.contains).
    commented = contains(data, b"<!--", 1) if isinstance(data, bytes) else "<!--" in data
    comments = [m.span() for m in comment.finditer(data)] if commented else []
    starts = [start for start, _ in comments]
    for m in tags.finditer(data):
        if comments:
            i = bisect.bisect_right(starts, m.start()) - 1
            if i >= 0 and m.start() < comments[i][1]:
                continue  # inside a comment: browsers do not read it
        tag = text(m.group(1)).lower()
        raw = m.group(2)
        # Only licence links and RSL/C2PA scripts are read: the others are not taken apart.
        if tag == "link" and wanted_link not in raw.lower():
            continue
        if tag == "script" and wanted_script not in raw.lower():
            continue
        a = _attrs(text(raw))
        if tag == "meta":
            if "name" in a:
                head.metas.append((a["name"], a.get("content", "")))
            if "http-equiv" in a:
                head.equivs.append((a["http-equiv"].strip().lower(), a.get("content", "")))
        elif tag == "link":
            head.links.append(a)
        else:
            kind = a.get("type", "").strip().lower()
            if kind not in ("application/rsl+xml", "application/c2pa"):
                continue
            end = script_end.search(data, m.end())
            content = text(data[m.end() : end.start() if end else len(data)][: MAX_SCRIPT * 4])[:MAX_SCRIPT]
            (head.rsl_scripts if kind == "application/rsl+xml" else head.c2pa_scripts).append(content)
