"""Throughput and latency through bare mitmdump vs. mitmdump with our addon, side by side.

    .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 3] [--concurrency 1,8,32]

Starts, all on 127.0.0.1: one origin (asyncio, 2 KiB page, HTTP and HTTPS),
a bare `mitmdump` and `mitmdump -s proxy/addon.py` (every origin's robots.txt
already cached, `log_allowed: true` so each request also writes an audit
record). It then loads them alternately, A B A B, for each scheme and
concurrency, and prints req/s, p50 and p99 latency and the median ratio
ours/bare. Absolute figures drift ±30 % on shared machines
(shared/reference/performance.md); the ratio, measured in the same run, is
the figure to quote. Target: ours >= 0.90 x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trustme

REPO = Path(__file__).resolve().parent.parent
BODY = b"x" * 2048
ROBOTS = b"User-agent: *\nDisallow: /private\n\nUser-agent: GPTBot\nDisallow: /no-ai/\n"


class Origin:
    """A minimal keep-alive HTTP/1.1 origin; fast enough not to be the bottleneck."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                body = ROBOTS if path == b"/robots.txt" else BODY
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            async def main() -> None:
                server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await server.serve_forever()

            asyncio.run(main())

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)


def start_mitmdump(confdir: Path, ca_file: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    args = [
        sys.executable,
        "-c",
        "from mitmproxy.tools.main import mitmdump; mitmdump()",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--set",
        f"confdir={confdir}",
        "--set",
        "flow_detail=0",
        "--set",
        f"ssl_verify_upstream_trusted_ca={ca_file}",
        *extra,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"listening at .*?:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, int(m.group(1))
    raise RuntimeError("mitmdump did not start")


async def load(proxy: str, url: str, verify: ssl.SSLContext, concurrency: int, seconds: float) -> list[float]:
    """Closed-loop load: `concurrency` workers on keep-alive connections; returns latencies (s)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(proxy=proxy, verify=verify, limits=limits, trust_env=False, timeout=30) as c:
        for _ in range(concurrency):  # warm the connections (and TLS) outside the window
            await c.get(url)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.get(url)
                if r.status_code != 200:
                    raise RuntimeError(f"unexpected {r.status_code} from {url}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    http_origin, https_origin = Origin(None), Origin(server_ctx)
    http_origin.start()
    https_origin.start()

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        ca_file = t / "origin-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        (t / "registry.yaml").write_text("entries: []\n")
        policy = t / "policy.yaml"
        policy.write_text(
            "agent: ExampleBot\nhonor_agents: [GPTBot, CCBot]\nregistries: [registry.yaml]\n"
            "audit: {path: audit.jsonl, log_allowed: true}\n"
            # the origin is on loopback, which the shipped policy keeps crawlers away from
            "private_addresses: allow\n"
        )
        (t / "bare").mkdir()
        (t / "ours").mkdir()
        bare, bare_port = start_mitmdump(t / "bare", ca_file, [])
        ours, ours_port = start_mitmdump(
            t / "ours",
            ca_file,
            ["-s", str(REPO / "proxy" / "addon.py"), "--set", f"optout_policy={policy}"],
        )
        proxies = {"bare": f"http://127.0.0.1:{bare_port}", "ours": f"http://127.0.0.1:{ours_port}"}
        try:
            print(
                f"{'scheme':<6} {'conc':>4} {'proxy':<5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}",
                file=sys.stderr,
            )
            summary = []
            for scheme, origin in (("http", http_origin), ("https", https_origin)):
                url = f"{scheme}://localhost:{origin.port}/page"
                for conc in levels:
                    rates: dict[str, list[float]] = {"bare": [], "ours": []}
                    lats: dict[str, list[float]] = {"bare": [], "ours": []}
                    for _ in range(args.rounds):
                        for name in ("bare", "ours"):
                            verify = ssl.create_default_context(
                                cafile=str(t / name / "mitmproxy-ca-cert.pem")
                            )
                            got = asyncio.run(load(proxies[name], url, verify, conc, args.seconds))
                            rates[name].append(len(got) / args.seconds)
                            lats[name].extend(got)
                    ratios = [o / b for o, b in zip(rates["ours"], rates["bare"], strict=True)]
                    for name in ("bare", "ours"):
                        print(
                            f"{scheme:<6} {conc:>4} {name:<5} {statistics.median(rates[name]):>8.0f} "
                            f"{pct(lats[name], 0.5) * 1e3:>8.2f} {pct(lats[name], 0.99) * 1e3:>8.2f}"
                        )
                    ratio = statistics.median(ratios)
                    summary.append((scheme, conc, ratio))
                    print(
                        f"{scheme:<6} {conc:>4} ratio ours/bare (median of {args.rounds} paired rounds): "
                        f"{ratio:.3f}"
                    )
            overall = statistics.median(r for _, _, r in summary)
            print(f"overall median ratio ours/bare: {overall:.3f} (target >= 0.90)")
            records = (t / "audit.jsonl").read_bytes().count(b"\n")
            print(f"audit records written by ours during the run: {records}")
        finally:
            for proc in (bare, ours):
                proc.terminate()
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
