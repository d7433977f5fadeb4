"""Issue 8, bounded memory: a chunked stream that never ends and a gzip bomb stay within the cap.

The proxy's peak resident memory (VmHWM) may grow by at most two caps and
64 MB over its peak before the attack; the crawler receives no byte of the
withheld content, and the audit log says so.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from pathlib import Path

from tests.adversarial.rawnet import MARKER, CountingOrigin, exchange
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess

CAP = 4 * 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def bomb() -> bytes:
    """~1 MB of gzip that decodes to 1 GiB of zeros, then the opt-out."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    out = [c.compress(b"<html><body>" + MARKER)]
    out += [c.compress(zeros) for _ in range(1024)]
    out.append(c.compress(b"<meta name=robots content=noai>") + c.flush())
    return b"".join(out)


def test_an_endless_stream_and_a_gzip_bomb_stay_within_the_cap(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    gz = bomb()

    def answer(path: str, head: bytes) -> bytes:
        if path == "/robots.txt":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        if path == "/bomb":
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: "
                    + str(len(gz)).encode() + b"\r\n\r\n" + gz)  # fmt: skip
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    origin = CountingOrigin(respond=answer)
    stream = socket.create_server(("127.0.0.1", 0))

    def endless() -> None:
        while True:
            try:
                conn, _ = stream.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    def serve(conn: socket.socket) -> None:
        with conn:
            if b"/robots.txt" in conn.recv(65536).split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % (1 << 20) + MARKER + b"x" * ((1 << 20) - len(MARKER)) + b"\r\n"
            try:
                for _ in range(512):  # 512 MB, unless the proxy hangs up first
                    conn.sendall(chunk)
            except OSError:
                return

    import threading

    threading.Thread(target=endless, daemon=True).start()
    try:
        proxy = make_proxy(write_policy(tmp_path), optout_body_cap=CAP)
        a = f"127.0.0.1:{origin.port}"
        exchange(
            proxy.port, [f"GET http://{a}/warm HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode()]
        )
        before = peak_rss(proxy.proc.pid)
        got_bomb = exchange(
            proxy.port,
            [f"GET http://{a}/bomb HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode()],
            wait=30,
        )
        s = f"127.0.0.1:{stream.getsockname()[1]}"
        got_stream = exchange(
            proxy.port,
            [f"GET http://{s}/ HTTP/1.1\r\nHost: {s}\r\nConnection: close\r\n\r\n".encode()],
            wait=30,
        )
        after = peak_rss(proxy.proc.pid)
        assert after - before <= 2 * CAP + 64 * 1024 * 1024, (before, after)
        assert MARKER not in got_bomb and got_bomb.startswith(b"HTTP/1.1 451"), got_bomb[:200]
        # mitmproxy aborts the flow once the body outgrows the cap: a 502, or a closed connection
        assert MARKER not in got_stream and (got_stream == b"" or got_stream.startswith(b"HTTP/1.1 502"))
        records = {r["url"].rsplit("/", 1)[-1]: r for r in proxy.records() if r["phase"] == "response"}
        assert records["bomb"]["withheld"] and records["bomb"]["signal"] == "body-over-cap"
        assert records[""]["withheld"] and records[""]["status"] == 502
    finally:
        origin.close()
        stream.close()
