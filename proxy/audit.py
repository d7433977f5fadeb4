"""The audit log: append-only JSON Lines, one record per decision.

Each record is written with a single `write(2)` on a file opened with
O_APPEND, so records are never interleaved, even between processes, and each
is on disk (in the page cache) before the flow is released. The schema is
documented in README.md ("Audit log"); its field names are a contract.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy.errors import AuditError
from proxy.evidence import Decision

SCHEMA_VERSION = 1


def new_id() -> str:
    """A fresh record id (also sent to the crawler as X-Optout-Id)."""
    return uuid.uuid4().hex


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
) -> dict[str, Any]:
    """The audit record of one decision (what `check --json` prints, too)."""
    evidence = [f.to_json() for f in decision.findings]
    deciding = None
    if decision.deciding is not None and decision.deciding in decision.findings:
        deciding = decision.findings.index(decision.deciding)
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


class AuditLog:
    """Appends records to one file; raises AuditError when a record cannot be written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._lock = threading.Lock()  # the CLI may write from threads; mitmdump has one

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as e:
                raise AuditError(f"cannot open audit log {self.path}: {e.strerror or e}") from e
        return self._fd

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line; raises AuditError if it is not fully written."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._open()
            try:
                written = os.write(fd, line)
            except OSError as e:
                self._close_fd()
                raise AuditError(f"cannot write audit log {self.path}: {e.strerror or e}") from e
            if written != len(line):
                self._close_fd()
                raise AuditError(f"short write to audit log {self.path}: {written}/{len(line)} bytes")

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file; a later write reopens it."""
        with self._lock:
            self._close_fd()


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an audit log, in order; raises AuditError on a line that is not a record."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise AuditError(f"{path}:{number}: not a JSON record ({e.msg})") from e
    except OSError as e:
        raise AuditError(f"cannot read audit log {path}: {e.strerror or e}") from e
