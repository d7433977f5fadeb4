"""What an HTML document says about itself: meta tags, licence links, inline RSL and C2PA.

A byte-level reader, not a parser: the tags that matter (`<meta>`, `<link>`,
`<script>`, and the elements that embed a document) are found with one compiled
pattern over the whole body (a meta tag after a megabyte of body still counts;
signals.md §6.2: be lenient about `<head>`), and only those are taken apart.
Markup that would stop a parser (marked sections `<![foo[ ... ]]>`, stray `</`,
broken attributes) is simply not what the pattern looks for. Tags inside what
looks like a comment are read too, and say so (whether `<!--` opens a comment
depends on where it stands). Never raises on content.

A document a page carries inside itself is read as well, since its bytes reach
the crawler with the page: an `<iframe srcdoc>`, a `data:` URL in an
iframe/frame/object/embed, and markup escaped for a script or JSON string
(`\\u003cmeta`, `<meta name=\\"robots\\">`). What those readings add is named
in `HtmlHead.embedded`, so the evidence says where a signal was found.

Text is decoded the way browsers decide (WHATWG Encoding, HTML §13.2.3.1):
a BOM first, then the Content-Type charset, then a `<meta charset>` or
`http-equiv=Content-Type` in the first 1024 bytes, else UTF-8.
`<meta http-equiv=NAME content=...>` is kept apart: for X-Robots-Tag and
the like it stands for the response header of that name.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import dataclasses
import functools
import html
import itertools
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.sniff import contains

MAX_SCRIPT = 256 * 1024
# How far a <meta charset> is looked for (HTML §13.2.3.2: the first 1024 bytes).
PRESCAN_BYTES = 1024
# Documents inside documents: how deep, and how many per body, are read. Each level
# reads at most the bytes of the one holding it, so a hostile page costs a few scans.
MAX_DEPTH = 3
MAX_EMBEDDED = 64
# Other charsets a body is decoded with besides its own and UTF-8 (each one is a scan).
MAX_CHARSETS = 4
# `charset=` in a Content-Type value or a meta tag's content.
CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?\s*([^"';,\s]+)""", re.IGNORECASE)
# Statements kept per kind (metas, links, ...); a page with more is not read in full, and withheld.
MAX_FOUND = 4096
# Attributes read in one tag; a tag with more is not read in full, and its page is withheld.
MAX_ATTRIBUTES = 1024

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_SCRIPT_END = re.compile(r"</script", re.IGNORECASE)
# A start tag's attributes as the WHATWG tokenizer reads them (§13.2.5.32-40): only TAB, LF,
# FF, CR and space separate them (not U+00A0 and the other spaces `\s` knows); a name ends at
# space, "/", ">" or "="; a quoted value runs to its own quote, `>` and the other quote
# included; an unquoted one to space or ">". Possessive throughout: one pass, no backtracking,
# and a tag left open at the end of the body runs to the end (a browser drops it).
_WS = "\t\n\f\r "
_ATTR_NAME = rf"[^{_WS}/>][^{_WS}/>=]*+"
_ATTR_VALUE = rf"""(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z)|[^{_WS}>]*+)"""
_REST = rf"""((?:[{_WS}/]*+{_ATTR_NAME}(?:[{_WS}]*+=[{_WS}]*+{_ATTR_VALUE})?+)*+)[{_WS}/]*+(>|\Z)"""
_ATTR = re.compile(
    rf"""[{_WS}/]*+({_ATTR_NAME})(?:[{_WS}]*+=[{_WS}]*+(?:"([^"]*+)"?|'([^']*+)'?|([^{_WS}>]*+)))?+"""
)
# A start tag of the elements `names` (a pattern, no groups): group 1 its attributes, group 2
# its `>` (empty when it runs to the end), for readers of other markup (an EPUB's package).
TAG_PATTERN = "<{names}" + rf"(?=[{_WS}/>])" + _REST.replace("{", "{{").replace("}", "}}")
# The lookahead on the first letter lets the engine skip most `<` without trying each
# name (measured: faster than the plain alternation even with four names more).
_NAMES = rf"<(?=[mMlLsSiIfFoOeE])(meta|link|script|iframe|frame|object|embed)(?=[{_WS}/>]){_REST}"
_TAG = re.compile(_NAMES, re.IGNORECASE)
_BTAG = re.compile(_NAMES.encode(), re.IGNORECASE)
# XHTML served as XML may name its elements with any namespace prefix: `<h:meta>`.
_PREFIXED = rf"<[A-Za-z_][\w.-]{{0,63}}:(meta|link|script|iframe|frame|object|embed)(?=[{_WS}/>]){_REST}"
_PTAG = re.compile(_PREFIXED, re.IGNORECASE)
_BPTAG = re.compile(_PREFIXED.encode(), re.IGNORECASE)
# XML internal entities (`<!DOCTYPE html [<!ENTITY n "noai">]>`): an XML reader expands them.
_ENTITY_DECL = re.compile(r"""<!ENTITY\s+([A-Za-z_][\w.:-]*)\s+(?:"([^"]*)"|'([^']*)')""")
_ENTITY_REF = re.compile(r"&([A-Za-z_][\w.:-]*);")
_BCOMMENT = re.compile(rb"<!--.*?(?:-->|\Z)", re.DOTALL)
_BSCRIPT_END = re.compile(rb"</script", re.IGNORECASE)
_PRESCAN_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
# UTF-32's before UTF-16's: FF FE 00 00 is also the start of a UTF-16LE BOM.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)  # fmt: skip
# A `<` escaped for a JavaScript or JSON string: markup a script writes into the page.
_ESCAPED_OPEN = re.compile(r"\\(?:u003[cC]|x3[cC]|u\{0*3[cC]\})")
ESCAPED_OPEN_BYTES = re.compile(_ESCAPED_OPEN.pattern.encode())
_JS_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]{1,6}\}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_JS_SINGLE = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "b": "\b", "0": "\0"}
_EMBEDS = ("iframe", "frame", "object", "embed")
_DATA_URL = re.compile(r"\s*data:([^,]*),", re.IGNORECASE)


@dataclass
class HtmlHead:
    metas: list[tuple[str, str]] = field(default_factory=list)  # (name, content)
    equivs: list[tuple[str, str]] = field(default_factory=list)  # (http-equiv, content), names lower-case
    links: list[dict[str, str]] = field(default_factory=list)  # licence links: attributes, names lower-case
    rsl_scripts: list[str] = field(default_factory=list)
    c2pa_scripts: list[str] = field(default_factory=list)  # base64 manifests (C2PA 2.4 Annex A.7)
    encoding: str = "utf-8"
    # Where tags were found besides the page's own markup ("iframe srcdoc", "data: URL", ...).
    embedded: list[str] = field(default_factory=list)
    # Markup that could not be read in full (the caller withholds: a reader may see more).
    unread: list[str] = field(default_factory=list)
    # Charsets the page's meta tags declare, wherever they stand (a reader may honour any).
    charsets: list[str] = field(default_factory=list)

    # What each list already holds, for finding a repeat at once (a list search made a page of
    # many-valued tags quadratic: 20 s for 123 KB).
    _seen: set[tuple[int, Any]] = field(default_factory=set, repr=False, compare=False)
    expanded: bool = False  # XML entities were expanded once (the other readings skip it)

    def keep(self, found: list[Any], item: Any) -> bool:
        """Add `item` to `found` (one of this head's lists) unless it is there; True if added."""
        key = (id(found), tuple(sorted(item.items())) if isinstance(item, dict) else item)
        if key in self._seen:
            return False
        if len(found) >= MAX_FOUND:
            if "more tags than are read" not in self.unread:
                self.unread.append("more tags than are read")
            return False
        self._seen.add(key)
        found.append(item)
        return True

    def merge(self, other: HtmlHead) -> None:
        """Add what `other` (another page of the same body) holds."""
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, list) and f.name not in ("embedded", "unread", "charsets"):
                for item in getattr(other, f.name):
                    self.keep(mine, item)
            elif isinstance(mine, list):
                mine += [item for item in getattr(other, f.name) if item not in mine]

    def meta(self, name: str) -> list[str]:
        """Contents of the meta tags called `name` (case-insensitive), in order."""
        return [c for n, c in self.metas if n.strip().lower() == name]

    def equiv(self, name: str) -> list[str]:
        """Contents of the `http-equiv` meta tags standing for header `name` (lower-case)."""
        return [c for n, c in self.equivs if n == name]


@dataclass
class _Reading:
    """One scan's place: how deep inside the page, what it is called, what is left to spend."""

    where: str = ""  # "" for the page's own markup
    depth: int = 0
    budget: list[int] = field(default_factory=lambda: [MAX_EMBEDDED])  # shared by every level
    xml: bool = False  # served as XML: an XML reader may read it, prefixes and all

    def named(self, where: str) -> _Reading:
        """This level read another way (no deeper: nothing is spent)."""
        return _Reading(f"{self.where} > {where}" if self.where else where, self.depth, self.budget, self.xml)

    def inner(self, where: str) -> _Reading | None:
        """A document one level deeper, or None when the depth or the budget is spent."""
        if self.depth >= MAX_DEPTH or self.budget[0] <= 0:
            return None
        self.budget[0] -= 1
        label = f"{self.where} > {where}" if self.where else where
        return _Reading(label, self.depth + 1, self.budget, self.xml)


# WHATWG Encoding labels that Python does not know, or knows as something else.
_WHATWG_LABELS = {
    "unicode": "utf-16-le", "csunicode": "utf-16-le", "ucs-2": "utf-16-le", "iso-10646-ucs-2": "utf-16-le",
    "unicodefeff": "utf-16-le", "utf-16": "utf-16-le", "unicodefffe": "utf-16-be", "x-user-defined": "cp1252",
}  # fmt: skip
# ISO-2022-JP read with the codec that knows the most escapes (JIS X 0201 katakana and Roman too).
_WIDEST = {"iso2022_jp": "iso2022_jp_ext"}
# Codecs whose bytes hold ASCII as ASCII, without state: a tag is found in them as in ASCII.
_STATEFUL = ("iso2022", "utf-7", "hz", "utf-16", "utf-32")


def codec_of(label: str | None, *, meta: bool = False) -> str | None:
    """The Python codec a charset label names (WHATWG labels too), or None if none can read it;
    `meta`: the label is a meta tag's (one saying UTF-16 means UTF-8)."""
    if not label:
        return None
    clean = label.strip().strip("\"'").lower()
    try:
        info = codecs.lookup(_WHATWG_LABELS.get(clean, clean))
    except LookupError:
        return None
    if not _usable(info.name):
        return None
    name = info.name
    name = {"latin-1": "cp1252", "iso8859-1": "cp1252"}.get(name, name)  # WHATWG: Latin-1 is windows-1252
    # WHATWG §13.2.3.3: a meta saying UTF-16 means UTF-8 (it could not be read if it were true);
    # a header saying UTF-16 (without a BOM) is believed, as little-endian unless it says otherwise.
    if name.startswith("utf-16"):
        return "utf-8" if meta else ("utf-16-be" if name == "utf-16-be" else "utf-16-le")
    return name


@functools.cache
def _usable(name: str) -> bool:
    """Whether Python can decode bytes as charset `name` (rot13, base64, idna and the like it cannot)."""
    if not getattr(codecs.lookup(name), "_is_text_encoding", True):
        return False
    try:
        b"<meta \xff\xfe>".decode(name, errors="replace")
    except (UnicodeError, LookupError, TypeError, ValueError):
        return False
    return True


@functools.cache
def ascii_safe(encoding: str) -> bool:
    """True if every ASCII character is its own byte in `encoding` and no state can change that.

    Tags are then found in the bytes; otherwise (ISO-2022, UTF-7, HZ, EBCDIC, UTF-16/32)
    the body is decoded first, since `<me\\x1b(Bta` is `<meta` to an ISO-2022-JP reader.
    """
    if encoding.startswith(_STATEFUL):
        return False
    try:
        return "<meta name=robots>".encode(encoding) == b"<meta name=robots>"
    except (LookupError, UnicodeError):
        return False


def encoding_of(body: bytes, charset: str | None) -> tuple[str, int]:
    """(codec, bytes to skip): BOM, then the header's charset, then a meta prescan, then UTF-8."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name, len(bom)
    header = codec_of(charset)
    if header is not None:
        return header, 0
    m = _PRESCAN_CHARSET.search(body[:PRESCAN_BYTES])
    meta = codec_of(m.group(1).decode("ascii", "replace"), meta=True) if m else None
    return meta or "utf-8", 0


def attributes(text: str) -> list[tuple[str, str]]:
    """A start tag's attributes (the text after its name, as `TAG_PATTERN`'s group 1 holds it) in
    order, repeated names included: (lower-case name, unescaped value).

    At most MAX_ATTRIBUTES + 1 of them: the caller withholds a page with a tag that has more.
    """
    out = []
    for m in itertools.islice(_ATTR.finditer(text), MAX_ATTRIBUTES + 1):
        value = m.group(2) if m.group(2) is not None else m.group(3) if m.group(3) is not None else m.group(4)
        out.append((m.group(1).lower(), html.unescape(value or "")))
    return out


def _first(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """HTML's view of the attributes: the first of a repeated name counts."""
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def _js_char(m: re.Match[str]) -> str:
    s = m.group(1)
    if s[0] in "ux" and len(s) > 1:
        code = int(s.strip("ux{}"), 16)
        # A lone surrogate would break the audit record's JSON; no tag needs one.
        return "\ufffd" if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF else chr(code)
    return _JS_SINGLE.get(s, s)


def js_unescape(text: str) -> str:
    """`text` with JavaScript/JSON string escapes (`\\u003c`, `\\x3c`, `\\"`, `\\/`) undone."""
    return _JS_ESCAPE.sub(_js_char, text)


def expand_entities(text: str, limit: int | None = None) -> tuple[str, bool]:
    """(`text` with its XML internal general entities replaced, as an XML reader would; complete).

    Character references in a declared value are expanded first (XML 1.0 §4.4.5);
    nested references are followed a few rounds deep, and the result never grows
    past `limit` characters (default: four times `text`), whatever the declarations.
    `complete` is False when a reference was left because of the depth or the bound.
    """
    bound = 4 * len(text) + 4096 if limit is None else limit
    values: dict[str, str] = {}
    for m in _ENTITY_DECL.finditer(text):
        if m.group(1) not in values:  # XML: the first declaration binds
            values[m.group(1)] = html.unescape(m.group(2) if m.group(2) is not None else m.group(3))
    if not values:
        return text, True
    size = [0]

    def one(m: re.Match[str]) -> str:
        value = values.get(m.group(1))
        if value is None or size[0] + len(value) > bound:
            return m.group(0)
        size[0] += len(value)
        return value

    out = text
    for _ in range(MAX_DEPTH):
        size[0] = len(out)
        expanded = _ENTITY_REF.sub(one, out)
        if expanded == out:
            return out, True
        out = expanded
    return out, not any(m.group(1) in values for m in _ENTITY_REF.finditer(out))


def data_url_bytes(url: str) -> bytes | None:
    """The payload of a `data:` URL (RFC 2397, base64 or percent-encoded), or None if it is not one."""
    m = _DATA_URL.match(url)
    if m is None:
        return None
    payload = url[m.end() :]
    if m.group(1).strip().lower().endswith(";base64"):
        compact = "".join(urllib.parse.unquote(payload).split())
        try:
            return base64.b64decode(compact + "=" * (-len(compact) % 4))
        except (binascii.Error, ValueError):
            return None
    return urllib.parse.unquote_to_bytes(payload)


def read(body: bytes, charset: str | None = None, *, xml: bool = False, also: Sequence[str] = ()) -> HtmlHead:
    """The meta tags, http-equiv tags, links and inline RSL/C2PA of an HTML body.

    Read as the browser would decode it and, when that is not UTF-8, as UTF-8
    too: a charset (or BOM) that contradicts the bytes must not hide a tag that
    a client decoding differently would see. `xml`: the body was served as XML
    (it is taken as such anyway when it opens with an XML declaration). `also`: other
    charsets its headers name (a second Content-Type line, say); those a tag cannot be
    found in as bytes (ISO-2022, UTF-7, EBCDIC) are read too, as are such charsets any
    meta tag declares, and ISO-2022-JP wherever an escape byte stands.
    """
    encoding, _ = encoding_of(body, charset)
    head = HtmlHead(encoding=encoding)
    xml = xml or b"<?xml" in body[:64] or wide_encoding(body) is not None
    _read_into(body, charset, head, _Reading(xml=xml), also)
    return head


def _read_into(
    body: bytes, charset: str | None, head: HtmlHead, reading: _Reading, also: Sequence[str] = ()
) -> None:
    encoding, skip = encoding_of(body, charset)
    if not ascii_safe(encoding):
        _scan(body[skip:].decode(encoding, errors="replace"), head, reading)
    else:
        # ASCII-compatible: the tags are found in the bytes, and only what they hold is decoded.
        _scan(body[skip:], head, reading, encoding)
    if encoding != "utf-8":
        _scan(body, head, reading, "utf-8")
    wide = wide_encoding(body)
    if wide is not None and wide != encoding:
        # UTF-16 or UTF-32 without a BOM that no header named: an XML reader detects it from `<\0?\0`
        # (XML 1.0 Appendix F), so it is read as that too.
        _scan(body.decode(wide, errors="replace"), head, reading)
    # A charset named elsewhere, or ISO-2022-JP's escapes: `<me\x1b(Bta` is `<meta` to its reader.
    others = [*also, *head.charsets] + (["iso-2022-jp"] if b"\x1b" in body else [])
    done = {encoding, "utf-8", wide}
    for label in others[: MAX_CHARSETS + 2]:
        codec = codec_of(label)
        if codec is not None and codec not in done and not ascii_safe(codec):
            done.add(codec)
            _scan(body.decode(_WIDEST.get(codec, codec), errors="replace"), head, reading)


def wide_encoding(body: bytes) -> str | None:
    """The UTF-32 or UTF-16 (LE or BE) that the first bytes are ASCII text in, if any
    (XML 1.0 Appendix F: `<\\0\\0\\0`, `<\\0?\\0` and their big-endian forms); else None."""
    start = body[:64]
    if len(start) < 8 or b"\x00" not in start:
        return None

    def zeros(lanes: bytes) -> bool:
        return lanes.count(0) >= len(lanes) * 3 // 4

    q = [start[i::4] for i in range(4)]
    if q[0].count(0) == 0 and all(map(zeros, q[1:])):
        return "utf-32-le"
    if q[3].count(0) == 0 and all(map(zeros, q[:3])):
        return "utf-32-be"
    even, odd = start[0::2], start[1::2]
    if zeros(odd) and even.count(0) == 0:
        return "utf-16-le"
    if zeros(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def _scan(source: str | bytes, head: HtmlHead, reading: _Reading, encoding: str = "") -> None:
    """Collect the tags of `source`: text, or bytes in an ASCII-compatible `encoding`."""
    data: Any = source  # one scan for both; the patterns below match its type
    if isinstance(data, bytes):
        tags, comment, script_end, escaped = _BTAG, _BCOMMENT, _BSCRIPT_END, ESCAPED_OPEN_BYTES
        wanted_link: Any = b"licen"
        wanted_script: Any = b"application/"
        backslash: Any = b"\\"
        ampersand: Any = b"&"

        def text(raw: bytes) -> str:
            return raw.decode(encoding, errors="replace")
    else:
        tags, comment, script_end, escaped = _TAG, _COMMENT, _SCRIPT_END, _ESCAPED_OPEN  # type: ignore[assignment]
        wanted_link, wanted_script, backslash, ampersand = "licen", "application/", "\\", "&"

        def text(raw: str) -> str:  # type: ignore[misc]
            return raw

    # In bytes from memchr of "!", which is rarer in HTML than "<" (sniff.contains).
    commented = contains(data, b"<!--", 1) if isinstance(data, bytes) else "<!--" in data
    comments = [m.span() for m in comment.finditer(data)] if commented else []
    starts = [start for start, _ in comments]
    commented_out = reading.named("markup that may be inside an HTML comment") if comments else reading
    matches: Iterable[re.Match[Any]] = tags.finditer(data)
    # A prefixed element is XHTML's only to an XML reader, and only where a namespace prefix
    # is declared (it refuses an undeclared one); an HTML parser reads `<h:meta>` as no meta.
    if reading.xml and (b"xmlns:" if isinstance(data, bytes) else "xmlns:") in data:
        matches = itertools.chain(matches, (_BPTAG if isinstance(data, bytes) else _PTAG).finditer(data))
    for m in matches:
        here = reading
        if comments:
            i = bisect.bisect_right(starts, m.start()) - 1
            if i >= 0 and m.start() < comments[i][1]:
                # Read anyway: whether `<!--` opens a comment depends on where it stands
                # (not in a <title>, <script> or attribute value; `<!-->` is empty; `--!>`
                # ends one), and a reader that guesses wrong hides the rest of the page.
                # A signal found there withholds, and its record says where it was.
                here = commented_out
        tag = text(m.group(1)).lower()
        raw = m.group(2)
        if not m.group(3):
            # Left open to the end of the body (an unclosed quote, say): no parser keeps the
            # tag, but one may read on after it, so what follows its name is read as markup.
            # (Past the budget this is not withheld: no parser keeps the tag, so this reading is extra.)
            inner = reading.inner("markup after a tag left open") if m.end() - m.end(1) > 1 else None
            if inner is not None:
                _scan(data[m.end(1) :], head, inner, encoding)
            continue
        # Only licence links and RSL/C2PA scripts are read: the others are not taken apart
        # (an entity may spell the word, so a tag with one is read).
        if tag == "link" and wanted_link not in raw.lower() and ampersand not in raw:
            continue
        if tag == "script" and wanted_script not in raw.lower() and ampersand not in raw:
            continue
        pairs = attributes(text(raw))
        if len(pairs) > MAX_ATTRIBUTES:
            head.unread.append(f"a <{tag}> tag with more than {MAX_ATTRIBUTES} attributes")
        if tag == "meta":
            _meta(pairs, head, here)
            if backslash in raw:
                # Markup inside a script or JSON string: `<meta name=\"robots\" ...>`.
                _meta(attributes(js_unescape(text(raw))), head, here.named("JS-escaped markup"))
            continue
        a = _first(pairs)
        if tag in _EMBEDS:
            _embedded(a, head, here)
        elif tag == "link":
            _add(head.links, a, head, here)
        else:
            kind = a.get("type", "").strip().lower()
            if kind not in ("application/rsl+xml", "application/c2pa"):
                continue
            end = script_end.search(data, m.end(), m.end() + MAX_SCRIPT * 4)
            content = text(data[m.end() : end.start() if end else len(data)][: MAX_SCRIPT * 4])[:MAX_SCRIPT]
            scripts = head.rsl_scripts if kind == "application/rsl+xml" else head.c2pa_scripts
            _add(scripts, content, head, here)
    if backslash in data and escaped.search(data):
        inner = _inner(head, reading, "JS-escaped markup")
        if inner is not None:
            _scan(js_unescape(text(data)), head, inner)
    if contains(data, b"<!ENTITY", 1) if isinstance(data, bytes) else "<!ENTITY" in data:
        # Once per body: the expanded text still holds the declarations, and each reading of it
        # expanding them again multiplied the work (a 250 KB page took 20 s).
        inner = None if head.unread or head.expanded else _inner(head, reading, "XML entities expanded")
        if inner is not None:
            head.expanded = True
            expanded, complete = expand_entities(text(data))
            if not complete:
                head.unread.append("XML entities that expand too far or too deep")
            _scan(expanded, head, inner)


def _meta(pairs: list[tuple[str, str]], head: HtmlHead, reading: _Reading) -> None:
    """A meta tag's (name, content) and (http-equiv, content) statements.

    A browser takes the first of a repeated attribute, BeautifulSoup the last: every
    name is paired with every content, so neither reading hides a statement.
    """
    for n, v in pairs:
        if n == "charset":
            value = v
        elif n == "content" and (m := CHARSET_PARAM.search(v)):
            value = m.group(1)  # <meta http-equiv="Content-Type" content="...; charset=...">
        else:
            continue
        if value and value not in head.charsets and len(head.charsets) < MAX_CHARSETS:
            head.charsets.append(value)
    names = [v for n, v in pairs if n == "name"][:8]
    equivs = [v.strip().lower() for n, v in pairs if n == "http-equiv"][:8]
    contents = [v for n, v in pairs if n == "content"][:8] or [""]
    for name in names:
        for content in contents:
            _add(head.metas, (name, content), head, reading)
    for equiv in equivs:
        for content in contents:
            _add(head.equivs, (equiv, content), head, reading)


def _add(found: list[Any], item: Any, head: HtmlHead, reading: _Reading) -> None:
    """Keep `item` once; one found only by a reading of embedded markup is kept with its place."""
    if head.keep(found, item) and reading.where and reading.where not in head.embedded:
        head.embedded.append(reading.where)


def _inner(head: HtmlHead, reading: _Reading, where: str) -> _Reading | None:
    """`reading.inner(where)`; when the depth or the budget refuses it, the page is not read in
    full (64 decoy documents, or one nested too deep, must not hide the next one)."""
    inner = reading.inner(where)
    if inner is None:
        why = f"documents inside documents past {MAX_DEPTH} deep or {MAX_EMBEDDED} in all"
        if why not in head.unread:
            head.unread.append(why)
    return inner


def _embedded(a: dict[str, str], head: HtmlHead, reading: _Reading) -> None:
    """Read the documents an iframe/frame/object/embed carries in itself."""
    srcdoc = a.get("srcdoc")
    if srcdoc:
        inner = _inner(head, reading, "iframe srcdoc")
        if inner is not None:
            _scan(srcdoc, head, inner)
    for name in ("src", "data"):
        url = a.get(name, "")
        if "data:" not in url[:64].lower():
            continue
        payload = data_url_bytes(url)
        inner = _inner(head, reading, "data: URL") if payload else None
        if payload and inner is not None:
            charset = re.search(r"charset=([^;,]+)", url[: url.find(",")], re.IGNORECASE)
            _read_into(payload, charset.group(1) if charset else None, head, inner)
