"""Header fields read straight from mitmproxy's raw `(name, value)` pairs.

`Headers.get` and `get_all` decode every field on each call; on the hot path
one pass over the raw pairs costs a fraction of that. Values are decoded as
mitmproxy decodes them (Latin-1 would lose nothing; mitmproxy uses UTF-8 with
surrogateescape), so what we judge is what mitmproxy forwards.
"""

from __future__ import annotations

from collections.abc import Iterable


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def values(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every value of the field called `name` (lower-case bytes), in order."""
    return [_text(v) for n, v in fields if n.lower() == name]


def first(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of the field called `name` (lower-case bytes), or None."""
    for n, v in fields:
        if n.lower() == name:
            return _text(v)
    return None
