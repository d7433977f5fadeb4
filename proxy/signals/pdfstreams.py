"""The decoded content of a PDF's streams, for the XMP packets in them (signals.md §4.4, §10).

A PDF keeps its document metadata, and each image's, in streams that may be
encoded by a chain of filters (ISO 32000-1 §7.4): `/Filter [/ASCII85Decode
/FlateDecode]`, abbreviated (`/A85 /Fl`), with names spelled in `#xx` escapes
(`/Fl#61teDecode`), or named by an indirect reference (`/Filter 7 0 R`).
Readers undo all of these, so we do too, each step bounded in output.

What we cannot undo in a metadata stream (an image codec, a predictor, an
unknown filter, encryption) is reported, not skipped: the caller withholds the
document rather than guess what its metadata says.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_DECODED = 8 * 1024 * 1024  # per stream and per step: a bomb stops here
MAX_OTHER_STREAMS = 64  # streams not marked as metadata that are decoded (XMP of images, say)
MAX_TOTAL = 4 * MAX_DECODED  # decoded bytes per file, all streams together
SLOW_INPUT = 1024 * 1024  # LZW, RunLength, ASCII85 are undone in Python: this much input per file
_SLOW = {b"LZWDecode", b"RunLengthDecode", b"ASCII85Decode"}
MAX_SCANNED = 4096  # `stream` keywords looked at per file: the scan is a best effort past the parser
MAX_OBJECTS = 100_000  # objects indexed to resolve an indirect /Filter
MAX_FILTERS = 8
_BLANKS = b" \t\r\n\f\x00"
_DICT_BACK = 4096  # how far before `stream` its dictionary is looked for

# Spaces before the end of line are not allowed, but readers (pypdf) skip them.
_STREAM = re.compile(rb"(?<![A-Za-z])stream[ \t]*(?:\r\n|\n|\r)")
_ENDSTREAM = re.compile(rb"(?:\r\n|\n|\r)?endstream")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[^\s/\[\]<>()]+|\d+\s+\d+\s+R)")
_NAMES = re.compile(rb"/([^\s/\[\]<>()]+)")
_REFERENCE = re.compile(rb"(\d+)\s+(\d+)\s+R")
_OBJECT = re.compile(rb"(?<!\d)(\d+)\s+(\d+)\s+obj\b")
_DIRECT_FILTER = re.compile(rb"\s*(\[[^\]]*\]|/[^\s/\[\]<>()]+)")
# An image's dictionary may name its own metadata (`/Metadata 9 0 R`): that is not this stream.
_METADATA = re.compile(rb"/Type\s*/Metadata(?![^\s/\[\]<>()])|/Subtype\s*/XML(?![^\s/\[\]<>()])")


def spelled(name: str) -> bytes:
    """A pattern for a PDF name however its letters are written: `/Metadata` or `/M#65tadata`."""
    return b"/" + b"".join(b"(?:%s|#%X|#%x)" % (re.escape(c.encode()), ord(c), ord(c)) for c in name)


_METADATA_REF = re.compile(spelled("Metadata") + rb"\s*(\d+)\s+(\d+)\s+R")
_ENCRYPT = re.compile(spelled("Encrypt") + rb"(?![A-Za-z#])")
_NUMBERED = re.compile(rb"(?<!\d)(\d+)\s+(\d+)\s+$")  # before an `obj`: its number and generation
_PREDICTOR = re.compile(rb"/Predictor\s+(\d+)")
_EARLY = re.compile(rb"/EarlyChange\s+0\b")
_ABBREVIATIONS = {
    b"AHx": b"ASCIIHexDecode",
    b"A85": b"ASCII85Decode",
    b"Fl": b"FlateDecode",
    b"LZW": b"LZWDecode",
    b"RL": b"RunLengthDecode",
}


@dataclass(frozen=True)
class Stream:
    """One stream of a PDF: its dictionary, as written, and its content decoded."""

    metadata: bool  # its dictionary says /Type /Metadata or /Subtype /XML, or a /Metadata entry names it
    data: bytes | None  # decoded; None if it could not be
    problem: str | None = None  # why it could not be decoded, or was cut at MAX_DECODED


class Undecodable(Exception):
    """A filter we cannot undo, or data that is not what its filter says."""


def names(raw: bytes) -> bytes:
    """PDF text with its `#xx` name escapes undone (`/Fl#61teDecode` is `/FlateDecode`)."""
    return _NAME_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw) if b"#" in raw else raw


def encrypted(body: bytes) -> bool:
    """Whether the file names an /Encrypt dictionary (in its trailer, or an XRef stream's
    dictionary, which is never compressed)."""
    return _ENCRYPT.search(body) is not None


def streams(body: bytes) -> Iterator[Stream]:
    """Every stream of `body` marked as metadata, and the first MAX_OTHER_STREAMS others that have
    filters, decoded. Streams with no filter are plain text already (the caller scans the body).

    Work is bounded by the body: one pass over it, LZW and RunLength (byte loops) only on
    inputs up to SLOW_INPUT, and MAX_TOTAL decoded bytes in all.
    """
    others = 0
    pos = 0
    budget = _Budget()
    scanned = 0
    objects: dict[bytes, int] | None = None  # "N G" -> where `N G obj` is; built at the first reference
    # Streams that a /Metadata entry points at (the catalog's, an image's), whatever their own
    # dictionary says: a reader takes the catalog's /Metadata without looking at its /Type.
    pointed = {b"%d %d" % (int(r[1]), int(r[2])) for r in _METADATA_REF.finditer(body)}
    while (m := _STREAM.search(body, pos)) is not None:
        scanned += 1
        if scanned > MAX_SCANNED:
            return
        start = max(0, m.start() - _DICT_BACK)
        opened = body.rfind(b"obj", start, m.start())
        dictionary = names(body[opened if opened >= 0 else start : m.start()])
        end = _ENDSTREAM.search(body, m.end())
        data = body[m.end() : end.start() if end else len(body)]
        pos = end.end() if end else len(body)
        number = _NUMBERED.search(body, max(0, opened - 48), opened) if opened >= 0 else None
        metadata = _METADATA.search(dictionary) is not None or (
            number is not None and b"%d %d" % (int(number[1]), int(number[2])) in pointed
        )
        filter_of = _FILTER.search(dictionary)
        value = filter_of.group(1) if filter_of else b""
        if (ref := _REFERENCE.fullmatch(value)) is not None:
            if objects is None:
                found = itertools.islice(_OBJECT.finditer(body), MAX_OBJECTS)
                objects = {b"%d %d" % (int(o[1]), int(o[2])): o.end() for o in found}
            at = objects.get(b"%d %d" % (int(ref.group(1)), int(ref.group(2))))
            target = _DIRECT_FILTER.match(body, at) if at is not None else None
            value = names(target.group(1)) if target else b""
            if target is None and metadata:
                yield Stream(metadata, None, "a stream whose /Filter names an object that is not a filter")
                continue
        filters = [_ABBREVIATIONS.get(n, n) for n in _NAMES.findall(value)]
        if not metadata:
            if not filters:
                continue
            others += 1
            if others > MAX_OTHER_STREAMS:
                continue
        try:
            decoded, cut = _decode(data, filters, dictionary, budget)
        except Undecodable as e:
            yield Stream(metadata, None, str(e))
            continue
        yield Stream(metadata, decoded, f"a stream that decodes past {MAX_DECODED} bytes" if cut else None)


@dataclass
class _Budget:
    """What one file may still cost: decoded bytes in all, and input to the filters undone byte
    by byte in Python (LZW, RunLength, ASCII85), charged at every step of every chain."""

    total: int = MAX_TOTAL
    slow: int = SLOW_INPUT

    def charge(self, name: bytes, data: bytes) -> None:
        if name in _SLOW:
            self.slow -= len(data)
        if self.total < 0 or self.slow < 0:
            raise Undecodable("a stream past what is decoded of one file")


def _decode(data: bytes, filters: list[bytes], dictionary: bytes, budget: _Budget) -> tuple[bytes, bool]:
    """`data` with every filter undone in order; and whether a step was cut at MAX_DECODED."""
    predictor = _PREDICTOR.search(dictionary)
    if (
        predictor is not None
        and int(predictor.group(1)) > 1
        and {b"FlateDecode", b"LZWDecode"} & set(filters)
    ):
        # PNG and TIFF predictors rearrange the bytes row by row; not undone here.
        raise Undecodable(f"a stream with /Predictor {int(predictor.group(1))}")
    cut = False
    if len(filters) > MAX_FILTERS:
        raise Undecodable(f"a stream under more than {MAX_FILTERS} filters")
    for name in filters:
        budget.charge(name, data)
        if name == b"FlateDecode":
            data, over = _inflate(data)
        elif name == b"ASCIIHexDecode":
            data, over = _hex(data), False
        elif name == b"ASCII85Decode":
            data, over = _a85(data), False
        elif name == b"LZWDecode":
            data, over = _lzw(data, early=_EARLY.search(dictionary) is None)
        elif name == b"RunLengthDecode":
            data, over = _run_length(data)
        elif name == b"Crypt":
            raise Undecodable("a stream under the Crypt filter (encrypted)")
        else:
            raise Undecodable(f"a stream under the /{name.decode('latin-1')} filter")
        cut = cut or over
        budget.total -= len(data)
    return data, cut


def _inflate(data: bytes) -> tuple[bytes, bool]:
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):  # zlib-wrapped, or raw deflate (readers take both)
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, MAX_DECODED)
        except zlib.error:
            continue
        return out, bool(d.unconsumed_tail)
    raise Undecodable("a FlateDecode stream that is not deflate data")


def _hex(data: bytes) -> bytes:
    text = data.split(b">", 1)[0].translate(None, _BLANKS)
    if len(text) % 2:
        text += b"0"  # ISO 32000-1 §7.4.2: a missing last digit is 0
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError) as e:
        raise Undecodable("an ASCIIHexDecode stream that is not hex") from e


def _a85(data: bytes) -> bytes:
    text = data.split(b"~>", 1)[0].translate(None, _BLANKS)
    if text.startswith(b"<~"):
        text = text[2:]
    try:
        return base64.a85decode(text)
    except ValueError as e:
        raise Undecodable("an ASCII85Decode stream that is not ASCII85") from e


def _lzw(data: bytes, early: bool) -> tuple[bytes, bool]:
    """LZW as PDF writes it (ISO 32000-1 §7.4.4): codes of 9 to 12 bits, 256 clears, 257 ends."""
    out = bytearray()
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    width, previous = 9, b""
    bits = nbits = 0
    shift = 1 if early else 0
    for byte in data:
        bits, nbits = (bits << 8) | byte, nbits + 8
        while nbits >= width:
            nbits -= width
            code = (bits >> nbits) & ((1 << width) - 1)
            bits &= (1 << nbits) - 1  # only the bits not yet used: an int that grows is quadratic
            if code == 256:
                table, width, previous = table[:258], 9, b""
                continue
            if code == 257:
                return bytes(out), False
            if code < len(table):
                entry = table[code]
                if previous:
                    table.append(previous + entry[:1])
            elif code == len(table) and previous:
                entry = previous + previous[:1]
                table.append(entry)
            else:
                raise Undecodable("an LZWDecode stream with a code out of its table")
            out += entry
            if len(out) > MAX_DECODED:
                return bytes(out[:MAX_DECODED]), True
            previous = entry
            if len(table) + shift >= (1 << width) and width < 12:
                width += 1
    return bytes(out), False


def _run_length(data: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    i = 0
    while i < len(data):
        n = data[i]
        if n == 128:
            break
        if n < 128:
            out += data[i + 1 : i + 2 + n]
            i += 2 + n
        else:
            out += data[i + 1 : i + 2] * (257 - n)
            i += 2
        if len(out) > MAX_DECODED:
            return bytes(out[:MAX_DECODED]), True
    return bytes(out), False
