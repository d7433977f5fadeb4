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

from proxy.audit import (
    GENESIS,
    WORKER_NAME,
    append_whole,
    checkpoint_path,
    cut_unfinished_line,
    log_files,
    logs_at,
    worker_log,
)
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
    if path.exists():
        cut_unfinished_line(path)
    previous = _last_line(path)
    entry: dict[str, Any] = {
        "ts": utc_now(), "workers": heads, "prev": orjson.loads(previous)["hash"] if previous else GENESIS,
    }  # fmt: skip
    append_whole(path, _seal(entry) + b"\n")  # whole or not at all: a full disk tears no line
    return entry


def verify_fleet(audit_dir_or_path: Path) -> tuple[int, list[str], list[str]]:
    """(fleet lines checked, problems, warnings), each `file[:line]: what`, for the fleet
    checkpoints at a folder or audit path.

    A worker log the last fleet line does not name is a problem (a log made elsewhere and put
    beside the fleet's); worker logs with no fleet file at all are a warning (a fleet stopped
    within its first minute has none yet, and so has one whose file was removed).
    """
    base = audit_dir_or_path
    candidates = sorted(base.glob("*.fleet.checkpoints")) if base.is_dir() else [fleet_path(base)]
    problems: list[str] = []
    warnings: list[str] = []
    checked = 0
    bound: set[Path] = set()
    for path in (c for c in candidates if c.exists()):
        audit = path.with_name(path.name.removesuffix(".fleet.checkpoints") + ".jsonl")
        entries: list[tuple[int, dict[str, dict[str, Any]], dict[str, Any]]] = []
        wanted: dict[str, set[int]] = {}
        prev = GENESIS
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            e, workers = _fleet_line(line)
            if e is None or workers is None:
                problems.append(f"{path}:{n}: not a fleet checkpoint (damaged, or edited by hand)")
                continue
            claimed = str(e.get("hash"))
            if e.get("prev") != prev or _seal(dict(e)) != orjson.dumps(e) or "hash" not in e:
                problems.append(f"{path}:{n}: fleet checkpoint edited or out of order")
            prev = claimed
            entries.append((n, workers, e))
            for k, head in workers.items():
                wanted.setdefault(k, set()).add(int(head["seq"]))
        hashes = {k: _hashes_at(worker_log(audit, k), seqs) for k, seqs in wanted.items()}
        for n, workers, _ in entries:
            checked += 1
            for k, head in workers.items():
                found = hashes[k].get(int(head["seq"]))
                if found != head["head"]:
                    what = "is missing" if found is None else "differs"
                    name = worker_log(audit, k).name
                    problems.append(
                        f"{path}:{n}: worker {k}'s record {head['seq']} {what} ({name}): its log was cut "
                        "or changed after the fleet bound it"
                    )
        named = entries[-1][1] if entries else {}
        bound |= {worker_log(audit, k) for k in named}
        for log in logs_at(audit):
            if WORKER_NAME.search(log.stem) and log not in bound:
                problems.append(f"{path}: {log.name} is a worker log the last fleet checkpoint does "
                                "not name: not this fleet's, or added since")  # fmt: skip
    for log in logs_at(base):
        if WORKER_NAME.search(log.stem) and log not in bound and not fleet_path(_audit_of(log)).exists():
            warnings.append(f"{log}: a worker log that no fleet checkpoint binds (the fleet file is "
                            "missing): a log removed with it, or one added, cannot be found")  # fmt: skip
    return checked, problems, warnings


def _audit_of(worker: Path) -> Path:
    """`decisions.w3.jsonl` -> `decisions.jsonl`."""
    return worker.with_name(WORKER_NAME.sub("", worker.stem) + worker.suffix)


def _fleet_line(line: bytes) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
    """A fleet line and its workers' heads, checked for shape; (None, None) if it is not one."""
    try:
        e = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    workers = e.get("workers") if isinstance(e, dict) else None
    if not isinstance(workers, dict):
        return None, None
    for head in workers.values():
        if (
            not isinstance(head, dict)
            or type(head.get("seq")) is not int
            or not isinstance(head.get("head"), str)
        ):
            return None, None
    return e, workers


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
