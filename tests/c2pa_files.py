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
import wave
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
    """(an unsigned file, its media type) in `fmt`."""
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
    pil, mime = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "gif": ("GIF", "image/gif"),
                 "webp": ("WEBP", "image/webp"), "tiff": ("TIFF", "image/tiff")}[fmt]  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, pil)
    return buf.getvalue(), mime


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
