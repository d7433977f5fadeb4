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
import re
from dataclasses import dataclass

import pypdf
from defusedxml import ElementTree
from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError
from pypdf.generic import DictionaryObject, StreamObject

from proxy.signals.pdfstreams import spelled

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

_MARKERS = (b"reservation", b"DataMining", b"DMI-", b"tdmrep", b"ns.useplus.org")
MAX_OBJECTS = 500_000  # a cross-reference that claims more is withheld: pypdf would walk them all
_WIDE = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))  # fmt: skip


@dataclass(frozen=True)
class DocumentMetadata:
    """What the parser found: the XMP (None if the document has none), why it could not be read
    in full (None if it could), and whether the file is encrypted (None: not known)."""

    xmp: bytes | None
    problem: str | None = None
    encrypted: bool | None = None


def pdf_header(body: bytes) -> bool | None:
    """True: a PDF header where readers look for it (the first 1024 bytes); None: no header there,
    but a cross-reference pointer at the end (lenient readers, pypdf among them, open it); False:
    not a PDF."""
    if b"%PDF-" in body[:1024]:
        return True
    return None if b"startxref" in body[-4096:] else False


def document_metadata(body: bytes) -> DocumentMetadata:
    """The document XMP of the PDF `body`, decoded (and decrypted with the empty password).

    A file the parser cannot open is tried once more with an end-of-file marker added (a PDF cut
    short, or saved without one, is common); if it still cannot be, it is withheld only when it
    may hold metadata: XMP or a /Metadata in sight, or object streams, which can hide one.
    """
    sizes = [int(n) for n in _SIZE.findall(body[-65536:])]
    if sizes and max(sizes) > MAX_OBJECTS:
        return DocumentMetadata(None, f"a PDF that claims {max(sizes)} objects (more than {MAX_OBJECTS})")
    encrypted: list[bool] = []
    failure = ""
    for attempt in (body, body + b"\n%%EOF\n"):
        try:
            with pypdf.apply_configuration(_BOUNDS):
                data = _metadata_stream(attempt, encrypted)
            break
        except _NotRead as e:
            return DocumentMetadata(None, str(e), bool(encrypted and encrypted[-1]))
        except LimitReachedError:
            return DocumentMetadata(None, f"the document's metadata decodes past {MAX_DECODED} bytes")
        except Exception as e:  # pypdf raises many kinds on hostile files; each means "not read"
            failure = f"the PDF could not be parsed for its metadata ({type(e).__name__}: {e})"
    else:
        return DocumentMetadata(None, failure if _may_hold_metadata(body) else None)
    known = encrypted[-1] if encrypted else None
    if data is None:
        return DocumentMetadata(None, encrypted=known)
    if len(data) >= MAX_DECODED:
        return DocumentMetadata(None, f"the document's metadata decodes past {MAX_DECODED} bytes", known)
    xmp = _utf8(data).strip(_PADDING)
    if _unparsed(xmp):
        problem = "the document's metadata does not parse as XML but speaks of rights"
        return DocumentMetadata(xmp, problem, known)
    return DocumentMetadata(xmp, encrypted=known)


def xref_sound(body: bytes) -> bool:
    """Whether the file's last `startxref` points at a cross-reference (a table, or a stream's
    object): when it does not, a parser rebuilds the table by scanning, and which of two copies
    of an object it then takes is its own guess, not what every reader takes."""
    found = _STARTXREF.findall(body[-4096:])
    if not found:
        return False
    at = int(found[-1])
    return body[at : at + 4] == b"xref" or _OBJECT_AT.match(body, at) is not None


def _may_hold_metadata(body: bytes) -> bool:
    """Whether a PDF we could not open may hold document metadata we would then miss: XMP or a
    /Metadata key in sight (however its letters are escaped), or object streams, which can hide one."""
    return b"xmpmeta" in body or b"adobe:ns:meta" in body or _HIDING.search(body) is not None


class _NotRead(Exception):
    """The file opened, and says why its metadata cannot be read."""


def _metadata_stream(body: bytes, encrypted: list[bool]) -> bytes | None:
    """The catalog's /Metadata stream, decoded; None if the document names none. Whether the
    file is encrypted goes to `encrypted`."""
    reader = PdfReader(io.BytesIO(body), strict=False)
    encrypted.append(reader.is_encrypted)
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


_PADDING = b" \t\r\n\x00"  # around XMP: the packet's own padding, and NULs some writers add
_SIZE = re.compile(rb"/Size\s+(\d{1,12})")
_STARTXREF = re.compile(rb"startxref\s+(\d{1,12})")
_OBJECT_AT = re.compile(rb"\d+\s+\d+\s+obj\b")
_HIDING = re.compile(spelled("Metadata") + b"|" + spelled("ObjStm"))


def _unparsed(xmp: bytes) -> bool:
    """Whether XMP that speaks of rights (a reservation, data mining) fails to parse: then its
    value cannot be read, and must not be taken as absent."""
    if not any(m in xmp for m in _MARKERS):
        return False
    try:
        ElementTree.fromstring(xmp)
    except Exception:
        return True
    return False
