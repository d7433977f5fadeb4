"""A PDF's document metadata (the catalog's /Metadata stream), read by a PDF parser (signals.md §4.4).

TDMRep's PDF channel and IPTC's DataMining field live in the document's XMP,
which a reader finds by following the file's cross-reference table from the
trailer to `/Root` to `/Metadata`, decrypting (an empty user password opens
most "protected" PDFs) and undoing the stream's filters. Text scans cannot do
that reliably: comments, strings, nested dictionaries, a later incremental
update or ciphertext steer them. So this is read with pypdf, which does what
readers do, within the bounds set here; our own stream scan
(signals/pdfstreams.py) still looks for the XMP of images and other parts.

The XMP is given whole (not cut into packets), turned to UTF-8 when it is
UTF-16 or UTF-32: what does not parse as XML yet speaks of a reservation or of
data mining is reported as unread, and the caller withholds.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pypdf
from defusedxml import ElementTree
from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError
from pypdf.generic import DictionaryObject, StreamObject

MAX_DECODED = 8 * 1024 * 1024
MAX_ENCODED = 1024 * 1024  # a document's XMP is kilobytes; more, as stored, is withheld
# pypdf's own bounds, for our calls only (a context variable): a bomb stops at MAX_DECODED, and
# no external decoder (jbig2dec) is ever run on an origin's bytes.
_BOUNDS = pypdf.Configuration(
    maximum_declared_stream_length=MAX_DECODED * 8, array_based_stream_maximum_output_length=MAX_DECODED,
    jbig2_maximum_output_length=MAX_DECODED, lzw_maximum_output_length=MAX_DECODED,
    run_length_maximum_output_length=MAX_DECODED, zlib_maximum_output_length=MAX_DECODED,
    brotli_maximum_output_length=MAX_DECODED, xmp_maximum_input_length=MAX_DECODED,
    stream_decoding_work_maximum_length=4 * MAX_DECODED, jbig2dec_binary=None, disable_legacy_handling=True,
)  # fmt: skip
# pypdf says what it repairs in broken files at WARNING: an origin's file is no news of ours.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_MARKERS = (b"reservation", b"DataMining", b"DMI-", b"tdmrep", b"training")
_WIDE = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))  # fmt: skip


@dataclass(frozen=True)
class DocumentMetadata:
    """What the parser found: the XMP (None if the document has none), and why it could not be
    read in full (None if it could)."""

    xmp: bytes | None
    problem: str | None = None


def pdf_header(body: bytes) -> bool | None:
    """True: a PDF header where readers look for it (the first 1024 bytes); None: no header there,
    but a cross-reference pointer at the end (lenient readers, pypdf among them, open it); False:
    not a PDF."""
    if b"%PDF-" in body[:1024]:
        return True
    return None if b"startxref" in body[-4096:] else False


def document_metadata(body: bytes) -> DocumentMetadata:
    """The document XMP of the PDF `body`, decoded (and decrypted with the empty password)."""
    try:
        with pypdf.apply_configuration(_BOUNDS):
            data = _metadata_stream(body)
    except _NotRead as e:
        return DocumentMetadata(None, str(e))
    except LimitReachedError:
        return DocumentMetadata(None, f"the document's metadata decodes past {MAX_DECODED} bytes")
    except Exception as e:  # pypdf raises many kinds on hostile files; each means "not read"
        return DocumentMetadata(
            None, f"the PDF could not be parsed for its metadata ({type(e).__name__}: {e})"
        )
    if data is None:
        return DocumentMetadata(None)
    if len(data) >= MAX_DECODED:
        return DocumentMetadata(None, f"the document's metadata decodes past {MAX_DECODED} bytes")
    xmp = _utf8(data)
    if _unparsed(xmp):
        return DocumentMetadata(xmp, "the document's metadata does not parse as XML but speaks of rights")
    return DocumentMetadata(xmp)


class _NotRead(Exception):
    """The file opened, and says why its metadata cannot be read."""


def _metadata_stream(body: bytes) -> bytes | None:
    """The catalog's /Metadata stream, decoded; None if the document names none."""
    reader = PdfReader(io.BytesIO(body), strict=False)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise _NotRead("an encrypted PDF that needs a password to open")
    root = reader.trailer["/Root"].get_object()
    if not isinstance(root, DictionaryObject):
        raise _NotRead("the PDF's /Root is not a dictionary")
    reference = root.get("/Metadata")
    if reference is None:
        return None
    stream = reference.get_object()
    if not isinstance(stream, StreamObject):
        raise _NotRead("the document's /Metadata is not a stream")
    # pypdf undoes ASCII85 and LZW in Python, with no bound on their input: the encoded stream
    # is bounded first (`_data`, the bytes as stored: pypdf has no public name for them).
    if len(getattr(stream, "_data", b"")) > MAX_ENCODED:
        raise _NotRead(f"the document's metadata stream is larger than {MAX_ENCODED} bytes as stored")
    data: bytes = stream.get_data()
    return data


def _utf8(data: bytes) -> bytes:
    """XMP in UTF-16 or UTF-32 (by its byte order mark, or its zero bytes), as UTF-8."""
    for bom, codec in _WIDE:
        if data.startswith(bom):
            return data.decode(codec, "replace").lstrip("\ufeff").encode("utf-8")
    if data[:2] in (b"<\x00", b"\x00<") and data.count(b"\x00") * 3 > len(data):
        codec = "utf-16-le" if data[:1] == b"<" else "utf-16-be"
        return data.decode(codec, "replace").encode("utf-8")
    return data


def _unparsed(xmp: bytes) -> bool:
    """Whether XMP that speaks of rights (a reservation, data mining) fails to parse: then its
    value cannot be read, and must not be taken as absent."""
    if not any(m in xmp for m in _MARKERS):
        return False
    try:
        ElementTree.fromstring(xmp.strip())
    except Exception:
        return True
    return False
