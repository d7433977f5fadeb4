"""Throughput, latency and CPU per request through bare mitmdump vs. mitmdump with our addon, side by side.

    .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 3] [--concurrency 1,8,32]
                                         [--kinds text,html,media,bigrobots] [--kind-concurrency 8]

Page kinds: `text` (a 2 KiB text/plain page, at every --concurrency level),
`html` (a 20 KB HTML page with its meta tags in the head), `media` (a JPEG
carrying an XMP packet, which is inspected) and `bigrobots` (a text page on an
origin whose robots.txt holds 5,000 rules, 2,100 of them wildcards); the
last three at --kind-concurrency. For each row it also prints the CPU time the
proxy process spent per request (from /proc), and ours minus bare: the extra
cost of our addon (target: 150 µs or less).

Starts, all on 127.0.0.1: one origin (asyncio, HTTP and HTTPS),
a bare `mitmdump`, `mitmdump -s bench/floor_addon.py` (a do-nothing addon
with our per-request hooks: the floor mitmproxy's hook dispatch puts under
any addon) and `mitmdump -s proxy/addon.py` (every origin's robots.txt
already cached, `log_allowed: true` so each request also writes an audit
record). It then loads them in turn, A B C A B C, for each scheme and
concurrency, and prints req/s, p50 and p99 latency and the median ratio
ours/bare. Absolute figures drift ±30 % on shared machines
(bench/RESULTS.md has runs side by side); the ratio, measured in the same run, is
the figure to quote. Target: ours >= 0.90 x bare. Load comes from wrk
(plain HTTP) and hey (HTTPS through CONNECT) when installed, else httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
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


def _html_page() -> bytes:
    head = (
        b"<!doctype html><html lang=en><head><meta charset=utf-8><title>An article</title>"
        b'<meta name="viewport" content="width=device-width"><meta name="description" content="news">'
        b'<meta name="robots" content="index, follow"><link rel="canonical" href="/article.html">'
        b'<link rel="stylesheet" href="/s.css"><script src="/a.js"></script></head><body>'
    )
    para = b"<p>Lorem ipsum dolor sit amet, <a href='/x'>consectetur</a> adipiscing elit. " * 4 + b"</p>\n"
    body = head
    while len(body) < 20_000:
        body += para
    return body + b"</body></html>"


def _jpeg_with_xmp() -> bytes:
    xmp = (
        b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" plus:DataMining="http://ns.useplus.org/ldf/vocab/'
        b'DMI-UNSPECIFIED"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    app1 = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    return b"\xff\xd8" + segment + b"\xff\xdb" + b"\x00\x43" + bytes(65) + b"\x00" * 30_000 + b"\xff\xd9"


def _big_robots() -> bytes:
    lines = [b"User-agent: *"]
    for i in range(2900):
        lines.append(b"Disallow: /private/section-%d/" % i)
    for i in range(2100):
        lines.append(b"Disallow: /*/tmp-%d/*.php$" % i)
    return b"\n".join(lines) + b"\n"


HTML = _html_page()
JPEG = _jpeg_with_xmp()
BIG_ROBOTS = _big_robots()
# path -> (content type, body); the robots.txt depends on the origin
ROUTES = {
    b"/page": (b"text/plain", BODY),
    b"/article.html": (b"text/html; charset=utf-8", HTML),
    b"/photo.jpg": (b"image/jpeg", JPEG),
}
KIND_PATH = {"text": "/page", "html": "/article.html", "media": "/photo.jpg", "bigrobots": "/page"}


class Origin:
    """A minimal keep-alive HTTP/1.1 origin; fast enough not to be the bottleneck."""

    def __init__(self, tls: ssl.SSLContext | None, robots: bytes = ROBOTS) -> None:
        self.tls = tls
        self.robots = robots
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                ctype, body = (
                    (b"text/plain", self.robots)
                    if path == b"/robots.txt"
                    else ROUTES.get(path, (b"text/plain", BODY))
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: "
                    + ctype
                    + b"\r\nContent-Length: "
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


def start_mitmdump(
    confdir: Path, ca_file: Path | None, extra: list[str]
) -> tuple[subprocess.Popen[str], int]:
    """mitmdump on 127.0.0.1 (port chosen by the OS) with `extra` arguments; returns (process, port)."""
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
        *(["--set", f"ssl_verify_upstream_trusted_ca={ca_file}"] if ca_file else []),
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


_WRK_SCRIPT = """
wrk.path = "{url}"
wrk.headers["Host"] = "{host}"
"""


def load_wrk(proxy_port: int, url: str, concurrency: int, seconds: float) -> tuple[int, float, float]:
    """Closed-loop load from wrk (C), sending absolute-form requests to the proxy.

    Returns (requests completed, p50 s, p99 s). Plain HTTP only: wrk cannot CONNECT.
    """
    host = url.split("/")[2]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT.format(url=url, host=host))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", f.name, f"http://127.0.0.1:{proxy_port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(f.name)
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")

    def quantile(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]

    return done, quantile("50"), quantile("99")


def load_hey(
    proxy_port: int, url: str, ca_file: Path, concurrency: int, seconds: float
) -> tuple[int, float, float]:
    """Closed-loop load from hey (Go, Debian's package) through the proxy with CONNECT: the HTTPS rows'
    load generator when installed (the Python one spends as much CPU as the proxy it measures).

    Returns (requests completed, p50 s, p99 s). `ca_file` is the proxy's CA (Go reads SSL_CERT_FILE).
    """
    out = subprocess.run(
        ["hey", "-z", f"{max(1, round(seconds))}s", "-c", str(concurrency), "-x", f"http://127.0.0.1:{proxy_port}", url],
        capture_output=True, text=True, check=True, env={**os.environ, "SSL_CERT_FILE": str(ca_file)},
    ).stdout  # fmt: skip
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    if set(codes) != {"200"} or "Error distribution" in out:
        raise RuntimeError(f"hey saw errors from {url}:\n{out}")

    def quantile(q: str) -> float:
        m = re.search(rf"^\s+{q}% in ([\d.]+) secs", out, re.M)
        return float(m.group(1)) if m else float("nan")

    return int(codes["200"]), quantile("50"), quantile("99")


def write_bench_policy(folder: Path) -> Path:
    """The benches' policy in `folder` (an empty registry beside it): every signal on, each request
    audited (`log_allowed: true`), loopback allowed (the origins run there)."""
    (folder / "registry.yaml").write_text("entries: []\n")
    policy = folder / "policy.yaml"
    policy.write_text(
        "agent: ExampleBot\nhonor_agents: [GPTBot, CCBot]\nregistries: [registry.yaml]\n"
        "audit: {path: audit.jsonl, log_allowed: true}\n"
        # the origin is on loopback, which the shipped policy keeps crawlers away from
        "private_addresses: allow\n"
    )
    return policy


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,32", help="levels for the text page")
    parser.add_argument("--kinds", default="text,html,media,bigrobots")
    parser.add_argument("--kind-concurrency", default="8", help="levels for the other kinds")
    parser.add_argument(
        "--load", choices=("auto", "python", "wrk"), default="auto",
        help="load generators: wrk (C) for plain HTTP and hey (Go) for HTTPS, Debian's packages, when "
        "installed (auto); python: httpx for both",
    )  # fmt: skip
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    kind_levels = [int(x) for x in args.kind_concurrency.split(",")]
    kinds = args.kinds.split(",")
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    use_hey = args.load != "python" and shutil.which("hey") is not None

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    origins = {
        ("http", False): Origin(None),
        ("https", False): Origin(server_ctx),
        ("http", True): Origin(None, BIG_ROBOTS),
        ("https", True): Origin(server_ctx, BIG_ROBOTS),
    }
    for origin in origins.values():
        origin.start()

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        ca_file = t / "origin-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        policy = write_bench_policy(t)
        (t / "bare").mkdir()
        (t / "ours").mkdir()
        (t / "floor").mkdir()
        bare, bare_port = start_mitmdump(t / "bare", ca_file, [])
        floor, floor_port = start_mitmdump(
            t / "floor", ca_file, ["-s", str(REPO / "bench" / "floor_addon.py")]
        )
        ours, ours_port = start_mitmdump(
            t / "ours",
            ca_file,
            ["-s", str(REPO / "proxy" / "addon.py"), "--set", f"optout_policy={policy}"],
        )
        proxies = {
            "bare": f"http://127.0.0.1:{bare_port}",
            "floor": f"http://127.0.0.1:{floor_port}",
            "ours": f"http://127.0.0.1:{ours_port}",
        }
        pids = {"bare": bare.pid, "floor": floor.pid, "ours": ours.pid}
        names = ("bare", "floor", "ours")
        try:
            print(
                f"load generator for http: {'wrk' if use_wrk else 'httpx'}; for https: {'hey' if use_hey else 'httpx'}"
            )
            print(
                f"{'kind':<9} {'scheme':<6} {'conc':>4} {'proxy':<5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'cpu µs/req':>10}"
            )
            summary = []
            for kind in kinds:
                for scheme in ("http", "https"):
                    origin = origins[(scheme, kind == "bigrobots")]
                    url = f"{scheme}://localhost:{origin.port}{KIND_PATH[kind]}"
                    for conc in levels if kind == "text" else kind_levels:
                        rates: dict[str, list[float]] = {n: [] for n in names}
                        lats: dict[str, list[float]] = {n: [] for n in names}
                        cpu: dict[str, list[float]] = {n: [] for n in names}
                        for _ in range(args.rounds):
                            for name in names:
                                verify = ssl.create_default_context(
                                    cafile=str(t / name / "mitmproxy-ca-cert.pem")
                                )
                                before = cpu_seconds(pids[name])
                                if use_wrk and scheme == "http":
                                    done, p50, p99 = load_wrk(int(proxies[name].rsplit(":", 1)[1]), url, conc,
                                                              args.seconds)  # fmt: skip
                                    got = [p50] * (done // 2) + [p99] * (done - done // 2) if done else []
                                elif use_hey and scheme == "https":
                                    done, p50, p99 = load_hey(int(proxies[name].rsplit(":", 1)[1]), url,
                                                              t / name / "mitmproxy-ca-cert.pem", conc, args.seconds)  # fmt: skip
                                    got = [p50] * (done // 2) + [p99] * (done - done // 2) if done else []
                                else:
                                    got = asyncio.run(load(proxies[name], url, verify, conc, args.seconds))
                                used = cpu_seconds(pids[name]) - before
                                rates[name].append(len(got) / args.seconds)
                                lats[name].extend(got)
                                cpu[name].append(used / max(1, len(got) + conc) * 1e6)
                        ratios = [o / b for o, b in zip(rates["ours"], rates["bare"], strict=True)]
                        floors = [f / b for f, b in zip(rates["floor"], rates["bare"], strict=True)]
                        for name in names:
                            print(
                                f"{kind:<9} {scheme:<6} {conc:>4} {name:<5} {statistics.median(rates[name]):>8.0f} "
                                f"{pct(lats[name], 0.5) * 1e3:>8.2f} {pct(lats[name], 0.99) * 1e3:>8.2f} "
                                f"{statistics.median(cpu[name]):>10.0f}"
                            )
                        ratio = statistics.median(ratios)
                        extra = statistics.median(cpu["ours"]) - statistics.median(cpu["bare"])
                        floor_extra = statistics.median(cpu["floor"]) - statistics.median(cpu["bare"])
                        summary.append(
                            (kind, scheme, conc, ratio, extra, statistics.median(floors), floor_extra)
                        )
                        print(
                            f"{kind:<9} {scheme:<6} {conc:>4} ratio ours/bare (median of {args.rounds} paired "
                            f"rounds): {ratio:.3f}; extra CPU {extra:.0f} µs/request; do-nothing addon "
                            f"{statistics.median(floors):.3f}, {floor_extra:.0f} µs/request"
                        )
            overall = statistics.median(row[3] for row in summary)
            floor_overall = statistics.median(row[5] for row in summary)
            print(
                f"overall median ratio ours/bare: {overall:.3f} (target >= 0.90); "
                f"do-nothing addon/bare: {floor_overall:.3f}"
            )
            for kind in kinds:
                rows = [row for row in summary if row[0] == kind]
                print(
                    f"  {kind:<9} median ratio {statistics.median(r[3] for r in rows):.3f}, "
                    f"extra CPU {statistics.median(r[4] for r in rows):.0f} µs/request (target <= 150); "
                    f"do-nothing addon {statistics.median(r[5] for r in rows):.3f}, "
                    f"{statistics.median(r[6] for r in rows):.0f} µs/request"
                )
            records = (t / "audit.jsonl").read_bytes().count(b"\n")
            print(f"audit records written by ours during the run: {records}")
        finally:
            for proc in (bare, floor, ours):
                proc.terminate()
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
