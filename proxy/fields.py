"""Header fields read straight from mitmproxy's raw `(name, value)` pairs.

`Headers.get` and `get_all` decode every field on each call; on the hot path
one pass over the raw pairs costs a fraction of that. Values are decoded as
mitmproxy decodes them (Latin-1 would lose nothing; mitmproxy uses UTF-8 with
surrogateescape), so what we judge is what mitmproxy forwards.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from typing import Any


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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def request_url(req: Any) -> str:
    """`req.url` of a mitmproxy Request, the same string with fewer calls (the audit record's URL).

    mitmproxy 11.0: `host:port` for a CONNECT, else scheme://host[:port]path, the port left
    out when it is the scheme's default and an asterisk-form path written as empty.
    """
    host, port = req.host, req.port
    if req.method == "CONNECT":
        return f"{host}:{port}"
    scheme, path = req.scheme, req.path
    if path == "*":
        path = ""
    if _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}{path}"
    return f"{scheme}://{host}:{port}{path}"


def retry_after(value: str | bytes | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After value asks for (RFC 9110 §10.2.3: delay-seconds or an HTTP-date, a
    date in the past meaning 0); None when there is none or it cannot be read."""
    if not value:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if text.isascii() and text.isdigit():  # str.isdigit() takes "²", which float() refuses
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
