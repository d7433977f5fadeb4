"""XMP in a PDF is read under every chain of filters a reader undoes (signals/pdfstreams.py); a
metadata stream we cannot undo withholds the file, one we can is read. Files are written by pypdf,
which also reads each back: what it finds there is what a reader of the file sees."""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable

import pytest
from pypdf._codecs._codecs import LzwCodec

from proxy.evidence import Says
from proxy.signals import media, pdfstreams
from tests import media_files as m

RESERVED = m.tdm_xmp("1")
MARK = b"<tdm:reservation>1</tdm:reservation>"


def _read(body: bytes) -> tuple[bool, list[str]]:
    """Whether our reader found the reservation in a packet, and why it withheld (if it did)."""
    findings, packets = media.findings_from_body(body, "ai-train", None)
    withheld = [f.detail for f in findings if f.says is Says.DISALLOW and "could not be read" in f.detail]
    return any(MARK in p for p in packets), withheld


def _rle(data: bytes) -> bytes:
    """RunLengthDecode's encoding, literal runs only (ISO 32000-1 §7.4.5)."""
    return (
        b"".join(bytes([len(c) - 1]) + c for c in (data[i : i + 128] for i in range(0, len(data), 128)))
        + b"\x80"
    )


@pytest.mark.parametrize(
    ("encoded", "filters"),
    [
        (base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"]),
        (base64.b16encode(RESERVED) + b">", ["/ASCIIHexDecode"]),
        (base64.b16encode(zlib.compress(RESERVED)).lower() + b">", ["/ASCIIHexDecode", "/FlateDecode"]),
        (LzwCodec().encode(RESERVED), ["/LZWDecode"]),
        (_rle(RESERVED), ["/RunLengthDecode"]),
        (zlib.compress(zlib.compress(RESERVED)), ["/FlateDecode", "/FlateDecode"]),
    ],
    ids=["a85+flate", "hex", "hex+flate", "lzw", "runlength", "flate+flate"],
)
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect-filter"])
def test_metadata_under_any_filter_chain_is_read(encoded: bytes, filters: list[str], indirect: bool) -> None:
    body = m.pdf_written(encoded, filters, indirect=indirect)
    assert MARK in m.pdf_metadata(body)  # pypdf reads the reservation
    assert _read(body) == (True, [])


def test_names_spelled_in_escapes_are_read() -> None:
    body = m.pdf_written(
        base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"]
    )
    escaped = body.replace(b"/FlateDecode", b"/Fl#61teDecode").replace(b"/Metadata", b"/M#65tadata")
    assert MARK in m.pdf_metadata(escaped)
    assert _read(escaped) == (True, [])


def test_abbreviated_filter_names_are_never_let_through() -> None:
    # The abbreviations are defined for inline images only: pypdf refuses them in a stream (so we
    # withhold); our stream scan, as readers that take them anywhere, reads the reservation.
    body = m.pdf_written(
        base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"]
    )
    found, withheld = _read(body.replace(b"/ASCII85Decode", b"/A85").replace(b"/FlateDecode", b"/Fl"))
    assert found and withheld


def test_predictors_and_encryption_are_undone_by_the_parser() -> None:
    # A PNG predictor (filter type 0 on each 8-byte row)
    rows = b"".join(b"\x00" + RESERVED[i : i + 8].ljust(8, b" ") for i in range(0, len(RESERVED), 8))
    predicted = m.pdf_written(zlib.compress(rows), ["/FlateDecode"], parms={"Predictor": 12, "Columns": 8})
    assert MARK in m.pdf_metadata(predicted)
    assert _read(predicted) == (True, [])
    # Encrypted, the metadata with it (an empty user password: any reader opens it)
    encrypted = m.pdf_written(zlib.compress(RESERVED), ["/FlateDecode"], encrypt=True)
    assert MARK in m.pdf_metadata(encrypted)
    assert _read(encrypted) == (True, [])


def test_a_pdf_the_parser_cannot_read_is_withheld() -> None:
    found, withheld = _read(
        b"%PDF-1.7\n1 0 obj << /Type /Metadata /Filter /FlateDecode >> stream\n" + b"\x00" * 1000
    )
    assert not found and "could not be parsed" in withheld[0]
    # one that cannot be opened and shows no sign of metadata (nor object streams to hide one in)
    assert _read(b"%PDF-1.7\n1 0 obj << /Filter /FlateDecode >> stream\n" + b"\x00" * 1000) == (False, [])
    # a password we do not have
    body = m.pdf_written(zlib.compress(RESERVED), ["/FlateDecode"], encrypt=True, password="secret")
    found, withheld = _read(body)
    assert not found and "needs a password" in withheld[0]


def test_an_image_that_names_its_metadata_is_not_a_metadata_stream() -> None:
    # A JPEG image stream whose dictionary says /Metadata N 0 R is an image, read or not: no false block.
    body = m.pdf_written(zlib.compress(m.tdm_xmp("0")), ["/FlateDecode"], image_metadata=True)
    assert b"/DCTDecode" in body and b"/Metadata" in body
    assert _read(body) == (False, [])


def test_a_bomb_under_a_filter_chain_is_bounded_and_withheld() -> None:
    bomb = base64.a85encode(zlib.compress(b" " * (64 * 1024 * 1024), 9), adobe=True)
    found, withheld = _read(m.pdf_written(bomb, ["/ASCII85Decode", "/FlateDecode"]))
    assert not found and withheld and "decodes past 8388608 bytes" in withheld[0]


def test_lzw_matches_an_independent_encoder_through_table_resets() -> None:
    import random

    data = random.Random(7).randbytes(20_000) + b"abcab" * 4_000  # fills the table: clear codes, 12-bit codes
    encoded = LzwCodec().encode(data)
    body = m.pdf_written(encoded, ["/LZWDecode"])
    streams = [s for s in pdfstreams.streams(body) if s.metadata]
    assert [(s.data, s.problem) for s in streams] == [(data, None)]


def test_a_filter_reference_to_nothing_withholds() -> None:
    body = m.pdf_written(zlib.compress(RESERVED), ["/FlateDecode"], indirect=True)
    ref = body[body.index(b"/Filter") + 8 :].split(b"R", 1)[0]
    broken = body.replace(b"/Filter " + ref + b"R", b"/Filter 99 0 R")
    found, withheld = _read(broken)
    assert not found and "Unsupported filter" in withheld[0]


def test_the_catalogs_metadata_is_read_whatever_its_own_dictionary_says() -> None:
    # No /Type /Metadata, no /Subtype /XML, and 70 other encoded streams before it: the catalog's
    # /Metadata points at it, and that is what readers take.
    body = m.pdf_written(
        base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"], others=70
    )
    body = body.replace(b"/Type /Metadata", b"/Tzpe /Metadata").replace(b"/Subtype /XML", b"/Subtzpe /XML")
    assert MARK in m.pdf_metadata(body)
    assert _read(body) == (True, [])
    # `stream` then spaces before the end of line: pypdf skips them
    spaced = body.replace(b"stream\n", b"stream  \r\n")
    assert MARK in m.pdf_metadata(spaced)
    assert _read(spaced) == (True, [])


@pytest.mark.parametrize(
    "xmp",
    [
        RESERVED.decode().encode("utf-16"),  # UTF-16 with its byte order mark
        RESERVED.replace(b"</x:xmpmeta>", b"</x:xmpmeta >"),  # a space in the closing tag
        RESERVED.replace(b"<rdf:RDF", b"<!-- </x:xmpmeta> --><rdf:RDF"),  # a closing tag in a comment
    ],
    ids=["utf-16", "closing-space", "closing-in-comment"],
)
def test_the_document_xmp_is_read_whole_not_cut_into_packets(xmp: bytes) -> None:
    body = m.pdf_written(zlib.compress(xmp), ["/FlateDecode"])
    findings, packets = media.findings_from_body(body, "ai-train", None)
    assert set(media.tdm_from_xmp(packets)[0]) == {"1"}  # the reservation, read
    assert not [f for f in findings if "could not be read" in f.detail]


@pytest.mark.parametrize(
    "steer",
    [
        lambda b: b.replace(b"%PDF-1.3\n", b""),  # no header at all: pypdf opens it by its xref
        lambda b: b.replace(b"1 0 obj", b"% stream\n1 0 obj", 1),  # a `stream` keyword in a comment
        lambda b: b.replace(b"stream\n", b"stream \n"),  # spaces before the end of line
    ],
    ids=["no-header", "stream-in-comment", "stream-space"],
)
def test_text_that_steers_a_scan_does_not_steer_the_parser(steer: Callable[[bytes], bytes]) -> None:
    body = steer(
        m.pdf_written(
            base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"]
        )
    )
    assert MARK in m.pdf_metadata(body)
    assert _read(body) == (True, [])


def test_large_images_before_the_metadata_do_not_withhold_it() -> None:
    # Five streams that inflate to 8 MiB each (a scanned book's pages) use up our scan's budget;
    # the document's metadata is the parser's, which reads it.
    body = m.pdf_written(
        zlib.compress(m.tdm_xmp("0")), ["/FlateDecode"], others=5, filler=b"\x00" * (8 << 20)
    )
    assert _read(body) == (False, [])


def test_a_pdf_that_claims_millions_of_objects_is_withheld_without_walking_them() -> None:
    body = m.pdf_written(zlib.compress(RESERVED), ["/FlateDecode"]).replace(b"/Size ", b"/Size 1999000 /X ")
    _, withheld = _read(body)
    assert "claims 1999000 objects" in withheld[0]


def test_ordinary_pdfs_the_parser_trips_on_are_not_withheld() -> None:
    import io

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (50, 50), "red").save(image, "PDF")
    assert _read(image.getvalue().replace(b"%%EOF", b"")) == (False, [])  # no end marker: opened with one
    described = m.xmp(
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Staff training</rdf:li></rdf:Alt></dc:description>',
        'xmlns:dc="http://purl.org/dc/elements/1.1/"',
    )
    padded = m.pdf_written(zlib.compress(described + b"\x00" * 64), ["/FlateDecode"])  # NUL padding
    assert _read(padded) == (False, [])


def test_xmp_with_blanks_before_its_declaration_in_an_encrypted_file_is_read() -> None:
    xmp = b'\n\n  <?xml version="1.0" encoding="UTF-8"?>' + RESERVED  # a declaration after blanks
    body = m.pdf_written(zlib.compress(xmp), ["/FlateDecode"], encrypt=True)
    findings, packets = media.findings_from_body(body, "ai-train", None)
    assert media.tdm_from_xmp(packets)[0] == ["1"]  # parsed, not only found
    assert not [f for f in findings if "could not be read" in f.detail]


def test_a_metadata_stream_the_scan_cannot_decode_withholds_when_the_xref_was_rebuilt() -> None:
    rows = b"".join(b"\x00" + RESERVED[i : i + 8].ljust(8, b" ") for i in range(0, len(RESERVED), 8))
    body = m.pdf_written(zlib.compress(rows), ["/FlateDecode"], parms={"Predictor": 12, "Columns": 8})
    assert _read(body) == (True, [])  # the parser read it through a sound cross-reference
    # Offsets now 4 bytes short, and an unreferenced clean copy of the metadata object before the
    # table: the parser rebuilds the table by scanning and takes the copy.
    number = re.search(rb"/Metadata (\d+) 0 R", body)[1]  # type: ignore[index]
    clean = zlib.compress(m.tdm_xmp("0"))
    copy = b"%s 0 obj\n<< /Type /Metadata /Subtype /XML /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream\nendobj\n"
    shifted = b"\n\n\n\n" + body.replace(
        b"\nxref\n", b"\n" + copy % (number, len(clean), clean) + b"xref\n", 1
    )
    assert MARK not in m.pdf_metadata(shifted)  # the parser's guess: the clean copy
    found, withheld = _read(shifted)
    assert not found and any("had to be rebuilt" in w and "/Predictor 12" in w for w in withheld), withheld
