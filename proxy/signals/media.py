"""Embedded media metadata: IPTC/PLUS Data Mining in XMP, C2PA/CAWG training-and-data-mining
assertions, and TDMRep in PDF XMP.

Implements signals.md §10 (and §4.4 for PDF). Where the data lives:

* XMP: JPEG APP1 (`http://ns.adobe.com/xap/1.0/`), PNG `iTXt` chunk
  `XML:com.adobe.xmp` (zlib-compressed or not, before or after IDAT), PDF
  streams under any chain of the text filters (signals/pdfstreams.py; a
  metadata stream we cannot decode withholds), and any other container that
  carries an `<x:xmpmeta>` packet as text (WebP, GIF, TIFF, MP4).
* C2PA: JUMBF boxes in JPEG APP11 segments (reassembled in sequence) or
  anywhere in the file (PNG `caBX`, BMFF `uuid`), or base64 in an HTML
  `<script type="application/c2pa">` (read by `inband.py`); the assertion labelled
  `c2pa.training-mining` or `cawg.training-mining` is CBOR (or JSON).

PLUS `plus:DataMining` (namespace `http://ns.useplus.org/ldf/xmp/1.0/`, matched
on the URI, not the prefix): every `DMI-PROHIBITED*` value reserves training;
`DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING` leaves search free; the
generative/ML-training values bind `ai-train` only. Human labels are accepted
as well as URIs. If the XMP will not parse, a raw-bytes scan for a prohibiting
vocabulary URI still reserves (conservative fallback, marked in the evidence).

CAWG/C2PA: `notAllowed` and `constrained` (constraint_info or
constraints_info) reserve; `*.ai_generative_training`, `*.ai_training` and
`*.data_mining` bind `ai-train`, `*.ai_inference` and `*.data_mining` bind
`ai-input`. Manifest stores are read, and their signatures validated, by the
C2PA SDK (signals/c2pa_store.py: which manifest speaks, what the signature
state means); our own JUMBF scan is kept only where the SDK cannot read, and
its findings say "signature not checked". Remote manifests
(`Link: rel="c2pa-manifest"`) are recorded, not fetched.
"""

from __future__ import annotations

import functools
import html
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import cbor2
from defusedxml import ElementTree

from proxy.evidence import Document, Finding, Says
from proxy.signals import c2pa_store, htmlhead, pdfmeta, pdfstreams
from proxy.sniff import contains

NAME = "media-metadata"
PLUS_NS = "http://ns.useplus.org/ldf/xmp/1.0/"
TDM_NS = "http://www.w3.org/ns/tdmrep/"
DMI_PREFIX = "http://ns.useplus.org/ldf/vocab/"
_MAX_INFLATE = 8 * 1024 * 1024  # per stream: a zip bomb stops here
# Packets are cut out by finding an opening, then its closing once (never a lazy `.*?` per
# opening: a body of openings without closings made that quadratic, minutes for 240 KB).
# Any namespace prefix (XML names it freely; `<X:xmpmeta>` is as good as `<x:xmpmeta>`).
_XMP_OPEN = re.compile(rb"<([A-Za-z_][\w.-]{0,31}:)?xmpmeta[\s>]")
_RDF_OPEN = re.compile(rb"<([A-Za-z_][\w.-]{0,31}:)?RDF[\s>]")
_RAW_DMI = re.compile(rb"ns\.useplus\.org/ldf/vocab/(DMI-PROHIBITED[A-Z-]*)")
_XMP_KEYWORD = b"XML:com.adobe.xmp\x00"
_XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\x00"
_WIDE_XMP = (("xmpmeta".encode("utf-16-le"), "utf-16-le"), ("xmpmeta".encode("utf-16-be"), "utf-16-be"))
C2PA_LABELS = (b"cawg.training-mining", b"c2pa.training-mining")

# value -> purposes it reserves (signals.md §10.1)
DMI_RESERVES = {
    "DMI-PROHIBITED": ("ai-train", "ai-input", "search"),
    "DMI-PROHIBITED-AIMLTRAINING": ("ai-train",),
    "DMI-PROHIBITED-GENAIMLTRAINING": ("ai-train",),
    "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING": ("ai-train", "ai-input"),
    "DMI-PROHIBITED-SEECONSTRAINT": ("ai-train", "ai-input", "search"),
    "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR": ("ai-train", "ai-input", "search"),
    "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR": ("ai-train", "ai-input", "search"),
    "DMI-ALLOWED": (),
    "DMI-UNSPECIFIED": (),
}
DMI_LABELS = {
    "prohibited": "DMI-PROHIBITED",
    "prohibited for ai/ml training": "DMI-PROHIBITED-AIMLTRAINING",
    "prohibited for generative ai/ml training": "DMI-PROHIBITED-GENAIMLTRAINING",
    "prohibited except for search engine indexing": "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
    "allowed": "DMI-ALLOWED",
    "unspecified - no prohibition defined": "DMI-UNSPECIFIED",
}
CAWG_RESERVES = {
    "ai_generative_training": ("ai-train",),
    "ai_training": ("ai-train",),
    "data_mining": ("ai-train", "ai-input"),
    "ai_inference": ("ai-input",),
}
_RESERVING_USE = ("notallowed", "constrained")


# -- XMP ---------------------------------------------------------------------


def _jpeg_segments(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of a JPEG's segments up to the image data."""
    if not body.startswith(b"\xff\xd8"):
        return
    pos = 2
    while pos + 4 <= len(body):
        if body[pos] != 0xFF:
            return
        marker = body[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: metadata is before this
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", body[pos + 2 : pos + 4])
        yield marker, body[pos + 4 : pos + 2 + length]
        pos += 2 + length


def _png_chunks(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    if not body.startswith(b"\x89PNG\r\n\x1a\n"):
        return
    pos = 8
    while pos + 8 <= len(body):
        (length,) = struct.unpack(">I", body[pos : pos + 4])
        kind = body[pos + 4 : pos + 8]
        yield kind, body[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _inflate(data: bytes) -> bytes | None:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, _MAX_INFLATE)
    except zlib.error:
        return None
    return out


def _delimited(data: bytes, opening: re.Pattern[bytes], local: bytes) -> list[bytes]:
    """Every `opening`...`</prefix:local>` span of `data`, in one pass (none past an unclosed
    opening); of several openings before one closing, the last (a decoy opening in text before
    the real packet must not swallow it)."""
    out: list[bytes] = []
    pos = 0
    while (m := opening.search(data, pos)) is not None:
        closing = b"</" + (m.group(1) or b"") + local + b">"
        end = data.find(closing, m.end())
        if end < 0:
            break
        last = m
        for later in opening.finditer(data, m.end(), end):
            if later.group(1) == m.group(1):
                last = later
        out.append(data[last.start() : end + len(closing)])
        pos = end + len(closing)
    return out


def _packets_in(data: bytes) -> list[bytes]:
    return _delimited(data, _XMP_OPEN, b"xmpmeta") or _delimited(data, _RDF_OPEN, b"RDF")


def _png_xmp(kind: bytes, data: bytes) -> bytes | None:
    """The XMP text of a PNG iTXt, zTXt or tEXt chunk with Adobe's keyword, inflated if it is compressed."""
    if not data.startswith(_XMP_KEYWORD):
        return None
    rest = data[len(_XMP_KEYWORD) :]
    if kind == b"tEXt":
        return rest
    if kind == b"zTXt":  # compression method, then zlib data
        return _inflate(rest[1:]) or b""
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text. Readers
    # (Pillow, exiftool) take any non-zero flag as compressed.
    parts = rest[2:].split(b"\x00", 2)
    text = parts[2] if len(parts) == 3 else b""
    return (_inflate(text) or b"") if rest[:1] not in (b"\x00", b"") else text


def xmp_packets(body: bytes, unread: list[str] | None = None) -> list[bytes]:
    """Every XMP packet found in `body`, decompressed where the container compresses it.

    `unread` gets a reason for each place that could not be read in full (a metadata
    stream that inflates past the limit): the caller withholds rather than guess.
    """
    packets: list[bytes] = []
    extended: dict[bytes, list[tuple[int, bytes]]] = {}
    for marker, payload in _jpeg_segments(body):
        if marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            packets.append(payload[29:])
        elif marker == 0xE1 and payload.startswith(_XMP_EXTENSION) and len(payload) >= 75:
            # Extended XMP: a GUID, the full length, this piece's offset, then the piece.
            head = len(_XMP_EXTENSION)
            guid, (offset,) = payload[head : head + 32], struct.unpack(">I", payload[head + 36 : head + 40])
            extended.setdefault(guid, []).append((offset, payload[head + 40 :]))
    packets += [b"".join(piece for _, piece in sorted(pieces)) for pieces in extended.values()]
    for kind, data in _png_chunks(body):
        if kind in (b"iTXt", b"zTXt", b"tEXt"):
            text = _png_xmp(kind, data)
            if text is not None:
                packets.append(text)
    if pdfmeta.pdf_header(body) is not False or b"%PDF-" in body:
        packets += _pdf_packets(body, unread if unread is not None else [])
    # Packets anywhere else too (a PDF's uncompressed /Metadata beside a compressed decoy).
    packets += [p for p in _packets_in(body) if p not in packets]
    if not packets:
        # UTF-16 XMP in a container we do not take apart (WebP, TIFF): read it narrowed.
        for wide, codec in _WIDE_XMP:
            at = body.find(wide)
            if at >= 0:
                for start in (at % 2, 1 - at % 2):
                    narrowed = body[start:].decode(codec, "replace").encode("utf-8", "replace")
                    packets += _packets_in(narrowed)
    return packets


def _pdf_packets(body: bytes, unread: list[str]) -> list[bytes]:
    """XMP of a PDF: the document's, read by a PDF parser (signals/pdfmeta.py), and whatever packets
    our stream scan (signals/pdfstreams.py) finds in its other streams (images, say).

    The parser decides what is unread: a PDF it cannot parse, decrypt or decode the metadata of
    is withheld. The scan only adds packets (a best effort over the parts the parser is not
    asked about), and reads nothing of an encrypted file: its streams are ciphertext, which a
    decoy packet can be made of.
    """
    packets: list[bytes] = []
    header = pdfmeta.pdf_header(body)
    encrypted = None
    if header is not False:
        document = pdfmeta.document_metadata(body)
        encrypted = document.encrypted
        if document.xmp is not None:
            packets.append(document.xmp)
        if document.problem is not None and header:
            unread.append(f"a PDF: {document.problem}")
    if encrypted or (encrypted is None and pdfstreams.encrypted(body)):
        return packets
    # The scan also speaks for metadata streams it cannot decode when the parser's reading is a
    # guess: a cross-reference it had to rebuild may have taken another copy of the metadata.
    sound = header is not False and pdfmeta.xref_sound(body)
    for stream in pdfstreams.streams(body):
        if stream.data:
            packets += _packets_in(stream.data)
        if stream.metadata and stream.problem is not None and not sound:
            unread.append(
                f"a PDF metadata stream (the file's cross-reference had to be rebuilt): {stream.problem}"
            )
    return packets


def has_xmp(body: bytes) -> bool:
    """True if `body` holds an XMP packet or bare XMP metadata anywhere (a C-speed search).

    A packet starts with "<": a body without one (memchr) needs only the second search.
    """
    return (b"<" in body and b"<?xpacket" in body) or b"adobe:ns:meta" in body


@functools.lru_cache(maxsize=16)
def _xmp_root(packet: bytes) -> Any:
    """The parsed packet, or None. Cached: one body's packets are asked for several properties."""
    try:
        return ElementTree.fromstring(packet)
    except Exception:
        return None


def _xmp_values(packet: bytes, namespace: str, local: str) -> list[str] | None:
    """Values of property `local` in `namespace` (element text, attribute, or rdf:resource)."""
    root = _xmp_root(packet)
    if root is None:
        return None
    key = f"{{{namespace}}}{local}"
    out: list[str] = []
    for el in root.iter():
        if el.tag == key:
            text = (el.text or "").strip()
            resource = el.get("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource")
            if resource:
                out.append(resource.strip())
            elif text:
                out.append(text)
            else:  # rdf:Bag/Seq/Alt of li
                out.extend((li.text or "").strip() for li in el.iter() if (li.text or "").strip())
        if key in el.attrib:
            out.append(el.attrib[key].strip())
    return out


def _dmi_code(value: str) -> str | None:
    if value.startswith(DMI_PREFIX):
        return value[len(DMI_PREFIX) :]
    if value.upper().startswith("DMI-"):
        return value.upper()
    return DMI_LABELS.get(value.strip().lower().replace("–", "-"))


def datamining_findings(
    packets: list[bytes], body: bytes, purpose: str, document: Document | None
) -> list[Finding]:
    """PLUS Data Mining findings (or the raw-bytes fallback when XMP will not parse)."""
    findings: list[Finding] = []
    parsed_any = False
    for packet in packets:
        values = _xmp_values(packet, PLUS_NS, "DataMining")
        if values is None:
            continue
        parsed_any = True
        for value in values:
            code = _dmi_code(value)
            if code is None:
                continue
            reserved = purpose in DMI_RESERVES.get(code, ("ai-train", "ai-input", "search"))
            says = Says.DISALLOW if reserved else (Says.ALLOW if code == "DMI-ALLOWED" else Says.UNKNOWN)
            findings.append(Finding(NAME, says, f"XMP plus:DataMining {code}", document))
    if not parsed_any:
        m = _RAW_DMI.search(body)
        if m is not None:
            code = m.group(1).decode()
            reserved = purpose in DMI_RESERVES.get(code, ("ai-train", "ai-input", "search"))
            findings.append(Finding(
                NAME, Says.DISALLOW if reserved else Says.UNKNOWN,
                f"XMP plus:DataMining {code} (found in raw bytes; the XMP did not parse)", document,
            ))  # fmt: skip
    return findings


def tdm_from_xmp(packets: list[bytes]) -> tuple[list[str], list[str]]:
    """(tdm:reservation values, tdm:policy values) of PDF/EPUB XMP (TDMRep §4.4)."""
    reservations: list[str] = []
    policies: list[str] = []
    for packet in packets:
        reservations += _xmp_values(packet, TDM_NS, "reservation") or []
        policies += _xmp_values(packet, TDM_NS, "policy") or []
    return reservations, policies


def epub_tdm(body: bytes) -> tuple[list[str], list[str], str]:
    """(tdm:reservation values, tdm:policy values, why it was not read in full or "") of an
    EPUB's package documents (TDMRep §4.4).

    EPUB 3 writes `<meta property="tdm:reservation">1</meta>`, EPUB 2
    `<meta name="tdm:reservation" content="1"/>`. The package documents are those
    `META-INF/container.xml` names and any `.opf`; each is read as XML (CDATA,
    character references, any prefix on `meta`), or, if it is not well-formed,
    by its tags. A zip that is there but cannot be read in full (a package past the
    size limit, a bad checksum) is said so: readers that do not check may read it.
    """
    # An EPUB names its container (or a package) in the zip's uncompressed headers; a zip may
    # start after other bytes (readers find it from its end record).
    named = b"META-INF/container.xml" in body or b".opf" in body
    if not named or b"PK\x05\x06" not in body[-65_600:]:
        return [], [], ""
    found: dict[str, list[str]] = {"reservation": [], "policy": []}
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            infos = {info.filename: info for info in archive.infolist()}

            def read(name: str) -> bytes | None:
                info = infos.get(name)
                if info is None:
                    return None
                if info.file_size > _MAX_INFLATE:
                    raise ValueError(f"{name} is larger than {_MAX_INFLATE} bytes")
                with archive.open(info) as f:
                    return f.read(_MAX_INFLATE)

            container = read("META-INF/container.xml") or b""
            rootfiles = [m.group(1).decode("utf-8", "replace") for m in _ROOTFILE.finditer(container)][:16]
            opfs = list(dict.fromkeys([*rootfiles, *(n for n in infos if n.lower().endswith(".opf"))]))
            if len(opfs) > 16:
                return [], [], f"{len(opfs)} package documents"
            for name in opfs:
                opf = read(name)
                if opf is not None:
                    for kind, values in _opf_tdm(opf).items():
                        found[kind] += values
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as e:
        return [], [], f"the archive cannot be read: {str(e)[:200]}"
    return [v.strip() for v in found["reservation"]], [v.strip() for v in found["policy"]], ""


_ROOTFILE = re.compile(rb"""full-path\s*=\s*["']([^"']+)["']""")


def _opf_tdm(opf: bytes) -> dict[str, list[str]]:
    """The tdm:reservation and tdm:policy statements of one package document."""
    out: dict[str, list[str]] = {"reservation": [], "policy": []}
    try:
        root = ElementTree.fromstring(opf)  # defusedxml: no entity declarations, no external ones
    except Exception:  # not well-formed, or entities refused: read by its tags below
        root = None
    if root is not None:
        for el in root.iter():
            if not isinstance(el.tag, str) or el.tag.rsplit("}", 1)[-1] != "meta":
                continue
            kind = _tdm_kind(el.get("property", "")) or _tdm_kind(el.get("name", ""))
            if kind is not None:
                value = el.get("content") if el.get("property") is None else "".join(el.itertext())
                out[kind].append(value or "")
        return out
    # Not well-formed: its meta tags as an HTML reader finds them (one pass), content or text.
    text = opf.decode("utf-8", "replace")
    for m in _OPF_META.finditer(text):
        attrs = dict(htmlhead.attributes(m.group(1)))
        kind = _tdm_kind(attrs.get("property", "")) or _tdm_kind(attrs.get("name", ""))
        if kind is not None:
            lt = text.find("<", m.end())
            after = text[m.end() : lt if lt >= 0 else len(text)]
            out[kind].append(attrs.get("content") or html.unescape(after))
    return out


def _tdm_kind(value: str) -> str | None:
    """'reservation' or 'policy' for `tdm:reservation` / `tdm:policy` (any case), else None."""
    prefix, _, local = value.strip().lower().rpartition(":")
    return local if prefix == "tdm" and local in ("reservation", "policy") else None


_OPF_META = re.compile(htmlhead.TAG_PATTERN.format(names=r"(?:[A-Za-z_][\w.-]{0,63}:)?meta"), re.IGNORECASE)


# -- C2PA / CAWG -------------------------------------------------------------


def _jumbf_from_jpeg(body: bytes) -> bytes:
    """The JUMBF data of a JPEG's APP11 segments, reassembled by box instance and sequence."""
    pieces: dict[int, list[tuple[int, bytes]]] = {}
    for marker, payload in _jpeg_segments(body):
        if marker == 0xEB and payload[:2] == b"JP" and len(payload) >= 16:
            instance, seq = struct.unpack(">HI", payload[2:8])
            # the first segment keeps the box header; later ones repeat it (8 bytes) before data
            data = payload[8:] if seq == 1 else payload[16:]
            pieces.setdefault(instance, []).append((seq, data))
    return b"".join(d for inst in sorted(pieces) for _, d in sorted(pieces[inst]))


def _box_at(data: bytes, pos: int) -> tuple[int, bytes, int] | None:
    """(size, type, header length) of the box starting at `pos`."""
    if pos < 0 or pos + 8 > len(data):
        return None
    size, kind = struct.unpack(">I4s", data[pos : pos + 8])
    header = 8
    if size == 1 and pos + 16 <= len(data):
        (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
        header = 16
    elif size == 0:
        size = len(data) - pos
    if size < header:
        return None
    return size, kind, header


def c2pa_assertions(body: bytes) -> list[tuple[str, Any]]:
    """(label, decoded content) of every training-mining assertion box in `body`."""
    if not any(label in body for label in C2PA_LABELS):
        return []  # the cheap pre-filter signals.md §10.2 suggests
    data = _jumbf_from_jpeg(body) or body
    out: list[tuple[str, Any]] = []
    for label in C2PA_LABELS:
        start = 0
        while (at := data.find(b"jumd", start)) != -1:
            start = at + 4
            desc = _box_at(data, at - 4)
            if desc is None:
                continue
            size, _, header = desc
            payload = data[at - 4 + header : at - 4 + size]
            # description box: type UUID (16), toggles (1), label\0 when toggles has bit 0x02
            if len(payload) < 18 or not payload[16] & 0x02:
                continue
            name = payload[17:].split(b"\x00", 1)[0]
            if name != label:
                continue
            content = _box_at(data, at - 4 + size)
            if content is None:
                continue
            csize, ckind, cheader = content
            cpos = at - 4 + size
            raw = data[cpos + cheader : cpos + csize]
            try:
                decoded = cbor2.loads(raw) if ckind == b"cbor" else json.loads(raw)
            except Exception:
                decoded = None
            out.append((label.decode(), decoded))
    return out


def _reserving(
    entries: Iterable[tuple[str, str, str]], purpose: str, *, unknown_reserves: bool = False
) -> list[str]:
    """The `key: use` of the training-mining entries that reserve `purpose`.

    `unknown_reserves`: a `use` that is none of CAWG's three values, or an entry
    of a kind CAWG does not name, counts as a reservation for every purpose (in a
    manifest whose signature fails, it may be a damaged `notAllowed`).
    """
    out = []
    for _, key, use in entries:
        kind = key.split(".", 1)[-1]
        value = use.lower()
        unknown = value not in (*_RESERVING_USE, "allowed") or kind not in CAWG_RESERVES
        binds = purpose in CAWG_RESERVES.get(kind, ()) or (unknown_reserves and kind not in CAWG_RESERVES)
        reserves = value in _RESERVING_USE or (unknown_reserves and value != "allowed")
        if reserves and binds:
            out.append(f"{key}: {use}" + (" (not a CAWG value)" if unknown else ""))
    return out


def c2pa_findings(
    body: bytes, purpose: str, document: Document | None, *, ingredients: str = "inherit",
    invalid_signature: str = "bind", declared: Iterable[str] = (),
) -> list[Finding]:  # fmt: skip
    """Findings of C2PA/CAWG training-and-data-mining assertions (signals/c2pa_store.py).

    Read by the C2PA SDK, which validates the signatures; our own scan only
    where the SDK cannot read the body.
    """
    if not contains(body, b"c2pa", 1):
        return []  # every manifest store carries the label; most bodies have none
    mime = c2pa_store.format_of(body, declared)
    if mime is None:
        return _scanned_findings(body, purpose, document, "the C2PA SDK does not read this format")
    try:
        store = c2pa_store.read(body, mime)
    except c2pa_store.Unreadable as e:
        # A format the SDK reads, damaged: what our scan reads of it is not validated either.
        why = f"the C2PA SDK could not read it ({e})"
        found = _scanned_findings(body, purpose, document, why, damaged=True)
        return found + _unread_assertion(found, body, document, invalid_signature, why)
    if store is None:
        # No manifest where the format keeps one; a store still in the bytes (a damaged
        # container's directory, say) speaks for the file all the same.
        why = "the C2PA SDK found no manifest where this format keeps it"
        return _scanned_findings(body, purpose, document, why)
    found = _store_findings(store, purpose, document, ingredients, invalid_signature)
    if store.state == "invalid" and not any(f.says is Says.DISALLOW for f in found):
        # A broken manifest may hide its own assertion from the SDK: read the raw bytes too.
        found += _raw_reservation(body, purpose, document, invalid_signature)
        why = f"its signature is invalid ({', '.join(store.codes)[:200]})"
        found += _unread_assertion(found, body, document, invalid_signature, why)
    return found


def _unread_assertion(
    found: list[Finding], body: bytes, document: Document | None, invalid_signature: str, why: str
) -> list[Finding]:
    """A training-mining label is in the bytes of a store nothing could validate, and no assertion
    could be read from them: withhold rather than guess what it said (unless invalid signatures are
    ignored by the policy)."""
    if found or not any(label in body for label in C2PA_LABELS):
        return []
    detail = (
        f"a training-mining assertion in a manifest store that could not be validated: {why}; "
        "withheld rather than guessed"
    )
    says = Says.UNKNOWN if invalid_signature == "ignore" else Says.DISALLOW
    return [Finding(NAME, says, detail, document)]


def _store_findings(
    store: c2pa_store.Store, purpose: str, document: Document | None, ingredients: str, invalid_signature: str
) -> list[Finding]:
    findings: list[Finding] = []
    signature = f"signature {store.state}" + (
        f": {', '.join(c for c in store.codes if c != 'signingCredential.untrusted')}"
        if store.state == "invalid" else ""
    )  # fmt: skip
    for manifest in store.manifests:
        if not manifest.entries:
            continue
        whose = "active manifest" if manifest.active else f"ingredient manifest {manifest.label}"
        reserving = _reserving(manifest.entries, purpose, unknown_reserves=store.state == "invalid")
        labels = ", ".join(sorted({label for label, _, _ in manifest.entries}))
        if not reserving:
            detail = f"{labels} ({whose}; {signature}): nothing reserved for {purpose}"
            findings.append(Finding(NAME, Says.UNKNOWN, detail, document))
            continue
        says = Says.DISALLOW
        notes: list[str] = []
        if not manifest.active and ingredients == "ignore":
            says, notes = Says.UNKNOWN, [*notes, "ingredients ignored (c2pa_ingredients: ignore)"]
        if store.state == "invalid" and invalid_signature == "ignore":
            says, notes = Says.UNKNOWN, [*notes, "invalid signature ignored (c2pa_invalid_signature: ignore)"]
        detail = f"{labels}: {', '.join(reserving)} ({whose}; {signature})" + "".join(f"; {n}" for n in notes)
        findings.append(Finding(NAME, says, detail, document))
    return findings


_RAW_RESERVING = re.compile(
    rb"(ai_generative_training|ai_training|data_mining|ai_inference).{0,24}?(notAllowed|constrained)",
    re.DOTALL,
)


def _raw_reservation(
    body: bytes, purpose: str, document: Document | None, invalid_signature: str
) -> list[Finding]:
    """A reserving training-mining entry found in the raw bytes of a manifest the SDK calls invalid."""
    if not any(label in body for label in C2PA_LABELS):
        return []
    for m in _RAW_RESERVING.finditer(body):
        kind = m.group(1).decode()
        if purpose in CAWG_RESERVES.get(kind, ()):
            detail = (f"training-mining: {kind}: {m.group(2).decode()} in the raw bytes of a manifest whose "
                      "signature is invalid and whose assertion the C2PA SDK could not read")  # fmt: skip
            if invalid_signature == "ignore":
                return [
                    Finding(
                        NAME, Says.UNKNOWN, detail + "; ignored (c2pa_invalid_signature: ignore)", document
                    )
                ]
            return [Finding(NAME, Says.DISALLOW, detail, document)]
    return []


def _scanned_findings(
    body: bytes, purpose: str, document: Document | None, why: str, *, damaged: bool = False
) -> list[Finding]:
    """Our own reading of the training-mining assertions in `body`. `damaged`: the SDK knows the
    format and could not read it, so an entry or value we do not know may be a damaged
    `notAllowed` and counts as a reservation."""
    findings: list[Finding] = []
    for label, content in c2pa_assertions(body):
        if not isinstance(content, dict) or not isinstance(content.get("entries"), dict):
            # There is a training-mining assertion, and nothing can read it: withhold rather than guess.
            detail = (
                f"{label}: assertion unreadable (signature not checked: {why}); withheld rather than guessed"
            )
            findings.append(Finding(NAME, Says.DISALLOW, detail, document))
            continue
        entries = [
            (label, str(key), str(entry.get("use", "")) if isinstance(entry, dict) else "")
            for key, entry in content["entries"].items()
        ]
        reserving = _reserving(entries, purpose, unknown_reserves=damaged)
        if reserving:
            detail = f"{label}: {', '.join(reserving)} (signature not checked: {why})"
            findings.append(Finding(NAME, Says.DISALLOW, detail, document))
        else:
            findings.append(Finding(NAME, Says.UNKNOWN, f"{label}: nothing reserved for {purpose}", document))
    return findings


def findings_from_body(
    body: bytes, purpose: str, document: Document | None, *, ingredients: str = "inherit",
    invalid_signature: str = "bind", declared: Iterable[str] = (),
) -> tuple[list[Finding], list[bytes]]:  # fmt: skip
    """Media-metadata findings of a body, and its XMP packets (for TDMRep's PDF channel)."""
    unread: list[str] = []
    packets = xmp_packets(body, unread)
    manifests = c2pa_findings(
        body,
        purpose,
        document,
        ingredients=ingredients,
        invalid_signature=invalid_signature,
        declared=declared,
    )
    why = "the file's metadata could not be read in full ({}); withheld rather than guessed"
    withheld = [Finding(NAME, Says.DISALLOW, why.format(reason), document) for reason in unread]
    return datamining_findings(packets, body, purpose, document) + manifests + withheld, packets
