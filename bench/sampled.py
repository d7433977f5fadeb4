"""What our code costs inside the running proxy, per page kind: py-spy samples, not a differential.

    .venv/bin/python bench/sampled.py [--kinds text,html,media,bigrobots] [--seconds 9] [--rate 997]
                                      [--concurrency 8] [--top 12]

For each kind it starts one origin and `mitmdump -s proxy/addon.py` with
bench/throughput.py's policy (every origin cached, each request audited),
loads it with wrk (plain HTTP) and samples the proxy process with py-spy
(`pip install -e '.[dev]'`, or any `py-spy` on PATH) for the same seconds. It
prints the proxy's CPU per request, the share of samples with one of our
frames on the stack, their product (our µs per request) and our functions
with the largest shares.

Why beside throughput.py: that bench's "extra CPU" is ours minus bare from
rounds seconds apart, and on a shared machine it moves by hundreds of µs
between rounds of the same code (bench/RESULTS.md). A share of samples taken
from the same seconds of the same process does not move with the machine. It
leaves out what we cause outside our frames (the cyclic GC collecting
mitmproxy's objects, mitmproxy reading the options we set), so it is a lower
bound of our cost, to read next to the differential, not instead of it.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    BIG_ROBOTS,
    KIND_PATH,
    REPO,
    ROBOTS,
    Origin,
    cpu_seconds,
    load_wrk,
    start_mitmdump,
    write_bench_policy,
)

# A frame in our package, as py-spy names it: relative to the working directory, or absolute
# (not mitmproxy's own `mitmproxy/proxy/` package).
OURS = (" (proxy/", f" ({REPO}/proxy/")


def py_spy() -> str | None:
    """py-spy from this environment's scripts, else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def attribute(stacks: str) -> tuple[int, int, collections.Counter[str]]:
    """(samples, samples in our code, samples per function of ours, inclusive) of py-spy's raw output."""
    total = ours = 0
    functions: collections.Counter[str] = collections.Counter()
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        mine = {re.sub(r":\d+\)$", ")", f) for f in frames if any(o in f for o in OURS)}
        if mine:
            ours += n
            for name in mine:
                functions[name] += n
    return total, ours, functions


def sample(
    kind: str, seconds: int, rate: int, concurrency: int, spy: str
) -> tuple[float, int, int, collections.Counter[str]]:
    """(CPU µs per request, samples, samples in our code, per function) for one kind."""
    origin = Origin(None, BIG_ROBOTS if kind == "bigrobots" else ROBOTS)
    origin.start()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        policy = write_bench_policy(t)
        (t / "conf").mkdir()
        proc, port = start_mitmdump(
            t / "conf", None, ["-s", str(REPO / "proxy" / "addon.py"), "--set", f"optout_policy={policy}"]
        )
        try:
            url = f"http://localhost:{origin.port}{KIND_PATH[kind]}"
            with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False) as client:
                for _ in range(20):  # the origin's documents fetched and cached, the caches warm
                    if client.get(url).status_code != 200:
                        raise RuntimeError(f"{url} is not allowed through the proxy")
            load_wrk(port, url, concurrency, 2)
            out = t / "stacks.txt"
            spying = subprocess.Popen(
                [spy, "record", "--nonblocking", "-r", str(rate), "-d", str(seconds + 1), "-f", "raw",
                 "-o", str(out), "-p", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(0.5)  # py-spy attached before the load starts
            before = cpu_seconds(proc.pid)
            done, _, _ = load_wrk(port, url, concurrency, seconds)
            used = cpu_seconds(proc.pid) - before
            _, err = spying.communicate(timeout=seconds + 30)
            if not out.exists():
                raise RuntimeError(f"py-spy wrote nothing: {err.strip()}")
            total, ours, functions = attribute(out.read_text(errors="replace"))
        finally:
            proc.terminate()
            proc.wait(10)
    return used / max(1, done) * 1e6, total, ours, functions


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", default="text,html,media,bigrobots")
    parser.add_argument("--seconds", type=int, default=9)
    parser.add_argument("--rate", type=int, default=997, help="samples per second")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--top", type=int, default=12, help="our functions listed per kind")
    args = parser.parse_args()
    spy = py_spy()
    if spy is None or shutil.which("wrk") is None:
        print("needs py-spy (pip install -e '.[dev]') and wrk (Debian's package)", file=sys.stderr)
        return 2
    rows = []
    for kind in args.kinds.split(","):
        cpu, total, ours, functions = sample(kind, args.seconds, args.rate, args.concurrency, spy)
        share = ours / max(1, total)
        rows.append((kind, cpu, share))
        print(
            f"{kind}: {cpu:.0f} µs CPU/request, {total} samples, {share:.1%} in our code: ~{share * cpu:.0f} µs/request"
        )
        for name, n in functions.most_common(args.top):
            print(f"  {n / total:6.1%}  {name}")
    print("\nkind       CPU µs/req  ours   our µs/req (target <= 150)")
    for kind, cpu, share in rows:
        print(f"{kind:<10} {cpu:>10.0f} {share:>6.1%} {share * cpu:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
