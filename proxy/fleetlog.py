"""The fleet checkpoint: one chained line that binds every worker's chain head at a moment.

Each worker keeps its own hash chain (`decisions.w<K>.jsonl`) and its own
checkpoints. The supervisor of `run --workers N` appends, every minute and
when it stops, a line to `decisions.fleet.checkpoints`:

    {"ts": ..., "workers": {"1": {"seq": 120, "head": "..."}, ...}, "prev": ..., "hash": ...}

chained like the records (`prev` is the previous line's `hash`, `hash` the
SHA-256 of the line without it). Cutting one worker's log, or dropping a
whole worker's log, then no longer matches a head the fleet line bound.
`audit verify` checks every fleet line against the workers' chains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from proxy.audit import GENESIS, checkpoint_path, log_files, worker_log
from proxy.evidence import utc_now


def fleet_path(audit: Path) -> Path:
    """`decisions.jsonl` -> `decisions.fleet.checkpoints` (beside the workers' logs)."""
    return audit.with_name(f"{audit.stem}.fleet.checkpoints")


def _last_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def _seal(entry: dict[str, Any]) -> bytes:
    entry["hash"] = hashlib.sha256(orjson.dumps({k: v for k, v in entry.items() if k != "hash"})).hexdigest()
    return orjson.dumps(entry)


def write_fleet_checkpoint(audit: Path, workers: list[int]) -> dict[str, Any] | None:
    """Append one fleet line binding each worker's latest checkpoint; None if no worker has one."""
    heads: dict[str, dict[str, Any]] = {}
    for k in workers:
        line = _last_line(checkpoint_path(worker_log(audit, k)))
        if line is not None:
            cp = orjson.loads(line)
            heads[str(k)] = {"seq": cp["seq"], "head": cp["head"]}
    if not heads:
        return None
    path = fleet_path(audit)
    previous = _last_line(path)
    entry: dict[str, Any] = {
        "ts": utc_now(), "workers": heads, "prev": orjson.loads(previous)["hash"] if previous else GENESIS,
    }  # fmt: skip
    with open(path, "ab") as f:
        f.write(_seal(entry) + b"\n")
    return entry


def verify_fleet(audit_dir_or_path: Path) -> tuple[int, list[str]]:
    """(fleet lines checked, problems as `file:line: problem`) for the fleet checkpoints at a
    folder or audit path; (0, []) when there are none."""
    base = audit_dir_or_path
    candidates = sorted(base.glob("*.fleet.checkpoints")) if base.is_dir() else [fleet_path(base)]
    problems: list[str] = []
    checked = 0
    for path in (c for c in candidates if c.exists()):
        audit = path.with_name(path.name.removesuffix(".fleet.checkpoints") + ".jsonl")
        entries = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        wanted: dict[str, set[int]] = {}
        prev = GENESIS
        for n, e in enumerate(entries, start=1):
            claimed = e.get("hash")
            if e.get("prev") != prev or _seal(dict(e)) != orjson.dumps(e) or claimed is None:
                problems.append(f"{path}:{n}: fleet checkpoint edited or out of order")
            prev = claimed
            for k, head in e.get("workers", {}).items():
                wanted.setdefault(k, set()).add(int(head["seq"]))
        hashes = {k: _hashes_at(worker_log(audit, k), seqs) for k, seqs in wanted.items()}
        for n, e in enumerate(entries, start=1):
            checked += 1
            for k, head in e.get("workers", {}).items():
                found = hashes[k].get(int(head["seq"]))
                if found != head["head"]:
                    what = "is missing" if found is None else "differs"
                    name = worker_log(audit, k).name
                    problems.append(
                        f"{path}:{n}: worker {k}'s record {head['seq']} {what} ({name}): its log was cut "
                        "or changed after the fleet bound it"
                    )
    return checked, problems


def _hashes_at(log: Path, seqs: set[int]) -> dict[int, str]:
    """The hash of each record of `log` whose seq is in `seqs`."""
    out: dict[int, str] = {}
    for file in log_files(log):
        with open(file, "rb") as f:
            for line in f:
                try:
                    r = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(r, dict) and r.get("seq") in seqs:
                    out[int(r["seq"])] = str(r.get("hash"))
    return out
