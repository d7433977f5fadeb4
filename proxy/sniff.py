"""What a body is, from its first bytes as well as its headers.

A Content-Type can be missing, generic (`application/octet-stream`,
`text/plain`), repeated, comma-listed or simply false, and a crawler's parser
will still read HTML as HTML. So a body is read as everything any of these say
it is: each Content-Type value (every field line, every comma-separated
member) and what its first bytes look like, after the patterns of WHATWG MIME
Sniffing §7.1 (HTML tags, XML, PDF, PostScript) and §6.1-6.2 (images, audio,
video, archives).

`kinds()` answers with the readers a body needs: `html` (meta tags, links,
inline scripts) and/or `media` (XMP, C2PA, PDF, EPUB metadata).
"""

from __future__ import annotations

from collections.abc import Iterable

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# XML can be XHTML (meta tags) or SVG/XMP (metadata packets): both readers.
XML_TYPES = frozenset({"application/xml", "text/xml", "image/svg+xml"})
MEDIA_PREFIXES = ("image/", "video/", "audio/", "font/")
MEDIA_TYPES = frozenset(
    {"application/pdf", "application/epub+zip", "application/octet-stream", "application/postscript",
     "application/zip", "application/rdf+xml", ""}
)  # fmt: skip
# How far into a body the signatures are looked for (WHATWG: the resource header, 1445 bytes).
SNIFF_BYTES = 1445

# WHATWG MIME Sniffing §7.1 step 2: tags that make a resource HTML, each followed by a
# space or ">" (a tag-terminating byte).
_HTML_TAGS = tuple(
    t.encode()
    for t in ("<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font", "<table",
              "<a", "<style", "<title", "<b", "<body", "<br", "<p", "<!--", "<meta", "<link")
)  # fmt: skip
_TAG_END = frozenset(b" >\t\n\x0c\r/")
_MEDIA_MAGIC = (
    b"%PDF-", b"%!PS-Adobe-", b"\xc5\xd0\xd3\xc6",  # PDF, PostScript, DOS EPS binary
    b"GIF87a", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"\x00\x00\x01\x00",
    b"II*\x00", b"MM\x00*", b"RIFF", b"ID3", b"OggS", b"fLaC", b"PK\x03\x04", b"\x1aE\xdf\xa3",
    b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"FORM",
)  # fmt: skip


def contains(data: bytes, needle: bytes, pivot: int) -> bool:
    """`needle in data`, found from the occurrences of the byte `needle[pivot]` (memchr).

    CPython searches for a short needle at a fraction of memchr's speed; when the pivot
    byte is rare in `data` this is several times faster. After a few occurrences it
    hands the rest to the plain search, so a body full of the pivot costs no more.
    """
    byte = needle[pivot : pivot + 1]
    end = len(needle) - pivot
    at = data.find(byte)
    for _ in range(16):
        if at < 0:
            return False
        if at >= pivot and data[at - pivot : at + end] == needle:
            return True
        at = data.find(byte, at + 1)
    return at >= 0 and data.find(needle, max(0, at - pivot)) >= 0


def _text_start(head: bytes) -> bytes:
    """The first bytes as lower-case ASCII-ish text: BOMs removed, UTF-16 narrowed, whitespace skipped."""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16-le" if head.startswith(b"\xff\xfe") else "utf-16-be"
        head = head[2:].decode(encoding, "replace").encode("ascii", "replace")
    return head.lstrip(b" \t\n\x0c\r").lower()


_WHITESPACE = b" \t\n\x0c\r"


def sniff(head: bytes) -> set[str]:
    """The readers the first bytes of a body call for (an empty set: plain text or unknown)."""
    found: set[str] = set()
    if not head:
        return found
    first = head.lstrip(_WHITESPACE)[:1]
    # Both packet markers start with "<": a body without one (memchr, far faster than
    # a search for the markers themselves) holds neither.
    markup = b"<" in head
    if (
        first != b"<"
        and head[:1] not in (b"\xef", b"\xff", b"\xfe")
        and not (markup and b"<?xpacket" in head)
    ):
        # Not markup (HTML and XML start with "<" after white space, WHATWG §7.1): only binary
        # signatures and an XMP packet can still say something, and a PDF header after a BOM
        # or blank lines (PDF readers look for it in the first 1024 bytes).
        if (
            head[4:8] == b"ftyp"
            or head.startswith(_MEDIA_MAGIC)
            or (markup and b"<x:xmpmeta" in head)
            or b"%PDF-" in head[:1024]
        ):
            found.add("media")
        return found
    if head[4:8] == b"ftyp" or head.startswith(_MEDIA_MAGIC) or b"%PDF-" in head[:1024]:
        found.add("media")
    text = _text_start(head)
    if text.startswith(b"<?xml"):
        found.update(("html", "media"))  # XHTML, SVG or an XMP packet
    for tag in _HTML_TAGS:
        if text.startswith(tag) and (tag == b"<!--" or (len(text) > len(tag) and text[len(tag)] in _TAG_END)):
            found.add("html")
            break
    if b"<x:xmpmeta" in head or b"<?xpacket" in head:
        found.add("media")  # an XMP packet in a text body
    return found


def media_types(values: Iterable[str]) -> list[str]:
    """Every media type the Content-Type field values name (all lines, all comma-listed members)."""
    out: list[str] = []
    for value in values:
        for member in value.split(","):
            kind = member.split(";")[0].strip().lower()
            if kind or not out:
                out.append(kind)
    return out or [""]


def declared(values: Iterable[str]) -> set[str]:
    """The readers the Content-Type fields call for."""
    found: set[str] = set()
    for kind in media_types(values):
        if kind in HTML_TYPES:
            found.add("html")
        elif kind in XML_TYPES or kind.endswith("+xml"):
            found.update(("html", "media"))
        elif kind.startswith(MEDIA_PREFIXES) or kind in MEDIA_TYPES:
            found.add("media")
    return found


def kinds(content_types: Iterable[str], head: bytes) -> set[str]:
    """The readers a body needs: what any of its Content-Type values say, and what its bytes say."""
    return declared(content_types) | sniff(head[:SNIFF_BYTES])
