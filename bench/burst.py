"""A burst of requests to many new origins at once: false blocks, fetches per origin, latency.

    .venv/bin/python bench/burst.py [--origins 200] [--concurrency 200,1000] [--robots-delay 0.2]

Starts, all on 127.0.0.1: `--origins` origins (one asyncio server each, in a
thread; robots.txt answers after `--robots-delay` seconds, like a far-away
site) and, for each concurrency level, a fresh `mitmdump -s proxy/addon.py`
whose cache is cold. It then sends `concurrency` requests at once, spread
evenly over the origins, every one of them allowed by the origins' robots.txt.
Prints, per level: how many answers were not 200 (451s are false blocks:
target 0), the robots.txt fetches each origin saw (target exactly 1), and
p50/p99 latency. Nothing here is a test; the figures are for the notes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from throughput import start_mitmdump  # bench/ is the script's folder

REPO = Path(__file__).resolve().parent.parent
ROBOTS = b"User-agent: *\nDisallow: /private\n"


class Origins:
    """Many keep-alive HTTP/1.1 origins in one event loop, counting robots.txt fetches per port."""

    def __init__(self, count: int, robots_delay: float) -> None:
        self.count = count
        self.delay = robots_delay
        self.ports: list[int] = []
        self.robots: collections.Counter[int] = collections.Counter()

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            async def main() -> None:
                for _ in range(self.count):
                    server = await asyncio.start_server(self._handler(), "127.0.0.1", 0, backlog=1024)
                    self.ports.append(server.sockets[0].getsockname()[1])
                ready.set()
                await asyncio.Event().wait()

            asyncio.run(main())

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(30)

    def _handler(self):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            port = writer.get_extra_info("sockname")[1]
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1]
                    if path == b"/robots.txt":
                        self.robots[port] += 1
                        await asyncio.sleep(self.delay)
                        body = ROBOTS
                    else:
                        body = b"page"
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        return handle


def start_proxy(workdir: Path) -> tuple[subprocess.Popen[str], int]:
    (workdir / "registry.yaml").write_text("entries: []\n")
    policy = workdir / "policy.yaml"
    policy.write_text(
        "agent: ExampleBot\nregistries: [registry.yaml]\naudit: {path: audit.jsonl, log_allowed: true}\n"
        "private_addresses: allow\n"  # the origins are on loopback
    )
    return start_mitmdump(
        workdir, None, ["-s", str(REPO / "proxy" / "addon.py"), "--set", f"optout_policy={policy}"]
    )


async def burst(proxy: str, urls: list[str]) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=len(urls))
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=120, limits=limits) as c:

        async def one(url: str) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                r = await c.get(url)
                return r.status_code, time.perf_counter() - t0
            except httpx.HTTPError:
                return 0, time.perf_counter() - t0

        return await asyncio.gather(*(one(u) for u in urls))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--origins", type=int, default=200)
    parser.add_argument("--concurrency", default="200,1000")
    parser.add_argument("--robots-delay", type=float, default=0.2)
    args = parser.parse_args()
    print(
        f"{'conc':>5} {'origins':>7} {'200':>5} {'451':>5} {'other':>5} {'robots/origin':>14} {'p50 ms':>8} {'p99 ms':>8}"
    )
    worst = 0
    for conc in (int(x) for x in args.concurrency.split(",")):
        origins = Origins(args.origins, args.robots_delay)
        origins.start()
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_proxy(Path(tmp))
            try:
                urls = [
                    f"http://127.0.0.1:{origins.ports[i % len(origins.ports)]}/page/{i}" for i in range(conc)
                ]
                results = asyncio.run(burst(f"http://127.0.0.1:{port}", urls))
            finally:
                proc.terminate()
                proc.wait(10)
        codes = collections.Counter(code for code, _ in results)
        lat = sorted(t for _, t in results)
        fetches = [origins.robots[p] for p in origins.ports]
        per = f"{min(fetches)}..{max(fetches)}" if min(fetches) != max(fetches) else str(fetches[0])
        other = len(results) - codes[200] - codes[451]
        print(
            f"{conc:>5} {len(origins.ports):>7} {codes[200]:>5} {codes[451]:>5} {other:>5} {per:>14} "
            f"{statistics.median(lat) * 1e3:>8.0f} {lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3:>8.0f}"
        )
        worst = max(worst, codes[451] + other)
    print(f"false blocks or errors: {worst} (target 0)")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
