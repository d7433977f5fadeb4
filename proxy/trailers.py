"""HTTP/1 trailers: dropped on arrival, so a chunked response with trailers never hangs a client.

mitmproxy 11.0 raises `NotImplementedError` when an HTTP/1 message ends with
trailers; the flow dies without a response and the client waits until its own
timeout (mitmproxy-edges.md, "Trailers"). No hook runs in time to help, so
the chunked body reader itself is wrapped: the trailer fields are dropped and
the message ends normally. Trailers are never delivered to the crawler, so
nothing they say can reach it; what they might have said about the content
was already said by the headers that were judged. The pin on mitmproxy
(<11.1) covers the module attribute patched here, and a test sends trailers.
"""

from __future__ import annotations

from typing import Any

import h11
from h11._readers import ChunkedReader
from mitmproxy.proxy.layers.http import _http1


class TrailerlessChunkedReader(ChunkedReader):
    """h11's chunked reader, ending the message without its trailer fields."""

    def __call__(self, buf: Any) -> Any:
        event = super().__call__(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event


_original = _http1.make_body_reader


def _make_body_reader(expected_size: int | None) -> Any:
    if expected_size is None:
        return TrailerlessChunkedReader()
    return _original(expected_size)


def install() -> None:
    """Make mitmproxy's HTTP/1 layer read chunked bodies without their trailers (idempotent)."""
    _http1.make_body_reader = _make_body_reader
