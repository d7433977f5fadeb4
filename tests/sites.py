"""Real HTTP(S) origin servers on 127.0.0.1 for the tests.

A `Site` serves a table of routes from a ThreadingHTTPServer in a thread and
counts the hits on each path, so tests can assert how often the proxy fetched
a robots.txt. A route is a `Reply`, or a callable that writes the answer itself
(for hangs, slow bodies and redirect chains).
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)

    def data(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


Handler = Callable[[BaseHTTPRequestHandler], None]


class Site:
    """An origin server with routes; `url(path)` gives its absolute URLs."""

    def __init__(
        self,
        routes: dict[str, Reply | Handler] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.routes: dict[str, Reply | Handler] = dict(routes or {})
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        site = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the
            # peer's delayed ACK of the headers (~40 ms per request on a kept-alive connection).
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                with site.lock:
                    site.hits[path.split("?")[0]] += 1
                    site.requests.append(
                        {"path": path, "headers": dict(self.headers), "at": time.monotonic()}
                    )
                route = site.routes.get(path) or site.routes.get(path.split("?")[0])
                if route is None:
                    route = Reply(404, "not found\n")
                if callable(route):
                    route(self)
                    return
                data = route.data()
                try:
                    self.send_response(route.status)
                    headers = {"Content-Type": "text/plain", **route.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer((host, 0), _Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
