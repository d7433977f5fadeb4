"""Real C2PA-signed files for the tests, written with the C2PA SDK (c2pa-python).

Signed with a throw-away ES256 chain made here (a root and a leaf for
document signing): the SDK validates the signature and, knowing no trust
list, calls the signer untrusted, as it would any real signer we configure
no trust for.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import struct
import wave
import zipfile
from collections.abc import Callable
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

CREATED = {
    "label": "c2pa.actions",
    "data": {"actions": [{"action": "c2pa.created",
                          "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]},
}  # fmt: skip


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "optout-proxy tests"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])  # fmt: skip


def _usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=not sign, crl_sign=not sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


@functools.cache
def signer_material() -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM) of a fresh ES256 signer under a fresh root."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder().subject_name(_name("Test Root")).issuer_name(_name("Test Root"))
        .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("Test Signer")).issuer_name(root.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    chain = leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, pem


def plain(fmt: str) -> tuple[bytes, str]:
    """(an unsigned file, its media type) in `fmt`: the smallest file of that format the SDK signs."""
    if fmt == "svg":
        return (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>',
            ("image/svg+xml"),
        )
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(bytes(1600))
        return buf.getvalue(), "audio/wav"
    if fmt in _BUILT:
        build, mime = _BUILT[fmt]
        return build(), mime
    pil, mime = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "gif": ("GIF", "image/gif"),
                 "webp": ("WEBP", "image/webp"), "tiff": ("TIFF", "image/tiff"),
                 "avif": ("AVIF", "image/avif")}[fmt]  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, pil)
    return buf.getvalue(), mime


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _bmff(brand: bytes) -> bytes:
    """ISO BMFF (MP4, QuickTime, M4A by brand): ftyp, a moov with its movie header, an mdat."""
    matrix = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
    mvhd = _box(
        b"mvhd",
        bytes(4) + struct.pack(">IIIIIH", 0, 0, 1000, 0, 0x00010000, 0x0100) + bytes(10) + matrix + bytes(24)
        + struct.pack(">I", 2),
    )  # fmt: skip
    return _box(b"ftyp", brand + bytes(4) + brand + b"mp41") + _box(b"moov", mvhd) + _box(b"mdat", bytes(16))


def _mp3() -> bytes:
    """Four silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz: 417 bytes each)."""
    return (bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(413)) * 4


def _flac() -> bytes:
    """The FLAC marker and a STREAMINFO block (last), no audio frames."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + bytes([0x0A, 0xC4, 0x40, 0xF0]) + bytes(20)
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def _pdf() -> bytes:
    """A one-page PDF with a correct cross-reference table."""
    objects = (b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 10 10] >>")  # fmt: skip
    out, offsets = b"%PDF-1.7\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 4\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size 4 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref


def _zip(entries: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in entries.items():
            z.writestr(zipfile.ZipInfo(name) if name == "mimetype" else name, text)  # mimetype: stored, first
    return buf.getvalue()


def _epub() -> bytes:
    container = (
        '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<rootfiles><rootfile full-path="c.opf" media-type="application/oebps-package+xml"/></rootfiles>'
        "</container>"
    )
    return _zip(
        {"mimetype": "application/epub+zip", "META-INF/container.xml": container, "c.opf": "<package/>"}
    )


def _docx() -> bytes:
    types = (
        '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'
    )
    return _zip({"[Content_Types].xml": types, "word/document.xml": "<w:document/>"})


def _avi() -> bytes:
    """RIFF AVI: a header list with its main header, an empty movie list."""
    avih = b"avih" + struct.pack("<I", 56) + bytes(56)
    hdrl = b"LIST" + struct.pack("<I", 4 + len(avih)) + b"hdrl" + avih
    body = b"AVI " + hdrl + b"LIST" + struct.pack("<I", 4) + b"movi"
    return b"RIFF" + struct.pack("<I", len(body)) + body


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_BUILT: dict[str, tuple[Callable[[], bytes], str]] = {
    "mp4": (lambda: _bmff(b"isom"), "video/mp4"),
    "mov": (lambda: _bmff(b"qt  "), "video/quicktime"),
    "m4a": (lambda: _bmff(b"M4A "), "audio/mp4"),
    "mp3": (_mp3, "audio/mpeg"),
    "flac": (_flac, "audio/flac"),
    "pdf": (_pdf, "application/pdf"),
    "epub": (_epub, "application/epub+zip"),
    "docx": (_docx, DOCX),
    "avi": (_avi, "video/avi"),
}


def training(use: str) -> dict[str, Any]:
    return {"label": "cawg.training-mining",
            "data": {"entries": {"cawg.ai_generative_training": {"use": use}, "cawg.ai_inference": {"use": use}}}}  # fmt: skip


def sign(
    source: bytes, mime: str, assertions: list[dict[str, Any]], ingredient: bytes | None = None
) -> bytes:
    """`source` with a signed manifest holding `assertions` (and `ingredient`, a signed parent, if given)."""
    chain, key = signer_material()
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(alg=b"es256", sign_cert=chain, private_key=key, ta_url=None)
    )
    manifest = {
        "claim_generator": "optout-proxy-tests/1",
        "title": "test asset",
        "assertions": [CREATED, *assertions],
    }
    out = io.BytesIO()
    with c2pa.Builder(json.dumps(manifest)) as builder:
        if ingredient is not None:
            builder.add_ingredient(
                json.dumps({"title": "parent", "relationship": "componentOf"}), mime, io.BytesIO(ingredient)
            )
        builder.sign(signer, mime, io.BytesIO(source), out)
    return out.getvalue()
