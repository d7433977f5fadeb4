"""Raw sockets for the adversarial tests: an origin that counts connections, a client that sends bytes as written.

Clients such as httpx normalise what they send (paths, Host, framing); an
attacker does not. These helpers put exact bytes on the wire and give back
every byte the proxy sent, so a test can assert that a marker never appears.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

MARKER = b"OPTED-OUT-MARKER-7f3a"


class _Origin:
    """A threaded TCP server on loopback that counts connections and records (path, detail) per request."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _serve(self, handler: type[socketserver.BaseRequestHandler], host: str = "127.0.0.1") -> None:
        self.server = socketserver.ThreadingTCPServer((host, 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingOrigin(_Origin):
    """An HTTP/1.1 origin on 127.0.0.1 that counts accepted connections and requests.

    `respond(path, head)` returns the whole response (bytes); the default serves
    `robots` at /robots.txt and the marker everywhere else.
    """

    def __init__(
        self,
        robots: str = "User-agent: *\nDisallow: /private\n",
        respond: Callable[[str, bytes], bytes] | None = None,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__()
        origin = self

        def default(path: str, head: bytes) -> bytes:
            body = robots.encode() if path == "/robots.txt" else b"content " + MARKER + b"\n"
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip

        answer = respond or default

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with origin.lock:
                    origin.connections += 1
                sock = self.request
                if tls is not None:
                    try:
                        sock = tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                sock.settimeout(10)
                buf = b""
                while True:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                    while b"\r\n\r\n" in buf:
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        line = head.split(b"\r\n", 1)[0].decode("latin-1")
                        parts = line.split(" ")
                        path = parts[1] if len(parts) > 1 else ""
                        with origin.lock:
                            origin.requests.append((path, head))
                        try:
                            sock.sendall(answer(path, head))
                        except OSError:
                            return

        self._serve(Handler, host)

    def content_requests(self) -> list[str]:
        """Requests for anything but the policy documents."""
        docs = ("/robots.txt", "/ai.txt", "/.well-known/tdmrep.json", "/.well-known/ai.txt")
        return [p for p in self.paths() if p not in docs]


def exchange(port: int, chunks: list[bytes], *, wait: float = 3.0, pause: float = 0.2) -> bytes:
    """Send `chunks` to the proxy at 127.0.0.1:`port` (pausing between them); every byte received."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        for chunk in chunks:
            s.sendall(chunk)
            time.sleep(pause)
        return read_all(s, wait)


def read_all(s: socket.socket | ssl.SSLSocket, wait: float) -> bytes:
    """Read until the peer closes or `wait` seconds pass without a byte."""
    s.settimeout(wait)
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            return out
        if not data:
            return out
        out += data


def tunnel(
    port: int, authority: str, *, sni: str | None = None, ca: str | None = None
) -> socket.socket | ssl.SSLSocket:
    """CONNECT through the proxy; with `ca`, TLS inside the tunnel (SNI `sni`). Raises on a refused CONNECT."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(1)
        if not data:
            break
        head += data
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        s.close()
        raise ConnectionRefusedError(head.decode("latin-1"))
    if ca is None:
        return s
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    return ctx.wrap_socket(s, server_hostname=sni)


class H2Origin(_Origin):
    """An HTTPS origin that speaks only HTTP/2 (ALPN h2), counting connections and requests.

    Serves `robots` at /robots.txt and the marker elsewhere; records (path, :authority).
    """

    def __init__(
        self, tls_cert: Callable[[ssl.SSLContext], None], robots: str = "User-agent: *\nDisallow: /private\n"
    ) -> None:
        import h2.config
        import h2.connection
        import h2.events

        super().__init__()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_cert(ctx)
        ctx.set_alpn_protocols(["h2"])
        origin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with origin.lock:
                    origin.connections += 1
                try:
                    sock = ctx.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                if sock.selected_alpn_protocol() != "h2":
                    sock.close()
                    return
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                sock.settimeout(10)
                while True:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                                       for k, v in event.headers}  # fmt: skip
                            path = headers.get(":path", "")
                            with origin.lock:
                                origin.requests.append((path, headers.get(":authority", "")))
                            body = robots.encode() if path == "/robots.txt" else b"content " + MARKER + b"\n"
                            conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "text/plain"),
                                                                ("content-length", str(len(body)))])  # fmt: skip
                            conn.send_data(event.stream_id, body, end_stream=True)
                    sock.sendall(conn.data_to_send())

        self._serve(Handler)


def h2_get(proxy_port: int, authority: str, path: str, ca: str, *, sni: str = "localhost",
           header_authority: str | None = None, fields: Sequence[tuple[str, str]] = ()
           ) -> tuple[int, bytes, str]:  # fmt: skip
    """One HTTP/2 GET through a CONNECT tunnel; returns (status, body, ALPN the proxy chose).

    Sends what it is given, malformed or not (`fields` after the pseudo-headers).
    """
    import h2.config
    import h2.connection
    import h2.events

    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 200" in head.split(b"\r\n", 1)[0], head
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(s, server_hostname=sni)
    alpn = tls.selected_alpn_protocol() or ""
    config = h2.config.H2Configuration(validate_outbound_headers=False, normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                          (":authority", header_authority or authority), *fields], end_stream=True)  # fmt: skip
    tls.sendall(conn.data_to_send())
    status, body = 0, b""
    tls.settimeout(10)
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            done = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
            tls.sendall(conn.data_to_send())
            if done:
                break
    finally:
        tls.close()
    return status, body, alpn
