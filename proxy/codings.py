"""Content codings, decoded the way clients decode them, and never past a bound.

A crawler's HTTP client decodes what the origin sends: `gzip, gzip`, `x-gzip`,
gzip with trailing bytes, a truncated gzip stream (browsers and requests show
what decodes). If we read less than the client will, an opt-out hides in the
difference; so we decode at least as much as any client, and:

* codings are undone in reverse order of the header (RFC 9110 §8.4), every
  field line and every comma-separated member counted;
* output is bounded by `limit` at every step (a 1 MB body that decodes to
  1 GB stops at the limit, which the caller treats as over its cap);
* a coding we do not know cannot be read, so the caller withholds it
  (`Undecodable`): never forward what we could not read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import brotli  # type: ignore[import-untyped]
import zstandard

# Input fed to decoders without an output bound (brotli) at a time: the most a
# small step can expand to stays far below any sensible limit.
_STEP = 64


class Undecodable(ValueError):
    """The body uses a content coding we cannot decode."""


def codings_of(values: Iterable[str]) -> list[str]:
    """Every coding named by Content-Encoding field values, in the order applied, lower-case."""
    out = []
    for value in values:
        for member in value.split(","):
            name = member.strip().lower()
            if name and name != "identity":
                out.append(name)
    return out


def transfer_codings_of(values: Iterable[str]) -> list[str]:
    """The codings named by Transfer-Encoding field values, less `chunked` (which mitmproxy undoes).

    RFC 9112 §6.1 lets a response carry `gzip, chunked`; mitmproxy removes the
    chunking and leaves the gzip, which clients that ask for it (TE: gzip) undo.
    """
    return [name for name in codings_of(values) if name != "chunked"]


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip members one after another (RFC 1952 §2.2), trailing garbage and truncation tolerated."""
    parts: list[bytes] = []
    size = 0
    while data and size <= limit:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = d.decompress(data, limit + 1 - size)
        except zlib.error:
            if not parts:
                raise Undecodable("not gzip data") from None
            break  # trailing bytes that are not a gzip member: clients ignore them
        parts.append(part)
        size += len(part)
        if not d.eof:
            break  # truncated, or stopped at the limit: keep what decoded
        data = d.unused_data
        if not data.startswith(b"\x1f\x8b"):
            break
    # One member (the usual case) is returned as decoded: no copy of up to `limit` bytes.
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _inflate(data: bytes, limit: int) -> bytes:
    """`deflate` as clients read it: zlib-wrapped (RFC 9110 §8.4.1.2) or, as some servers send, raw."""
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        d = zlib.decompressobj(wbits)
        try:
            return d.decompress(data, limit + 1)
        except zlib.error:
            continue
    raise Undecodable("not deflate data")


def _unbrotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    try:
        for i in range(0, len(data), _STEP):
            out += d.process(data[i : i + _STEP])
            if len(out) > limit:
                break
    except brotli.error:
        if not out:
            raise Undecodable("not brotli data") from None
    return bytes(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    out = bytearray()
    try:
        while len(out) <= limit:
            chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
            if not chunk:
                break
            out += chunk
    except zstandard.ZstdError:
        if not out:
            raise Undecodable("not zstd data") from None
    return bytes(out)


_DECODERS = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def decode(data: bytes, codings: list[str], limit: int) -> tuple[bytes, bool]:
    """(decoded body, over_limit): `data` with `codings` undone, at most `limit` + 1 bytes of it.

    Raises Undecodable for a coding we do not know or data that is not what it claims.
    """
    for name in reversed(codings):
        decoder = _DECODERS.get(name)
        if decoder is None:
            raise Undecodable(f"unknown content coding {name!r}")
        data = decoder(data, limit)
    if len(data) > limit + 1:
        data = data[: limit + 1]
    return data, len(data) > limit
