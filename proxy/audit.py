"""The audit log: append-only, hash-chained JSON Lines, one record per decision.

Each record is written with a single `write(2)` on a file opened with
O_APPEND, so records are never interleaved, and each is on disk (in the page
cache) before the flow is released. The schema is documented in README.md
("Audit log"); its field names are a contract.

Tamper evidence:

* every record carries `seq` (1, 2, ... across all files), `prev` (the
  `hash` of the record before it; 64 zeros for the first) and `hash`, the
  SHA-256 of the record's own line as written without `hash`. An edit changes
  the record's hash; a deletion leaves a gap in `seq` and a broken `prev`; a
  reordering breaks both.
* rotation (by size) renames `decisions.jsonl` to `decisions.00001.jsonl`,
  `...00002...` and so on; the chain continues into the new file.
* every `checkpoint_every` records, at each rotation and on close, a
  checkpoint (`seq`, `head` = that record's hash) is appended to
  `decisions.jsonl.checkpoints`, so cutting records off the end is detected
  too, down to the last checkpoint. Copy checkpoint heads somewhere else (a
  ticket, a notary) to anchor the log outside this machine.

One proxy process writes one audit log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from proxy.errors import AuditError
from proxy.evidence import Decision, utc_now

SCHEMA_VERSION = 1


# Random bytes for record ids, read from the kernel 256 ids at a time: one getrandom(2) per
# id was a system call on every request. Emptied in a forked child, which must not repeat
# its parent's ids; taken under a lock (the CLI writes from threads).
_ID_BATCH = 16 * 256
logger = logging.getLogger(__name__)
_random = bytearray()
_random_lock = threading.Lock()


def _forget_random() -> None:
    del _random[:]


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """A fresh record id (also sent to the crawler as X-Optout-Id): a random UUID, as 32 hex digits."""
    with _random_lock:
        if not _random:
            _random.extend(os.urandom(_ID_BATCH))
        raw = _random[-16:]
        del _random[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()  # what uuid.uuid4().hex gives, without building a UUID object


def _deciding_index(decision: Decision) -> int | None:
    if decision.deciding is not None and decision.deciding in decision.findings:
        return decision.findings.index(decision.deciding)
    return None


def evidence_of(decision: Decision) -> tuple[orjson.Fragment, int | None]:
    """The record's `evidence`, serialised as `_dump` would serialise it in place, and `deciding`.

    Made once per decision and kept on it: a decision from the memo of proxy.assess
    is written in many records.
    """
    cached: tuple[orjson.Fragment, int | None] | None = decision._evidence
    if cached is None:
        evidence = orjson.Fragment(_dump([f.to_json() for f in decision.findings]))
        cached = (evidence, _deciding_index(decision))
        object.__setattr__(decision, "_evidence", cached)
    return cached


def record_for(
    decision: Decision,
    *,
    record_id: str,
    ts: str,
    method: str,
    url: str,
    host: str,
    agent: str,
    phase: str,
    status: int | None,
    user_agent: str | None = None,
    policy_path: str | None = None,
    serialised: bool = False,
) -> dict[str, Any]:
    """The audit record of one decision (what `check --json` prints, too).

    `serialised`: the evidence is put in already serialised (`evidence_of`), for a
    record that only `AuditLog.write` reads; its line is the same byte for byte.
    """
    evidence: Any
    if serialised:
        evidence, deciding = evidence_of(decision)
    else:
        evidence, deciding = [f.to_json() for f in decision.findings], _deciding_index(decision)
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "ts": ts,
        "id": record_id,
        "phase": phase,
        "method": method,
        "url": url,
        "host": host,
        "agent": agent,
        "decision": str(decision.verdict),
        "enforced": decision.enforced,
        "signal": decision.signal,
        "reason": decision.reason,
        "status": status,
        "evidence": evidence,
        "deciding": deciding,
        "policy_sha256": decision.policy_sha256,
    }
    if user_agent is not None:
        record["user_agent"] = user_agent
    if policy_path is not None:
        record["policy"] = policy_path
    return record


GENESIS = "0" * 64
CHECKPOINT_SUFFIX = ".checkpoints"
_TAIL_BYTES = 4 * 1024 * 1024  # a record is far smaller than this


def _dump(record: Any) -> bytes:
    # orjson: compact, UTF-8, keys in insertion order, deterministic; verify re-serialises with
    # the same library, so a record's hash can be recomputed from the parsed line.
    try:
        return orjson.dumps(record)
    except TypeError:
        # A lone surrogate (a header byte that is not UTF-8, kept by surrogateescape) is no
        # JSON string: written as its escape, so the record is still written.
        return orjson.dumps(_valid_text(record))


def _valid_text(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (lone surrogates written as `\\udcff`)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_text(v) for v in value]
    return value


def seal(record: dict[str, Any]) -> tuple[bytes, str]:
    """(line without newline, hash) of a record that already holds `seq` and `prev`."""
    body = _dump(record)
    digest = hashlib.sha256(body).hexdigest()
    return b"".join((body[:-1], b',"hash":"', digest.encode(), b'"}')), digest


def log_files(path: Path) -> list[Path]:
    """The files of an audit log in chain order: rotated ones by number, then the live file."""
    pattern = re.compile(re.escape(path.stem) + r"\.(\d+)" + re.escape(path.suffix) + "$")
    rotated = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            m = pattern.match(candidate.name)
            if m:
                rotated.append((int(m.group(1)), candidate))
    files = [p for _, p in sorted(rotated)]
    if path.exists():
        files.append(path)
    return files


_ROTATED = re.compile(r"\.\d+(\.[^.]+)$")  # as log_files reads them: any number of digits
WORKER_NAME = re.compile(r"\.w([A-Za-z0-9_-]+)$")  # decisions.w3 (a stem): worker 3's log


def logs_at(path: Path) -> list[Path]:
    """Every log that `path` stands for, each named by its live file: the logs in a folder, or the
    log at `path` and its workers' logs beside it (`decisions.w1.jsonl` ... for `decisions.jsonl`).
    Only logs with at least one file on disk (live or rotated) are named."""
    if path.is_dir():
        folder, wanted = path, None
    else:
        folder, wanted = path.parent, path
    found: set[Path] = set()
    if folder.is_dir():
        for f in folder.iterdir():
            if not f.name.endswith(".jsonl") or f.name.startswith("."):
                continue
            base = f.with_name(_ROTATED.sub(r"\1", f.name))  # decisions.00003.jsonl -> decisions.jsonl
            if wanted is None or base == wanted or (
                base.suffix == wanted.suffix and WORKER_NAME.search(base.stem) and
                WORKER_NAME.sub("", base.stem) == wanted.stem
            ):  # fmt: skip
                found.add(base)
    return sorted(found, key=lambda b: (WORKER_NAME.search(b.stem) is not None, _natural(b.name)))


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def worker_log(path: Path, worker: int | str) -> Path:
    """The log of worker `worker` for the audit path `path`: `decisions.jsonl` -> `decisions.w2.jsonl`
    (each worker keeps its own chain; `audit` commands read them together)."""
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.{index:05d}{path.suffix}")


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def _tail(path: Path) -> tuple[int, bytes]:
    """(offset, bytes) of the end of `path`: enough for its last records."""
    with open(path, "rb") as f:
        start = max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES)
        f.seek(start)
        return start, f.read()


def append_whole(path: Path, line: bytes) -> None:
    """Append `line` in one write, or nothing: a short write (a full disk) is cut off again, so
    the next line never lands on a torn one. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
        if written != len(line):
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OSError(errno.ENOSPC, "short write (disk full?)")
    finally:
        os.close(fd)


def cut_unfinished_line(path: Path) -> None:
    """Cut a last line that lacks its newline (a write cut short, then a crash)."""
    with contextlib.suppress(OSError):
        start, tail = _tail(path)
        if tail and not tail.endswith(b"\n"):
            os.truncate(path, start + tail.rfind(b"\n") + 1)


def regular_file(path: Path) -> None:
    """Raise AuditError unless `path` is a regular file: a FIFO or a device would hang a reader."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise AuditError(f"{path}: {e.strerror or e}") from e
    if not stat.S_ISREG(mode):
        raise AuditError(f"{path}: not a regular file; an audit log is one")


MAX_LINE = 16 * 1024 * 1024  # no record is near this; a longer "line" is read in pieces, never whole


def lines(f: BinaryIO) -> Iterator[bytes]:
    """The lines of a binary file, none longer than MAX_LINE (a file with no newline at all, a
    sparse one say, would otherwise be read into memory whole)."""
    while line := f.readline(MAX_LINE):
        yield line


def _last_line(path: Path) -> bytes | None:
    lines = [line for line in _tail(path)[1].split(b"\n") if line.strip()]
    return lines[-1] if lines else None


class AuditLog:
    """Appends hash-chained records, rotating by size; raises AuditError when a record cannot be written."""

    def __init__(self, path: Path, *, max_bytes: int = 0, checkpoint_every: int = 100) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes  # 0: never rotate
        self.checkpoint_every = max(1, checkpoint_every)
        self._fd: int | None = None
        self._size = 0
        self._seq: int | None = None  # last written seq; None until the tail was read
        self._head = GENESIS
        self._since_checkpoint = 0
        self._lock = threading.Lock()  # the CLI may write from threads; mitmdump has one
        self._holder: int | None = None  # fd of the lock file while this process is the writer

    def _resume(self) -> list[dict[str, Any]]:
        """Find where the chain stands: the last complete record of the newest file.

        A torn tail (a line without its newline, or one that does not parse: a
        write cut short by a full disk or a crash) is cut off first. Returns the
        repairs to record, each saying what was cut, so `audit verify` can tell
        a repair from tampering.
        """
        repairs: list[dict[str, Any]] = []
        checkpoints = checkpoint_path(self.path)
        if checkpoints.exists():
            cut_unfinished_line(checkpoints)  # a checkpoint cut short by a full disk, before a crash
        for file in reversed(log_files(self.path)):
            cut = _cut_torn_tail(file)
            if cut is not None:
                repairs.append(cut)
            last = _last_line(file)
            if last is None:
                continue
            try:
                record = json.loads(last)
                self._seq, self._head = int(record["seq"]), str(record["hash"])
            except (ValueError, KeyError, TypeError) as e:
                raise AuditError(
                    f"{file}: the last record is damaged or not chained ({type(e).__name__}); "
                    "run `optout-proxy audit verify` and move the file aside before writing more"
                ) from e
            return repairs
        self._seq, self._head = 0, GENESIS
        return repairs

    def claim(self) -> None:
        """Become the log's only writer, and open it now; raises AuditError naming the holder.

        Two processes appending to one log would interleave two chains. The
        lock is an `flock` on `<log>.lock`, so the kernel releases it when the
        holder dies (kill -9 included) and a stale file never locks anyone out.
        """
        if self._holder is not None:
            return
        fd = take_lock(self.path)
        self._holder = fd
        with self._lock:
            self._open()

    def release(self) -> None:
        """Close the log and give up being its writer."""
        self.close()
        if self._holder is not None:
            with contextlib.suppress(OSError):
                os.close(self._holder)
            self._holder = None

    def _open(self) -> int:
        if self._fd is None:
            repairs: list[dict[str, Any]] = []
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self._seq is None:
                    repairs = self._resume()
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._size = os.fstat(self._fd).st_size
            except OSError as e:
                raise AuditError(f"cannot open audit log {self.path}: {e.strerror or e}") from e
            for repair in repairs:
                self._append(repair_record(repair))
        return self._fd

    def write(self, record: dict[str, Any]) -> None:
        """Chain and append one record as one line; raises AuditError if it is not fully written.

        `record` gains `seq`, `prev` and `hash`. A failed or short write is rolled
        back to the last complete record before anything else is written.
        """
        with self._lock:
            fd = self._fd
            if fd is None or self._seq is None or self._since_checkpoint + 1 >= self.checkpoint_every:
                self._open()
                self._append(record)
                return
            # The usual record, inline (every request writes one): what _append does when the
            # file is open, the record does not rotate it and no checkpoint is due.
            record["seq"] = seq = self._seq + 1
            record["prev"] = self._head
            body = _dump(record)
            digest = hashlib.sha256(body).hexdigest()
            line = b"".join((body[:-1], b',"hash":"', digest.encode(), b'"}\n'))  # seal, and the newline
            if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                self._append(record)  # rotates first, then chains and writes it
                return
            self._put(fd, record, line, digest, seq)

    def _append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        assert self._seq is not None
        record["seq"] = self._seq + 1
        record["prev"] = self._head
        text, digest = seal(record)
        line = text + b"\n"
        if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
            self._open()
            assert self._fd is not None
            record["seq"] = self._seq + 1
            record["prev"] = self._head
            text, digest = seal(record)
            line = text + b"\n"
        self._put(self._fd, record, line, digest, record["seq"])

    def _put(self, fd: int, record: dict[str, Any], line: bytes, digest: str, seq: int) -> None:
        """Write one sealed line; on a failed or short write roll back and raise AuditError."""
        try:
            if os.fstat(fd).st_nlink == 0:
                # Deleted while open: what we write would be on no disk (rotate by moving the
                # file, as `optout-proxy` and logrotate's `create` do, never by removing it).
                raise AuditError(f"audit log {self.path} was removed while open; restart the proxy")
            written = os.write(fd, line)
        except OSError as e:
            self._roll_back(fd)
            raise AuditError(f"cannot write audit log {self.path}: {e.strerror or e}") from e
        if written != len(line):
            self._roll_back(fd)
            raise AuditError(f"short write to audit log {self.path}: {written}/{len(line)} bytes")
        record["hash"] = digest
        self._seq, self._head = seq, digest
        self._size += written
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.checkpoint_every:
            try:
                self._checkpoint()
            except AuditError as e:
                # The record is written and chained, so its decision stands; the checkpoint
                # is tried again with the next record.
                logger.error("optout: %s (the record itself was written)", e)

    def _roll_back(self, fd: int) -> None:
        """Cut a partly written record off, so the next one starts on a clean line.

        If even that fails, the next open cuts the torn tail and records a repair.
        """
        try:
            os.ftruncate(fd, self._size)
        except OSError:
            self._seq = None  # find the chain's end (and cut the tail) again on the next open
        self._close_fd()

    def _checkpoint(self) -> None:
        if not self._seq:
            return
        entry = {"ts": utc_now(), "seq": self._seq, "head": self._head, "file": self.path.name}
        try:
            append_whole(checkpoint_path(self.path), _dump(entry) + b"\n")
        except OSError as e:
            raise AuditError(
                f"cannot write checkpoint {checkpoint_path(self.path)}: {e.strerror or e}"
            ) from e
        self._since_checkpoint = 0

    def _rotate(self) -> None:
        """Close the live file under the next number and start a new one; the chain carries on."""
        try:
            self._checkpoint()
        except AuditError as e:  # a full disk: the rotation (a rename) still frees the way
            logger.error("optout: %s (rotating anyway)", e)
        self._close_fd()
        taken = [int(m.group(1)) for p in log_files(self.path) if (m := re.search(r"\.(\d+)\.", p.name))]
        target = rotated_name(self.path, (max(taken) if taken else 0) + 1)
        try:
            os.rename(self.path, target)
        except OSError as e:
            raise AuditError(f"cannot rotate audit log {self.path} to {target}: {e.strerror or e}") from e

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Write a final checkpoint and close the file; a later write reopens it."""
        with self._lock:
            if self._since_checkpoint:
                with contextlib.suppress(AuditError):
                    self._checkpoint()
            self._close_fd()


REPAIR_PHASE = "repair"


def _cut_torn_tail(file: Path) -> dict[str, Any] | None:
    """Cut a torn last line off `file`; returns what was cut (for the repair record), or None.

    A line is torn when it lacks its newline (every record is written with
    one, in one write) or does not parse; only the tail is looked at.
    """
    start, tail = _tail(file)
    keep = len(tail)
    if not tail.endswith(b"\n"):
        keep = tail.rfind(b"\n") + 1
    else:
        last_start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
        try:
            record = json.loads(tail[last_start:])
            int(record["seq"]), str(record["hash"])
        except (ValueError, KeyError, TypeError):
            keep = last_start
    if keep == len(tail):
        return None
    cut = tail[keep:]
    os.truncate(file, start + keep)
    return {
        "file": file.name,
        "offset": start + keep,
        "cut_bytes": len(cut),
        "cut_sha256": hashlib.sha256(cut).hexdigest(),
        "cut_head": cut[:80].decode("utf-8", "replace"),
    }


def repair_record(cut: dict[str, Any]) -> dict[str, Any]:
    """The chained record that says a torn tail was cut off, and what it was."""
    return {
        "v": SCHEMA_VERSION, "ts": utc_now(), "id": new_id(), "phase": REPAIR_PHASE, "decision": "repair",
        "reason": (
            f"a torn record ({cut['cut_bytes']} bytes at offset {cut['offset']} of {cut['file']}: a write "
            "cut short by a full disk or a crash) was cut off before writing resumed"
        ),
        "repair": cut,
    }  # fmt: skip


CHAIN_PHASE = "chain"


def new_chain_record(archived: Path, report: VerifyReport) -> dict[str, Any]:
    """The first record of a new chain: where the old log went and the head it ended with (or
    where it broke), so the new chain names the old one in the record itself."""
    state = "intact" if report.ok else f"BROKEN at {report.where}: {report.problem}"
    return {
        "v": SCHEMA_VERSION, "ts": utc_now(), "id": new_id(), "phase": CHAIN_PHASE, "decision": "new-chain",
        "reason": (
            f"a new chain starts; the previous log was archived to {archived} with {report.records} verified "
            f"record(s), chain {state}, last verified head {report.head}"
        ),
        "previous": {
            "log": str(archived), "head": report.head, "records": report.records, "intact": report.ok,
            "problem": report.problem, "where": report.where, "files": list(report.files),
        },
    }  # fmt: skip


def start_new_chain(path: Path, archive: Path) -> tuple[dict[str, Any], VerifyReport]:
    """Move the log's files (live, rotated, checkpoints) into `archive`, verify them there, and
    begin a new log at `path` whose first record points at the old head. Refuses while a proxy
    writes the log (its lock is held) and when `archive` already holds a log of that name."""
    files = log_files(path)
    if not files:
        raise AuditError(f"no audit log at {path}")
    lock = take_lock(path)  # raises, naming the process, while a proxy writes this log
    try:
        archive.mkdir(parents=True, exist_ok=True)
        moving = [*files, checkpoint_path(path)]
        clash = [f.name for f in moving if (archive / f.name).exists()]
        if clash:
            raise AuditError(f"{archive} already holds {', '.join(clash)}: choose another archive folder")
        for f in moving:
            if f.exists():
                os.rename(f, archive / f.name)
        report = verify_chain(archive / path.name)
        fresh = AuditLog(path)
        first = new_chain_record(archive / path.name, report)
        fresh.write(first)
        fresh.close()
        return first, report
    finally:
        os.close(lock)


def take_lock(path: Path) -> int:
    """Hold the writer's lock of the log at `path` (an open fd; closing it releases the lock);
    AuditError naming the holder if another process has it."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as e:
        raise AuditError(f"cannot create the audit lock {lock}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise AuditError(
            f"audit log {path} is already being written by {holder}; one process writes "
            "one log (give this one its own --set optout_audit=PATH)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n".encode(), 0)
    return fd


def lock_path(path: Path) -> Path:
    """The lock file that names the process writing the log at `path`."""
    return path.with_name(path.name + ".lock")


def writable_problem(path: Path) -> str | None:
    """Why the audit log at `path` could not be written by this user, or None if it could."""
    directory = path.parent
    while not directory.exists():
        directory = directory.parent
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if path.exists():
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create {path}: {directory} is not writable"
    return None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify_chain` found: ok, or the first break and where it is."""

    ok: bool
    records: int
    files: tuple[str, ...]
    head: str
    checkpoints: int
    problem: str | None = None
    where: str | None = None  # file:line of the first break
    repairs: tuple[str, ...] = ()  # "file:line: what was cut", for each chained repair record
    backwards: str = ""  # the first record dated before the one it follows (hashes intact), if any


def verify_chain(path: Path, anchors: dict[int, str] | None = None) -> VerifyReport:
    """Walk every file of the log in order; report the first record that breaks the chain.

    `anchors` (seq -> hash, heads kept somewhere else) are checked like checkpoints: a log cut
    and re-chained, checkpoints and all, no longer holds a head copied off the machine before.
    """
    files = log_files(path)
    if not files:
        raise AuditError(f"no audit log at {path}")
    expected_seq, prev = 1, GENESIS
    cp_file = checkpoint_path(path)
    # Keep only the hashes the checkpoints will ask about: memory stays flat on huge logs.
    wanted: set[int] = set()
    if cp_file.exists():
        regular_file(cp_file)
        with open(cp_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    wanted.add(int(json.loads(line)["seq"]))
    wanted |= set(anchors or {})
    hashes: dict[int, str] = {}
    names = tuple(str(f) for f in files)
    repairs: list[str] = []
    last_ts, backwards = "", ""

    def broken(problem: str, where: str) -> VerifyReport:
        return VerifyReport(False, expected_seq - 1, names, prev, 0, problem, where, tuple(repairs))

    for file in files:
        regular_file(file)
        with open(file, "rb") as lines_of:
            for number, raw in enumerate(lines(lines_of), start=1):
                where = f"{file}:{number}"
                if not raw.strip():
                    continue
                try:
                    record = orjson.loads(raw)
                    seq, claimed, link = int(record["seq"]), str(record["hash"]), str(record["prev"])
                except (ValueError, KeyError, TypeError):
                    return broken("not a chained audit record (damaged, or edited by hand)", where)
                written, digest = seal({k: v for k, v in record.items() if k != "hash"})
                if digest != claimed:
                    return broken(f"record {seq} was edited: its content does not match its hash", where)
                if raw.rstrip(b"\n") != written:
                    # Same content, other bytes (spacing, escapes, line ends): what a reader of
                    # the raw lines sees is not what was hashed.
                    return broken(
                        f"record {seq} was rewritten: its bytes are not those the proxy wrote", where
                    )
                if seq > expected_seq:
                    return broken(
                        f"records {expected_seq}..{seq - 1} are missing (deleted) before record {seq}", where
                    )
                if seq < expected_seq:
                    return broken(
                        f"record {seq} is out of order or repeated (expected {expected_seq})", where
                    )
                if link != prev:
                    return broken(f"record {seq} does not follow record {seq - 1} (chain broken)", where)
                if seq in wanted:
                    hashes[seq] = claimed
                if record.get("phase") == REPAIR_PHASE:
                    repairs.append(f"{where}: {record.get('reason', 'repair')}")
                ts = str(record.get("ts", ""))
                if ts < last_ts and not backwards:
                    # Hashes hold, yet time went back: a clock stepped back, or records made
                    # elsewhere; readers that go by time (pairing, --since) count them wrong.
                    backwards = f"{where}: record {seq} is dated {ts}, before record {seq - 1} ({last_ts})"
                last_ts = max(last_ts, ts)
                prev, expected_seq = claimed, seq + 1
    last = expected_seq - 1
    checkpoints = 0
    if cp_file.exists():
        with open(cp_file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{cp_file}:{number}"
                try:
                    cp = json.loads(line)
                    seq, head = int(cp["seq"]), str(cp["head"])
                except (ValueError, KeyError, TypeError):
                    return VerifyReport(
                        False, last, names, prev, checkpoints, "damaged checkpoint", where, tuple(repairs)
                    )
                checkpoints += 1
                if seq > last:
                    problem = (
                        f"the log was truncated: checkpoint of {cp.get('ts')} saw record {seq}, "
                        f"the log ends at record {last}"
                    )
                    return VerifyReport(False, last, names, prev, checkpoints, problem, where, tuple(repairs))
                if hashes.get(seq) != head:
                    problem = f"record {seq} differs from the one the checkpoint of {cp.get('ts')} saw"
                    return VerifyReport(False, last, names, prev, checkpoints, problem, where, tuple(repairs))
    for seq, head in (anchors or {}).items():
        if seq > last:
            problem = (
                f"the log was cut: the head kept elsewhere is record {seq}, the log ends at record {last}"
            )
            return VerifyReport(
                False, last, names, prev, checkpoints, problem, "--expect-head", tuple(repairs)
            )
        if hashes.get(seq) != head:
            problem = f"record {seq} is not the one kept elsewhere (its hash differs): the log was rewritten"
            return VerifyReport(
                False, last, names, prev, checkpoints, problem, "--expect-head", tuple(repairs)
            )
    return VerifyReport(True, last, names, prev, checkpoints, repairs=tuple(repairs), backwards=backwards)
