"""Hostile origins against one proxy while a healthy cached origin is loaded.

    .venv/bin/python bench/attack.py [--cap 33554432] [--seconds 6]

Starts, all on 127.0.0.1: a healthy origin (2 KiB text page, cached by the
proxy before anything starts), four hostile ones, and one
`mitmdump -s proxy/addon.py` with `optout_body_cap` = --cap. For each attack,
a closed-loop load (8 connections) on the healthy origin runs for --seconds
while the attack is sent (repeatedly, a few at a time):

* gzip-bomb: 1 MiB of gzip that decodes to 1 GiB, HTML with a marker;
* endless-stream: a chunked HTML body of 512 MiB with the marker in every chunk;
* huge-robots: a 100 MiB robots.txt (a fresh origin each time);
* drip-robots: a robots.txt sent one byte a second (a fresh origin each time).

Each attack request is sent when the previous one has ended (the proxy's
answer read to its end), so one attack flow is in the proxy at a time.

Prints the healthy origin's p50/p99 idle and during each attack (target: p99
at most 3 x idle), the proxy's peak RSS against its idle RSS (target: at most
idle + 2 x cap + 64 MB), and whether any marker byte reached a client (target:
never). Figures for the notes; nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
MARKER = b"ATTACK-MARKER-91c2"


ATTACKS = ("gzip-bomb", "endless-stream", "huge-robots", "drip-robots")


def reset_peak(pid: int) -> None:
    """Start VmHWM (peak RSS) afresh (Linux: clear_refs 5), so one attack's peak is not the last one's."""
    with contextlib.suppress(OSError):  # not permitted here: the peaks printed are then cumulative
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def gzip_bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return c.compress(b"<html><body>" + MARKER) + b"".join(c.compress(zeros) for _ in range(1024)) + c.flush()


class Hostile:
    """One listening socket per attack; every connection is served by `serve(conn, request_line)`."""

    def __init__(self) -> None:
        self.bomb = gzip_bomb()
        self.sockets = {name: socket.create_server(("127.0.0.1", 0), backlog=256) for name in
                        ("healthy", "gzip-bomb", "endless-stream", "huge-robots", "drip-robots")}  # fmt: skip
        for name, sock in self.sockets.items():
            threading.Thread(target=self._accept, args=(name, sock), daemon=True).start()

    def port(self, name: str) -> int:
        return int(self.sockets[name].getsockname()[1])

    def fresh(self, name: str) -> int:
        """A new origin (a new port) serving attack `name`: a robots.txt is fetched once per origin."""
        sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        threading.Thread(target=self._accept, args=(name, sock), daemon=True).start()
        return int(sock.getsockname()[1])

    def _accept(self, name: str, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._serve, args=(name, conn), daemon=True).start()

    def _serve(self, name: str, conn: socket.socket) -> None:
        try:
            with conn:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    path = head.split(b" ", 2)[1]
                    if not self._answer(name, path, conn):
                        return
        except OSError:
            return

    def _answer(self, name: str, path: bytes, conn: socket.socket) -> bool:
        if path == b"/robots.txt" and name == "huge-robots":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (100 << 20))
            line = b"Disallow: /x" + b"y" * 80 + b"\n"
            for _ in range((100 << 20) // len(line)):
                conn.sendall(line)
            return False
        if path == b"/robots.txt" and name == "drip-robots":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nUser-agent: *\n")
            for _ in range(100):
                conn.sendall(b"#")
                time.sleep(1)
            return False
        if path == b"/robots.txt":
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        if name == "gzip-bomb":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(self.bomb) + self.bomb)  # fmt: skip
            return True
        if name == "endless-stream":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % (1 << 20) + MARKER + b"x" * ((1 << 20) - len(MARKER)) + b"\r\n"
            for _ in range(512):
                conn.sendall(chunk)
            conn.sendall(b"0\r\n\r\n")
            return False
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2048\r\n\r\n" + b"x" * 2048
        )
        return True


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


async def healthy_load(proxy: str, url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=30) as c:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await c.get(url)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(8)))
    return latencies


async def attack(proxy: str, hostile: Hostile, name: str, seconds: float) -> bytes:
    """Send the attack one at a time, each to its end, for `seconds`; every byte the client received."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    n = 0
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=httpx.Timeout(60)) as c:
        while time.monotonic() < deadline:
            n += 1
            # a robots.txt is fetched once per origin: those attacks need a new origin each time
            port = hostile.fresh(name) if name.endswith("robots") else hostile.port(name)
            url = f"http://127.0.0.1:{port}/page-{n}"
            try:
                async with c.stream("GET", url) as r:
                    async for chunk in r.aiter_raw():
                        received += chunk
            except httpx.HTTPError:
                pass
    return bytes(received)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cap", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"which to run, comma-separated (of {', '.join(ATTACKS)})",
    )
    args = parser.parse_args()
    hostile = Hostile()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "registry.yaml").write_text("entries: []\n")
        policy = t / "policy.yaml"
        policy.write_text("agent: ExampleBot\nregistries: [registry.yaml]\naudit: {path: audit.jsonl}\n"
                          "private_addresses: allow\n")  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", "-s",
             str(REPO / "proxy" / "addon.py"), "--listen-host", "127.0.0.1", "--listen-port", "0",
             "--set", f"confdir={t}", "--set", "flow_detail=0", "--set", f"optout_policy={policy}",
             "--set", f"optout_body_cap={args.cap}", "--set", "optout_fetch_timeout=2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )  # fmt: skip
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = re.search(r"listening at .*?:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        proxy = f"http://127.0.0.1:{port}"
        healthy = f"http://127.0.0.1:{hostile.port('healthy')}/page"
        try:
            asyncio.run(healthy_load(proxy, healthy, 1.0))  # cache the healthy origin
            idle = asyncio.run(healthy_load(proxy, healthy, args.seconds))
            idle_rss = rss(proc.pid, "VmRSS")
            print(f"idle: healthy p50 {pct(idle, 0.5) * 1e3:.1f} ms, p99 {pct(idle, 0.99) * 1e3:.1f} ms; "
                  f"proxy RSS {idle_rss / 2**20:.0f} MiB; cap {args.cap / 2**20:.0f} MiB")  # fmt: skip
            leaked = False
            worst = 0.0
            overall_peak = 0
            for name in args.attacks.split(","):
                reset_peak(proc.pid)  # each row's peak is its own attack's

                async def both(name: str = name) -> tuple[list[float], bytes]:
                    lat, got = await asyncio.gather(
                        healthy_load(proxy, healthy, args.seconds), attack(proxy, hostile, name, args.seconds)
                    )
                    return lat, got

                lat, got = asyncio.run(both())
                leaked |= MARKER in got
                ratio = pct(lat, 0.99) / pct(idle, 0.99)
                worst = max(worst, ratio)
                peak = rss(proc.pid, "VmHWM")
                overall_peak = max(overall_peak, peak)
                print(f"{name:<15} healthy p50 {pct(lat, 0.5) * 1e3:7.1f} ms  p99 {pct(lat, 0.99) * 1e3:7.1f} ms "
                      f"({ratio:.1f} x idle)  peak RSS {peak / 2**20:.0f} MiB  "
                      f"marker delivered: {'YES' if MARKER in got else 'no'}")  # fmt: skip
            bound = idle_rss + 2 * args.cap + 64 * 2**20
            print(f"peak RSS {overall_peak / 2**20:.0f} MiB (target <= {bound / 2**20:.0f} MiB); worst p99 {worst:.1f} x idle "
                  f"(target <= 3); marker delivered: {'YES' if leaked else 'never'}")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
