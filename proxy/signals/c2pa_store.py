"""C2PA manifest stores read and validated with the C2PA project's own SDK (`c2pa-python`).

For every format the SDK reads (JPEG, PNG, GIF, WebP, TIFF/DNG, HEIF/AVIF,
SVG, MP4/MOV, MP3/WAV/FLAC, PDF, EPUB, Office documents ...) the manifest
store is parsed and its signatures checked by the SDK, not by us. Our own
JUMBF scan (`media.c2pa_assertions`) remains only where the SDK cannot read:
a format it does not know, a store it rejects as malformed, and manifests
carried in HTML `<script type="application/c2pa">`; such findings say
"signature not checked".

Which manifest speaks: the **active** manifest (the asset's own, the last one
signed) decides. The other manifests of the store are its ingredients'; under
`c2pa_ingredients: inherit` (the default, which protects the rights holder
whose work went into the asset) their reservations bind too, under `ignore`
they are recorded only.

Signature state, recorded in every finding: `valid` (the SDK validated the
claim signature and knows the signer), `untrusted` (valid, but the signing
certificate is not on a trust list we were given: the usual case, as we
configure none), `invalid` (a hash or signature does not match: tampered or
broken). Whether an opt-out in an invalid manifest still binds is the policy
key `c2pa_invalid_signature: bind | ignore` (default `bind`: an opt-out
expresses intent even when the file was edited after signing, signals.md
§13.13).

The SDK is native code: it is only ever called from the body worker thread
(never on the event loop), and only for bodies within the body cap that
carry a JUMBF `c2pa` label.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import c2pa

from proxy import sniff

TRAINING_LABELS = ("cawg.training-mining", "c2pa.training-mining")
# What the SDK needs to know to read a body: its format, from the first bytes.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF8", 0, "image/gif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"%PDF", 0, "application/pdf"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
)
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/avi"}
_BRANDS = {b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif", b"avif": "image/avif",
           b"qt  ": "video/quicktime", b"M4A ": "audio/mp4"}  # fmt: skip


_ZIP_MIMETYPE = re.compile(rb"mimetype(application/[a-z0-9.+-]+)")


class Unreadable(Exception):
    """The SDK cannot read this body (unknown format, or a store it rejects)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    label: str
    active: bool
    entries: tuple[tuple[str, str, str], ...]  # (assertion label, entry key, use) of training-mining


@dataclass(frozen=True, slots=True)
class Store:
    manifests: tuple[Manifest, ...]
    state: str  # valid | untrusted | invalid
    codes: tuple[str, ...]  # the SDK's failure codes, for the evidence


def format_of(body: bytes, declared: Iterable[str] = ()) -> str | None:
    """The media type the SDK should read `body` as: its first bytes say, else a declared type."""
    for magic, offset, mime in _MAGIC:
        if body[offset : offset + len(magic)] == magic:
            return mime
    if body[:4] == b"RIFF" and body[8:12] in _RIFF:
        return _RIFF[body[8:12]]
    if body[4:8] == b"ftyp":
        return _BRANDS.get(body[8:12], "video/mp4")
    if body[:2] == b"PK":
        # EPUB and OpenDocument name themselves in a first, stored `mimetype` entry; OOXML
        # and other ZIP-based documents are read by the SDK's generic ZIP reader.
        named = _ZIP_MIMETYPE.search(body[:200])
        zipped = named.group(1).decode("ascii") if named else ""
        return zipped if zipped in _supported() else "application/x-zip"
    head = body[:1024].lstrip()
    if head.startswith(b"<") and b"<svg" in body[:4096]:
        return "image/svg+xml"
    supported = _supported()
    return next((mime for mime in sniff.media_types(declared) if mime in supported), None)


@functools.cache
def _supported() -> frozenset[str]:
    """The media types the installed SDK reads (asked once)."""
    return frozenset(m for m in c2pa.Reader.get_supported_mime_types() if "/" in m)


def read(body: bytes, mime: str) -> Store | None:
    """The manifest store of `body` read as `mime`, or None when it has none. Raises Unreadable."""
    try:
        with c2pa.Reader(mime, io.BytesIO(body)) as reader:
            report = json.loads(reader.json())
    except c2pa.C2paError as e:
        if type(e).__name__.endswith("ManifestNotFound"):
            return None
        raise Unreadable(f"{type(e).__name__.lstrip('_')}: {str(e)[:200]}") from e
    except Exception as e:  # the binding raises more than its own error types on damaged input
        raise Unreadable(f"{type(e).__name__}: {str(e)[:200]}") from e
    return _store(report)


def _store(report: Mapping[str, Any]) -> Store:
    active = report.get("active_manifest")
    manifests = []
    for label, manifest in (report.get("manifests") or {}).items():
        entries = []
        for assertion in manifest.get("assertions") or ():
            name = str(assertion.get("label", ""))
            if name.split(".v", 1)[0] not in TRAINING_LABELS:
                continue
            data = assertion.get("data") or {}
            for key, entry in (data.get("entries") or {}).items():
                use = str(entry.get("use", "")) if isinstance(entry, dict) else ""
                entries.append((name, str(key), use))
        manifests.append(Manifest(str(label), label == active, tuple(entries)))
    codes = tuple(str(s.get("code", "")) for s in report.get("validation_status") or ())
    state = str(report.get("validation_state", "")).lower()
    if state == "invalid" or any(_is_failure(c) for c in codes):
        verdict = "invalid"
    elif "signingCredential.untrusted" in codes or state != "trusted":
        verdict = "untrusted"
    else:
        verdict = "valid"
    # the active manifest first: it is the asset's own word
    manifests.sort(key=lambda m: not m.active)
    return Store(tuple(manifests), verdict, codes)


def _is_failure(code: str) -> bool:
    # signingCredential.untrusted is about trust lists, not about the file being intact
    return code.endswith((".mismatch", ".invalid", ".missing", ".malformed")) or code.startswith(
        "claimSignature.mismatch"
    )
