"""A part of a body is not the body: Range requests must not carve the opt-out out of what is judged.

An HTML page says `noai` in its head; a crawler asks for the bytes after the
head (`Range: bytes=200-`). An origin that honours Range answers 206 with
only those bytes, in which no signal is left to read. The proxy must judge
the whole body: it asks the origin for all of it (Range and If-Range removed,
on the record) and withholds a 206 it did not ask for. Raw sockets, a real
origin that honours Range (single, suffix and multiple ranges), a real proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.adversarial.rawnet import MARKER, CountingOrigin, exchange
from tests.proxyproc import ProxyProcess

HEAD = b"<!doctype html><html><head><meta name=robots content=noai><title>t</title></head><body>"
PAGE = HEAD + b"<p>" + b"filler " * 40 + MARKER + b"</p></body></html>"
XMP = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" plus:DataMining="http://ns.useplus.org/ldf/vocab/'
    b'DMI-PROHIBITED"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
_APP1 = b"http://ns.adobe.com/xap/1.0/\x00" + XMP
JPEG = (
    b"\xff\xd8\xff\xe1" + (len(_APP1) + 2).to_bytes(2, "big") + _APP1
    + b"\xff\xdb\x00\x43" + bytes(65) + b"\x00" * 2000 + MARKER + b"\xff\xd9"
)  # fmt: skip
BODIES = {"/page.html": (b"text/html", PAGE), "/photo.jpg": (b"image/jpeg", JPEG)}
_RANGE = re.compile(rb"^range:\s*bytes=(.+)$", re.I | re.M)
_IF_RANGE = re.compile(rb"^if-range:", re.I | re.M)


def _spans(spec: bytes, size: int) -> list[tuple[int, int]]:
    out = []
    for part in spec.decode().split(","):
        first, _, last = part.strip().partition("-")
        if not first:
            out.append((max(0, size - int(last)), size - 1))
        else:
            out.append((int(first), min(size - 1, int(last)) if last else size - 1))
    return out


def honour_range(path: str, head: bytes, *, always_partial: bool = False) -> bytes:
    """RFC 9110 §14: 206 with the asked part (multipart/byteranges for several), 200 without Range."""
    if path == "/robots.txt":
        body = b"User-agent: *\nAllow: /\n"
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
    kind, body = BODIES.get(path.split("?")[0], (b"text/plain", b"not found"))
    m = _RANGE.search(head)
    spec = m.group(1).strip() if m else (b"200-" if always_partial else None)
    if spec is None:
        return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            kind,
            len(body),
            body,
        )
    spans = _spans(spec, len(body))
    if len(spans) == 1:
        a, b = spans[0]
        part = body[a : b + 1]
        return (
            b"HTTP/1.1 206 Partial Content\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (kind, a, b, len(body), len(part), part)
        )
    out = b""
    for a, b in spans:
        out += b"--SEP\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n%s\r\n" % (
            kind, a, b, len(body), body[a : b + 1],
        )  # fmt: skip
    out += b"--SEP--\r\n"
    return (
        b"HTTP/1.1 206 Partial Content\r\nContent-Type: multipart/byteranges; boundary=SEP\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(out), out)
    )


@pytest.fixture(scope="module")
def origin() -> Iterator[CountingOrigin]:
    o = CountingOrigin(respond=honour_range)
    yield o
    o.close()


@pytest.fixture(scope="module")
def liar() -> Iterator[CountingOrigin]:
    """Answers 206 with the bytes after the head whatever was asked."""
    o = CountingOrigin(respond=lambda path, head: honour_range(path, head, always_partial=True))
    yield o
    o.close()


# name -> (path, extra request header lines)
CASES = {
    "after-the-head": ("/page.html", ["Range: bytes=200-"]),
    "suffix": ("/page.html", ["Range: bytes=-60"]),
    "two-ranges": ("/page.html", ["Range: bytes=150-199,200-"]),
    "lower-case-name": ("/page.html", ["range: bytes=200-"]),
    "with-if-range": ("/page.html", ["Range: bytes=200-", 'If-Range: "v1"']),
    "two-range-fields": ("/page.html", ["Range: bytes=200-", "Range: bytes=210-"]),
    "media-tail": ("/photo.jpg", ["Range: bytes=1000-"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_range_never_carves_the_opt_out_out_of_the_body(
    case: str, origin: CountingOrigin, proxy: ProxyProcess
) -> None:
    path, lines = CASES[case]
    a = f"127.0.0.1:{origin.port}"
    extra = "".join(f"{line}\r\n" for line in lines)
    got = exchange(
        proxy.port,
        [f"GET http://{a}{path}?{case} HTTP/1.1\r\nHost: {a}\r\n{extra}Connection: close\r\n\r\n".encode()],
    )
    assert got.startswith(b"HTTP/1.1 451"), got[:300]
    assert MARKER not in got
    # The origin was asked for the whole body: no Range reached it.
    sent = [head for p, head in origin.requests if p == f"{path}?{case}"]
    assert len(sent) == 1 and not _RANGE.search(sent[0]) and not _IF_RANGE.search(sent[0])
    records = [r for r in proxy.records() if r["url"].endswith(f"?{case}")]
    request = next(r for r in records if r["phase"] == "request")
    assert any(e["signal"] == "range" and "bytes=" in e["detail"] for e in request["evidence"])
    assert [r["decision"] for r in records if r["phase"] == "response"] == ["block"]


def test_a_range_on_a_page_without_an_opt_out_gets_the_whole_page(
    origin: CountingOrigin, proxy: ProxyProcess
) -> None:
    BODIES["/free.html"] = (
        b"text/html",
        b"<html><head><title>free</title></head><body>" + MARKER + b"</body>",
    )
    try:
        a = f"127.0.0.1:{origin.port}"
        got = exchange(
            proxy.port,
            [
                f"GET http://{a}/free.html HTTP/1.1\r\nHost: {a}\r\nRange: bytes=10-\r\nConnection: close\r\n\r\n".encode()
            ],
        )
        # HTTP lets a server answer a Range with the whole representation (RFC 9110 §14.2).
        assert got.startswith(b"HTTP/1.1 200") and MARKER in got and b"<title>free" in got
    finally:
        del BODIES["/free.html"]


def test_a_206_nobody_asked_for_is_withheld(liar: CountingOrigin, proxy: ProxyProcess) -> None:
    a = f"127.0.0.1:{liar.port}"
    got = exchange(
        proxy.port,
        [f"GET http://{a}/page.html?liar HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode()],
    )
    assert got.startswith(b"HTTP/1.1 451"), got[:300]
    assert MARKER not in got and b"partial-content" in got
    records = [r for r in proxy.records() if r["url"].endswith("?liar") and r["phase"] == "response"]
    assert [(r["decision"], r["signal"]) for r in records] == [("block", "partial-content")]
