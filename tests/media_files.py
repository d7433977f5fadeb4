"""Real media files with embedded opt-out metadata, generated for the tests.

Images come from Pillow; the metadata is inserted the way the standards place
it: XMP in a JPEG APP1 segment or a PNG iTXt chunk (optionally compressed,
optionally after IDAT), C2PA JUMBF in JPEG APP11 segments (split across
several when asked) or a PNG caBX chunk, XMP in a PDF metadata stream (by
hand, or written by pypdf under a chain of filters, and read back by it).
"""

from __future__ import annotations

import io
import struct
import zlib

import cbor2
from PIL import Image

PLUS = "http://ns.useplus.org/ldf/xmp/1.0/"
VOCAB = "http://ns.useplus.org/ldf/vocab/"


def xmp(inner: str, extra_ns: str = "") -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:plus="{PLUS}" {extra_ns}>{inner}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def datamining_element(code: str, prefix: str = "plus") -> bytes:
    ns = f'xmlns:{prefix}="{PLUS}"' if prefix != "plus" else ""
    return xmp(f"<{prefix}:DataMining>{VOCAB}{code}</{prefix}:DataMining>", ns)


def datamining_attribute(code: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:plus="{PLUS}" plus:DataMining="{VOCAB}{code}"/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


def base_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def base_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_segments(*segments: bytes) -> bytes:
    """A real JPEG with extra segments inserted right after SOI."""
    data = base_jpeg()
    return data[:2] + b"".join(segments) + data[2:]


def jpeg_with_xmp(packet: bytes) -> bytes:
    return jpeg_with_segments(_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_with_chunk(kind: bytes, data: bytes, *, after_idat: bool) -> bytes:
    png = base_png()
    chunk = _chunk(kind, data)
    at = png.index(b"IEND") - 4 if after_idat else png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def png_with_xmp(packet: bytes, *, compressed: bool, after_idat: bool) -> bytes:
    text = zlib.compress(packet) if compressed else packet
    data = b"XML:com.adobe.xmp\x00" + (b"\x01\x00" if compressed else b"\x00\x00") + b"\x00\x00" + text
    return png_with_chunk(b"iTXt", data, after_idat=after_idat)


# -- C2PA-like JUMBF ---------------------------------------------------------

C2PA_UUID = bytes.fromhex("6332706100110010800000aa00389b71")  # 'c2pa' + ISO suffix
CBOR_UUID = bytes.fromhex("63626f7200110010800000aa00389b71")  # 'cbor' + ISO suffix


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload) + 8) + kind + payload


def _superbox(label: str, type_uuid: bytes, *children: bytes) -> bytes:
    description = _box(b"jumd", type_uuid + b"\x03" + label.encode() + b"\x00")
    return _box(b"jumb", description + b"".join(children))


def manifest_store(label: str, entries: dict[str, dict[str, object]], padding: int = 0) -> bytes:
    """A JUMBF manifest store holding one training-mining assertion (CBOR) and optional filler."""
    assertion = _superbox(label, CBOR_UUID, _box(b"cbor", cbor2.dumps({"entries": entries})))
    filler = _superbox("c2pa.thumbnail", CBOR_UUID, _box(b"bfdb", b"\x00" * padding)) if padding else b""
    assertions = _superbox("c2pa.assertions", C2PA_UUID, filler, assertion)
    manifest = _superbox("urn:uuid:0b5c3d10-0000-4000-8000-000000000001", C2PA_UUID, assertions)
    return _superbox("c2pa", C2PA_UUID, manifest)


def jpeg_with_c2pa(store: bytes, segment_size: int = 65000) -> bytes:
    """Embed a JUMBF store in APP11 segments as C2PA does (CI 'JP', En, Z; later ones repeat the box header)."""
    header = store[:8]
    first = store[:segment_size]
    segments = [_segment(0xEB, b"JP" + struct.pack(">HI", 1, 1) + first)]
    rest = store[segment_size:]
    seq = 2
    while rest:
        piece, rest = rest[:segment_size], rest[segment_size:]
        segments.append(_segment(0xEB, b"JP" + struct.pack(">HI", 1, seq) + header + piece))
        seq += 1
    return jpeg_with_segments(*segments)


def png_with_c2pa(store: bytes) -> bytes:
    return png_with_chunk(b"caBX", store, after_idat=True)


# -- PDF -------------------------------------------------------------------------

TDM_NS = "http://www.w3.org/ns/tdmrep/"


def pdf_with_xmp(packet: bytes, *, compressed: bool) -> bytes:
    """A small but well-formed PDF whose catalog points at an XMP metadata stream."""
    stream = zlib.compress(packet) if compressed else packet
    filt = " /Filter /FlateDecode" if compressed else ""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R /Metadata 4 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Type /Metadata /Subtype /XML /Length %d%s >>\nstream\n" % (len(stream), filt.encode())
        + stream
        + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, obj in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def pdf_written(
    encoded: bytes, filters: list[str], *, parms: dict[str, int] | None = None, indirect: bool = False,
    encrypt: bool = False, password: str = "", image_metadata: bool = False, others: int = 0,
    filler: bytes = b"",
) -> bytes:  # fmt: skip
    """A PDF written by pypdf whose catalog's metadata stream holds `encoded` under `filters`
    (a direct array, or one `indirect` object), with /DecodeParms `parms`; encrypted (RC4,
    metadata too) with `password` as the user password (empty: any reader opens it) if asked; with a JPEG image that names its own
    metadata stream if `image_metadata`."""
    from pypdf import PdfWriter
    from pypdf.generic import ArrayObject, DictionaryObject, NameObject, NumberObject, StreamObject

    writer = PdfWriter()
    writer.add_blank_page(100, 100)
    for i in range(others):
        other = StreamObject()
        other.set_data(zlib.compress(filler or b"q 1 0 0 1 %d 0 cm Q" % i))
        other[NameObject("/Filter")] = NameObject("/FlateDecode")
        writer._add_object(other)
    stream = StreamObject()
    stream[NameObject("/Type")] = NameObject("/Metadata")
    stream[NameObject("/Subtype")] = NameObject("/XML")
    stream.set_data(encoded)
    names = ArrayObject([NameObject(f) for f in filters])
    stream[NameObject("/Filter")] = writer._add_object(names) if indirect else names
    if parms:
        stream[NameObject("/DecodeParms")] = DictionaryObject(
            {NameObject(f"/{k}"): NumberObject(v) for k, v in parms.items()}
        )
    metadata = writer._add_object(stream)
    writer._root_object[NameObject("/Metadata")] = metadata
    if image_metadata:
        jpeg = io.BytesIO()
        Image.new("RGB", (4, 4), "red").save(jpeg, "JPEG")
        image = StreamObject()
        image.set_data(jpeg.getvalue())
        image.update({
            NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Image"),
            NameObject("/Filter"): NameObject("/DCTDecode"), NameObject("/Metadata"): metadata,
            NameObject("/Width"): NumberObject(4), NameObject("/Height"): NumberObject(4),
        })  # fmt: skip
        writer._add_object(image)
    if encrypt:
        writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_metadata(body: bytes) -> bytes:
    """The catalog's metadata stream of a PDF as pypdf reads it (filters undone, decrypted)."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(body))
    if reader.is_encrypted:
        reader.decrypt("")
    data: bytes = reader.trailer["/Root"]["/Metadata"].get_object().get_data()
    return data


def tdm_xmp(reservation: str) -> bytes:
    return xmp(f"<tdm:reservation>{reservation}</tdm:reservation>", f'xmlns:tdm="{TDM_NS}"')


def epub(opf_meta: str, package: str = "OEBPS/content.opf", *, raw_package: str | None = None) -> bytes:
    """A minimal EPUB (zip) whose package document (at `package`, which container.xml names)
    carries `opf_meta` in its <metadata>, or is `raw_package` as given."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr(
            "META-INF/container.xml",
            f'<container><rootfiles><rootfile full-path="{package}"/></rootfiles></container>',
        )
        z.writestr(
            package,
            raw_package
            if raw_package is not None
            else '<package xmlns="http://www.idpf.org/2007/opf" prefix="tdm: http://www.w3.org/ns/tdmrep#">'
            f"<metadata>{opf_meta}</metadata></package>",
        )
        z.writestr("OEBPS/ch1.xhtml", "<html><body>chapter</body></html>")
    return out.getvalue()


def jpeg_with_extended_xmp(packet: bytes, pieces: int = 2) -> bytes:
    """A JPEG whose XMP is in Adobe's extended form: a stub packet, then `packet` in APP1 pieces."""
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    size = -(-len(packet) // pieces)
    extension = b"http://ns.adobe.com/xmp/extension/\x00"
    segments = [
        _segment(0xE1, extension + guid + struct.pack(">II", len(packet), at) + packet[at : at + size])
        for at in range(0, len(packet), size)
    ]
    stub = xmp(
        f'<xmpNote:HasExtendedXMP xmlns:xmpNote="http://ns.adobe.com/xmp/note/">{guid.decode()}</xmpNote:HasExtendedXMP>'
    )
    return jpeg_with_segments(_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + stub), *segments)


def webp_with_xmp(packet: bytes) -> bytes:
    """A RIFF/WebP container whose `XMP ` chunk holds `packet` as given (any encoding)."""
    chunk = b"XMP " + struct.pack("<I", len(packet)) + packet + b"\x00" * (len(packet) % 2)
    body = b"WEBP" + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body
