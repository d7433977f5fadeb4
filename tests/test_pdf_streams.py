"""XMP in a PDF is read under every chain of filters a reader undoes (signals/pdfstreams.py); a
metadata stream we cannot undo withholds the file, one we can is read. Files are written by pypdf,
which also reads each back: what it finds there is what a reader of the file sees."""

from __future__ import annotations

import base64
import zlib

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


def test_abbreviated_filter_names_are_read() -> None:
    # The abbreviations are defined for inline images; readers that take them in any stream exist.
    body = m.pdf_written(
        base64.a85encode(zlib.compress(RESERVED), adobe=True), ["/ASCII85Decode", "/FlateDecode"]
    )
    assert _read(body.replace(b"/ASCII85Decode", b"/A85").replace(b"/FlateDecode", b"/Fl")) == (True, [])


def test_metadata_we_cannot_undo_withholds() -> None:
    # A PNG predictor (filter type 0 on each 8-byte row): pypdf undoes it, we do not.
    rows = b"".join(b"\x00" + RESERVED[i : i + 8].ljust(8, b" ") for i in range(0, len(RESERVED), 8))
    predicted = m.pdf_written(zlib.compress(rows), ["/FlateDecode"], parms={"Predictor": 12, "Columns": 8})
    assert MARK in m.pdf_metadata(predicted)
    found, withheld = _read(predicted)
    assert not found and withheld and "/Predictor 12" in withheld[0]
    # Encrypted, the metadata with it (an empty user password: any reader opens it).
    encrypted = m.pdf_written(zlib.compress(RESERVED), ["/FlateDecode"], encrypt=True)
    assert MARK in m.pdf_metadata(encrypted)
    found, withheld = _read(encrypted)
    assert not found and withheld
    # An image codec on a metadata stream.
    dct = m.pdf_written(zlib.compress(RESERVED), ["/DCTDecode"])
    assert _read(dct) == (False, ["the file's metadata could not be read in full (a PDF metadata stream: "
                                  "a stream under the /DCTDecode filter); withheld rather than guessed"])  # fmt: skip


def test_an_image_that_names_its_metadata_is_not_a_metadata_stream() -> None:
    # A JPEG image stream whose dictionary says /Metadata N 0 R is an image, read or not: no false block.
    body = m.pdf_written(zlib.compress(m.tdm_xmp("0")), ["/FlateDecode"], image_metadata=True)
    assert b"/DCTDecode" in body and b"/Metadata" in body
    assert _read(body) == (False, [])


def test_a_bomb_under_a_filter_chain_is_bounded_and_withheld() -> None:
    bomb = base64.a85encode(zlib.compress(b" " * (64 * 1024 * 1024), 9), adobe=True)
    found, withheld = _read(m.pdf_written(bomb, ["/ASCII85Decode", "/FlateDecode"]))
    assert not found and withheld and "decodes past" in withheld[0]


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
    assert not found and "names an object that is not a filter" in withheld[0]


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
