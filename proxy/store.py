"""The evidence store: the documents behind decisions, content-addressed, next to the audit log.

    <audit dir>/evidence/objects/ab/abcdef...   the bytes, named by their SHA-256 (stored once)
    <audit dir>/evidence/fetches.jsonl          one line per fetch: sha256, url, status, headers, time, kind

Policy documents (robots.txt, ai.txt, tdmrep.json, licences) are stored as
they are fetched, so the bytes behind every pre-fetch decision are at hand;
for in-band signals the response headers are stored when they decide a
block. Objects are written to a temporary name and renamed: a crash never
leaves a partial object under a real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from proxy.errors import AuditError

_SEEN_LIMIT = 100_000
# The log's permissions (audit.py opens it 0640): evidence is as private as the log.
FILE_MODE = 0o640
DIR_MODE = 0o750
# Credentials an origin sends are not evidence of any signal, and must not sit in a store
# that auditors read: they are replaced by a marker that says they were there.
SECRET_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "cookie", "authorization", "proxy-authorization", "www-authenticate-info",
     "x-api-key", "x-amz-security-token"}
)  # fmt: skip
REDACTED = "(withheld by optout-proxy: a credential)"


def redact(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` with every credential's value replaced by REDACTED."""
    return [(k, REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers]


def store_dir(audit_path: Path) -> Path:
    """Where the evidence of the log at `audit_path` (or of the logs in that folder) lives."""
    return (audit_path if audit_path.is_dir() else audit_path.parent) / "evidence"


class EvidenceStore:
    """Content-addressed bytes plus a log of where each copy was fetched."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._seen: set[tuple[str, str, int | None]] = set()  # (sha, url, status) already logged
        self._lock = threading.Lock()

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def put(
        self,
        data: bytes,
        *,
        url: str,
        status: int | None,
        headers: Sequence[tuple[str, str]],
        fetched_at: str,
        kind: str,
    ) -> str:
        """Keep `data` (once) and record this fetch of it; returns its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.object_path(sha)
        with self._lock:
            try:
                if not target.exists():
                    for directory in (self.root, self.root / "objects", target.parent):
                        if not directory.exists():
                            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                            os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask
                    temp = target.with_name(f".{sha}.{os.getpid()}.tmp")
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                    os.chmod(temp, FILE_MODE)
                    os.replace(temp, target)
                key = (sha, url, status)
                if key not in self._seen:
                    entry = {
                        "sha256": sha, "url": url, "status": status, "fetched_at": fetched_at,
                        "kind": kind, "headers": [list(h) for h in redact(headers)], "size": len(data),
                    }  # fmt: skip
                    fetches = self.root / "fetches.jsonl"
                    fd = os.open(fetches, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                    with os.fdopen(fd, "a", encoding="utf-8") as f:
                        f.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
                    if len(self._seen) >= _SEEN_LIMIT:
                        self._seen.clear()  # bounded memory; at worst a fetch is logged twice
                    self._seen.add(key)
            except OSError as e:
                raise AuditError(f"cannot write evidence to {self.root}: {e.strerror or e}") from e
        return sha

    def get(self, sha256: str) -> bytes | None:
        """The stored bytes, or None if this store does not hold them."""
        with contextlib.suppress(OSError):
            return self.object_path(sha256).read_bytes()
        return None

    def excerpt(
        self, sha256: str, line: int | None, *, context: int, head: int
    ) -> tuple[list[tuple[int, str]], int] | None:
        """Numbered lines of a stored document around `line` (`context` either side), or its first
        `head` lines when `line` is absent or out of range; and how many lines follow the excerpt.
        None if the store does not hold the document."""
        data = self.get(sha256)
        if data is None:
            return None
        lines = data.decode("utf-8", "replace").splitlines()
        if line is None or not 1 <= line <= len(lines):
            lo, hi = 1, min(len(lines), head)
        else:
            lo, hi = max(1, line - context), min(len(lines), line + context)
        return [(n, lines[n - 1]) for n in range(lo, hi + 1)], len(lines) - hi


def headers_bytes(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """A response's status and header lines as stored evidence of an in-band signal."""
    lines = [f"HTTP {status}"] + [f"{k}: {v}" for k, v in redact(headers)]
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")
