"""An origin answer mitmproxy cannot read must not come back to the client inside an error page.

mitmproxy answers an unreadable origin response with its own 502 page, which
quotes the bytes it could not read (HTML-escaped, but the words intact): a
page with a `noai` meta, sent without a status line, reached the client whole
that way, unjudged and unrecorded. Each case here sends such an answer from a
raw-socket origin through a real proxy: the marker must never reach the
client, and the audit log must say the response was withheld and why.
"""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.adversarial.rawnet import MARKER, exchange
from tests.proxyproc import ProxyProcess

PAGE = (
    b"<!doctype html><html><head><meta name=robots content=noai><title>t</title></head><body>"
    + MARKER
    + b"</body></html>"
)
ROBOTS = b"User-agent: *\nAllow: /\n"

# name -> (bytes the origin sends, close the connection afterwards)
ANSWERS = {
    "no-status-line-then-close": (PAGE * 50, True),
    "no-status-line-large": (PAGE * 8000, True),
    "no-status-line-blank-line": (PAGE + b"\r\n\r\n", False),
    "page-where-headers-belong": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" + PAGE + b"\r\n\r\n",
        False,
    ),
    "content-in-a-header-name": (
        b"HTTP/1.1 200 OK\r\nX-Note " + MARKER + b": 1\r\nContent-Length: 0\r\n\r\n",
        False,
    ),
    "head-cut-short": (b"HTTP/1.1 200 OK\r\nX-Robots-Tag: noai\r\nX-Body: " + MARKER, True),
    "content-as-length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: " + MARKER + b"\r\n\r\n" + PAGE,
        False,
    ),
    "page-as-chunk-size": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        + PAGE
        + b"\r\n0\r\n\r\n",
        False,
    ),
}


class Origin:
    """Answers /robots.txt properly and every other path with ANSWERS[query], as raw bytes."""

    def __init__(self) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    buf += data
                path = buf.split(b" ", 2)[1].decode()
                if path == "/robots.txt":
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(ROBOTS), ROBOTS)
                    )
                    return
                data, close = ANSWERS[path.split("?", 1)[1]]
                self.request.sendall(data)
                if not close:
                    self.request.settimeout(5)
                    with contextlib.suppress(OSError):
                        self.request.recv(1)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.server.shutdown()
    o.server.server_close()


# mitmproxy 11.0 sends this one's 502 (it quotes the header name) right after the error hook,
# without looking whether an addon killed the flow (HttpStream.check_invalid): no hook can stop it.
# A header name is at most one token of content, and no real server puts its page there.
QUOTED_AFTER_THE_HOOK = {"content-in-a-header-name"}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c, marks=pytest.mark.xfail(strict=True, reason="mitmproxy quotes an invalid header name; no hook")
        )
        if c in QUOTED_AFTER_THE_HOOK
        else c
        for c in ANSWERS
    ],
)
def test_an_unreadable_answer_is_never_quoted_back(case: str, origin: Origin, proxy: ProxyProcess) -> None:
    a = f"127.0.0.1:{origin.port}"
    got = exchange(
        proxy.port,
        [f"GET http://{a}/page?{case} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode()],
        wait=4,
    )
    assert MARKER not in got, got[:400]
    records = [r for r in proxy.records() if r["url"].endswith(f"?{case}")]
    assert [r["phase"] for r in records] == ["request", "response"], records
    response = records[1]
    assert (response["decision"], response["signal"], response["withheld"]) == ("block", "bad-response", True)
    assert MARKER.decode() not in str(response)  # the record names the failure, not what the origin sent


def test_an_origin_that_cannot_be_reached_still_gets_mitmproxys_502(proxy: ProxyProcess) -> None:
    """No connection, no origin bytes to quote: the client keeps mitmproxy's 502 that says why."""
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as closed:
        port = closed.server_address[1]
    # A port nobody listens on (robots.txt unreachable blocks first, so ask for it directly: allowed).
    a = f"127.0.0.1:{port}"
    got = exchange(
        proxy.port, [f"GET http://{a}/robots.txt HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode()]
    )
    assert got.startswith(b"HTTP/1.1 502"), got[:300]
