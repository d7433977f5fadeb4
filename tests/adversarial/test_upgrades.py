"""After a 101 nothing is HTTP: an upgrade must not become a way around the judgement of content.

A crawler asks an allowed page with a WebSocket handshake (or only its
`Sec-WebSocket-*` fields); the origin answers 101 and sends the page, `noai`
meta and all, as a WebSocket text frame. mitmproxy relays WebSocket messages
that no reader of ours looks at. The proxy runs with `websocket=false` and
withholds every 101 (`raw-protocol`, on the record). Raw sockets, a real
origin, a real proxy.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest

from tests.adversarial.rawnet import MARKER, CountingOrigin, exchange
from tests.proxyproc import ProxyProcess

PAGE = b"<!doctype html><html><head><meta name=robots content=noai></head><body>" + MARKER + b"</body></html>"
HANDSHAKE = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def accept(head: bytes) -> bytes:
    key = next(
        (
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        ),
        b"",
    )
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def frame(payload: bytes) -> bytes:
    """One unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    return bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload


def answer(path: str, head: bytes) -> bytes:
    if path == "/robots.txt":
        body = b"User-agent: *\nAllow: /\n"
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
    upgrade = b"h2c" if path.endswith("h2c") else b"foo" if path.endswith("other") else b"websocket"
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgrade + b"\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept(head) + b"\r\n\r\n" + frame(PAGE)
    )


@pytest.fixture(scope="module")
def origin() -> Iterator[CountingOrigin]:
    o = CountingOrigin(respond=answer)
    yield o
    o.close()


# name -> extra request header lines
CASES = {
    "websocket": "Upgrade: websocket\r\nConnection: Upgrade\r\n" + HANDSHAKE,
    "unasked-websocket": HANDSHAKE,  # no Upgrade field: the origin upgrades anyway
    "websocket-lower-case": "upgrade: WebSocket\r\nconnection: upgrade\r\n" + HANDSHAKE.lower(),
    "unasked-other": "",
    "unasked-h2c": "",
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_upgrade_never_relays_what_follows(case: str, origin: CountingOrigin, proxy: ProxyProcess) -> None:
    a = f"127.0.0.1:{origin.port}"
    path = f"/page?{case.removeprefix('unasked-')}"
    got = exchange(proxy.port, [f"GET http://{a}{path} HTTP/1.1\r\nHost: {a}\r\n{CASES[case]}\r\n".encode()])
    assert MARKER not in got, got[:400]
    assert got.startswith(b"HTTP/1.1 451") and b"raw-protocol" in got.lower(), got[:300]
    records = [r for r in proxy.records() if r["url"].endswith(path) and r["phase"] == "response"]
    assert [(r["decision"], r["signal"]) for r in records][-1:] == [("block", "raw-protocol")]
