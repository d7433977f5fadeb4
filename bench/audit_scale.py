"""Audit CLI at scale: summary and export over a generated log of one million records.

    .venv/bin/python bench/audit_scale.py [--records 1000000] [--keep DIR]

Writes the log with the proxy's own AuditLog (hash-chained, so the write
rate is measured too), then runs `optout-proxy audit summary` (by signal, by
host) and `audit export` (CSV, JSON Lines) as separate processes and prints
wall time and peak memory (max RSS) of each. Target: summary of 1M records in
under 5 s on this machine kind.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy.audit import AuditLog

SIGNALS = ["robots-txt", "registry", "ai-txt", "tdmrep", "content-signal", "x-robots-tag", "media-metadata"]


def make_record(i: int, rng: random.Random) -> dict[str, object]:
    host = f"site{rng.randrange(5000)}.example"
    day = 1 + i * 30 // 1_000_000 % 30
    ts = f"2026-10-{day:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}.000Z"
    roll = rng.random()
    doc = {"url": f"https://{host}/robots.txt", "status": 200, "sha256": f"{rng.getrandbits(256):064x}",
           "fetched_at": ts}  # fmt: skip
    if roll < 0.6:
        evidence = [{"signal": "robots-txt", "says": "allow", "detail": "no rule matches", "document": doc,
                     "agent": "ExampleBot"}]  # fmt: skip
        return {"v": 1, "ts": ts, "id": f"{i:032x}", "phase": "request", "method": "GET",
                "url": f"https://{host}/articles/{i}", "host": host, "agent": "ExampleBot", "decision": "allow",
                "enforced": True, "signal": None, "reason": "No opt-out signal applies to this URL.", "status": None,
                "evidence": evidence, "deciding": None, "policy_sha256": "a" * 64}  # fmt: skip
    signal = rng.choice(SIGNALS)
    detail = "Disallow: /private/" if signal == "robots-txt" else f"{signal} reservation"
    entry = (
        {"holder": f"Holder {rng.randrange(50)}", "file": "registry.yaml", "line": 7}
        if signal == "registry"
        else None
    )
    finding: dict[str, object] = {"signal": signal, "says": "disallow", "detail": detail, "line": 3}
    if entry:
        finding["entry"] = entry
    else:
        finding["document"] = doc
    return {"v": 1, "ts": ts, "id": f"{i:032x}", "phase": "request", "method": "GET",
            "url": f"https://{host}/private/{i}", "host": host, "agent": "ExampleBot", "decision": "block",
            "enforced": roll < 0.95, "signal": signal, "reason": f"{signal} says no.", "status": 451,
            "evidence": [finding], "deciding": 0, "policy_sha256": "a" * 64}  # fmt: skip


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak MiB, last line of stderr) of one CLI run in its own process."""
    script = Path(sys.executable).with_name("optout-proxy")
    start = time.perf_counter()
    proc = subprocess.Popen([str(script), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args} failed: {err}")
    return seconds, usage.ru_maxrss / 1024, (err.strip().splitlines() or [""])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", help="keep the generated log in this directory")
    args = parser.parse_args()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    log_path = workdir / "decisions.jsonl"
    try:
        rng = random.Random(20261124)
        log = AuditLog(log_path, max_bytes=0, checkpoint_every=1000)
        start = time.perf_counter()
        for i in range(args.records):
            log.write(make_record(i, rng))
        log.close()
        wrote = time.perf_counter() - start
        size = log_path.stat().st_size / 1e6
        print(f"generated {args.records} chained records ({size:.0f} MB) in {wrote:.1f} s "
              f"({args.records / wrote:,.0f} records/s)")  # fmt: skip
        log_arg = ["--log", str(log_path)]
        for label, cli in [
            ("summary --by signal", ["audit", "summary", "--by", "signal", *log_arg]),
            ("summary --by host", ["audit", "summary", "--by", "host", *log_arg]),
            ("summary --by rule, blocks only", ["audit", "summary", "--by", "rule", "--decision", "block", *log_arg]),
            ("export --format csv", ["audit", "export", "--format", "csv", *log_arg]),
            ("export --format jsonl --signal registry", ["audit", "export", "--format", "jsonl", "--signal",
                                                         "registry", *log_arg]),
            ("verify", ["audit", "verify", str(log_path)]),
        ]:  # fmt: skip
            seconds, mib, _ = run(cli)
            print(f"{label:<42} {seconds:6.2f} s   peak {mib:6.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
