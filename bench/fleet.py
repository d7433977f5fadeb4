"""Fleet figures: what Redis costs per request, and what a second worker buys, side by side.

    .venv/bin/python bench/fleet.py [--seconds 5] [--rounds 3] [--concurrency 8] [--cold 50]

Starts, all on 127.0.0.1: an origin (asyncio), a real `redis-server`, and
then, in turn:

1. `mitmdump -s proxy/addon.py` with `shared_state: memory` and the same with
   `shared_state: redis://...`, loaded A B A B ... with wrk on a cached origin:
   req/s and CPU per request of each, and the ratio redis/memory
   (target: CPU per request with Redis <= 1.10 x memory).
2. Redis operations per request, from Redis's own `total_commands_processed`:
   on the cached origin (target: 0, the in-process cache answers), and on
   `--cold` new origins, one request each (the first fetch of each document).
3. `optout-proxy run --workers 1` and `--workers 2` (memory), loaded with wrk:
   req/s of each and the ratio. This machine has 2 cores and wrk itself takes
   a good part of one, so two workers cannot double anything here; the figure
   says what the second core gives with the load generator on the same machine.

Figures drift on shared machines; the ratios, measured in the same run, are
the ones to quote (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from throughput import Origin, cpu_seconds, load_wrk, start_mitmdump  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def write_policy(folder: Path, shared_state: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.yaml").write_text("entries: []\n")
    policy = folder / "policy.yaml"
    policy.write_text(
        "agent: ExampleBot\nmode: enforce\nprivate_addresses: allow\nregistries: [registry.yaml]\n"
        f"shared_state: {shared_state}\naudit:\n  path: audit/decisions.jsonl\n  log_allowed: true\n"
    )
    return policy


def commands(port: int) -> int:
    return int(redis.Redis(port=port).info("stats")["total_commands_processed"])


def measure(pid: int, port: int, url: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """(req/s, CPU µs per request) of the process `pid` behind proxy `port`."""
    before = cpu_seconds(pid)
    t0 = time.perf_counter()
    done, _, _ = load_wrk(port, url, concurrency, seconds)
    took = time.perf_counter() - t0
    return done / took, (cpu_seconds(pid) - before) / max(done, 1) * 1e6


def start_run(policy: Path, workers: int, confdir: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "--policy", str(policy), "--listen-port", str(port), "--workers",
         str(workers), "--set", f"confdir={confdir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    listening = 0
    for line in proc.stdout:
        if "listening at" in line:
            listening += 1
            if listening == workers:
                break
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cold", type=int, default=50, help="new origins for the cold Redis figure")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        origin = Origin(None)
        origin.start()
        url = f"http://127.0.0.1:{origin.port}/page"
        redis_proc, redis_port = start_redis(work / "redis")
        procs: list[subprocess.Popen[str]] = []
        try:
            # 1. CPU per request, memory vs Redis, on a cached origin
            addon = ["-s", str(REPO / "proxy" / "addon.py")]
            memory = write_policy(work / "memory", "memory")
            shared = write_policy(work / "redis", f"redis://127.0.0.1:{redis_port}/0")
            proxies = {}
            for name, policy in (("memory", memory), ("redis", shared)):
                proc, port = start_mitmdump(
                    work / f"conf-{name}", None, [*addon, "--set", f"optout_policy={policy}"]
                )
                procs.append(proc)
                proxies[name] = (proc, port)
                load_wrk(port, url, 1, 1)  # warm: the origin's documents fetched and cached
            results: dict[str, list[tuple[float, float]]] = {"memory": [], "redis": []}
            before = commands(redis_port)
            cached_requests = 0
            for _ in range(args.rounds):
                for name, (proc, port) in proxies.items():
                    rate, cpu = measure(proc.pid, port, url, args.concurrency, args.seconds)
                    results[name].append((rate, cpu))
                    if name == "redis":
                        cached_requests += int(rate * args.seconds)
            cached_ops = commands(redis_port) - before
            print(
                f"1. cached origin, wrk -c{args.concurrency}, {args.rounds} rounds of {args.seconds:.0f} s, A B A B"
            )
            for name in ("memory", "redis"):
                rates = [r for r, _ in results[name]]
                cpus = [c for _, c in results[name]]
                print(
                    f"   {name:<7} {statistics.median(rates):>8.0f} req/s   {statistics.median(cpus):>6.0f} µs CPU/request"
                )
            ratio = statistics.median(c for _, c in results["redis"]) / statistics.median(
                c for _, c in results["memory"]
            )
            print(f"   CPU per request, redis / memory: {ratio:.3f}  (target <= 1.10)")

            # 2. Redis operations per request
            print("2. Redis operations per request (redis-server's total_commands_processed)")
            print(
                f"   cached origin: {cached_ops / max(cached_requests, 1):.4f}  ({cached_ops} over ~{cached_requests} requests;"
                " the heartbeat adds one every 5 s)"
            )
            cold = [Origin(None) for _ in range(args.cold)]
            for o in cold:
                o.start()
            before = commands(redis_port)
            port = proxies["redis"][1]
            for o in cold:
                load_wrk(port, f"http://127.0.0.1:{o.port}/page", 1, 1)
            ops = commands(redis_port) - before
            print(
                f"   cold origins:  {ops / args.cold:.1f} per new origin ({ops} over {args.cold} origins: four documents "
                "each, a look-up, a lock, a store, a publish and a release per document)"
            )

            # 3. --workers 2 vs 1
            print(f"3. optout-proxy run --workers 1 vs 2 (memory), wrk -c{2 * args.concurrency}")
            rates2: dict[int, list[float]] = {1: [], 2: []}
            runs = {}
            for workers in (1, 2):
                own = write_policy(work / f"run{workers}", "memory")  # its own audit log (one writer per log)
                proc, port = start_run(own, workers, work / f"conf-w{workers}")
                procs.append(proc)
                runs[workers] = port
                load_wrk(port, url, 2, 1)
            for _ in range(args.rounds):
                for workers, port in runs.items():
                    done, _, _ = load_wrk(port, url, 2 * args.concurrency, args.seconds)
                    rates2[workers].append(done / args.seconds)
            for workers in (1, 2):
                print(f"   --workers {workers}: {statistics.median(rates2[workers]):>8.0f} req/s")
            print(
                f"   ratio 2/1: {statistics.median(rates2[2]) / statistics.median(rates2[1]):.2f} "
                f"(2 cores; wrk runs on them too)"
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            redis_proc.terminate()


if __name__ == "__main__":
    main()
