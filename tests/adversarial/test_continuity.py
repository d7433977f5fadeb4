"""Issue 8, audit continuity: torn writes, a torn tail at start, private evidence without credentials."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from proxy.audit import verify_chain
from tests.adversarial.rawnet import CountingOrigin
from tests.policies import write_policy
from tests.proxyproc import REPO, ProxyProcess


def test_a_full_disk_never_leaves_a_torn_record(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    origin = CountingOrigin()
    try:
        proxy = make_proxy(write_policy(tmp_path), fsize_limit=9000)
        statuses = []
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
            for i in range(60):
                statuses.append(c.get(f"http://127.0.0.1:{origin.port}/page?{i}").status_code)
        assert 503 in statuses and 200 in statuses
        assert proxy.audit is not None
        data = proxy.audit.read_bytes()
        assert data.endswith(b"\n")
        report = verify_chain(proxy.audit)
        assert report.ok, report.problem
        assert report.repairs == ()
        assert report.records == statuses.count(200)  # every forwarded response has its record
    finally:
        origin.close()


def test_a_torn_tail_found_at_start_is_repaired_in_the_chain(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    origin = CountingOrigin()
    try:
        policy = write_policy(tmp_path)
        audit = tmp_path / "audit-torn.jsonl"
        first = make_proxy(policy, optout_audit=str(audit))
        with httpx.Client(proxy=first.url, trust_env=False, timeout=10) as c:
            assert c.get(f"http://127.0.0.1:{origin.port}/page").status_code == 200
        first.stop()
        torn = b'{"v":1,"ts":"2026-12-02T00:00:00Z","id":"torn","pha'  # kill -9 mid-write
        with open(audit, "ab") as f:
            f.write(torn)
        second = make_proxy(policy, optout_audit=str(audit))
        with httpx.Client(proxy=second.url, trust_env=False, timeout=10) as c:
            assert c.get(f"http://127.0.0.1:{origin.port}/page").status_code == 200
        second.stop()
        phases = [r["phase"] for r in second.records()]
        assert phases == ["request", "repair", "request"]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "audit", "verify", str(audit)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"a torn record ({len(torn)} bytes" in done.stdout and "a repair, not tampering" in done.stdout
    finally:
        origin.close()


def test_evidence_is_as_private_as_the_log_and_holds_no_credentials(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    def answer(path: str, head: bytes) -> bytes:
        body = b"User-agent: *\nDisallow: /private\n" if path == "/robots.txt" else b"page"
        return (
            b"HTTP/1.1 200 OK\r\nSet-Cookie: session=SECRET-COOKIE; HttpOnly\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    origin = CountingOrigin(respond=answer)
    try:
        proxy = make_proxy(write_policy(tmp_path))
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
            assert c.get(f"http://127.0.0.1:{origin.port}/private/x").status_code == 451
        assert proxy.audit is not None
        store = proxy.audit.parent / "evidence"
        files = [p for p in store.rglob("*") if p.is_file()]
        dirs = [p for p in store.rglob("*") if p.is_dir()] + [store]
        assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in files)
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o750 for p in dirs)
        assert stat.S_IMODE(proxy.audit.stat().st_mode) == 0o640
        everything = b"".join(p.read_bytes() for p in files)
        assert b"SECRET-COOKIE" not in everything
        assert b"withheld by optout-proxy: a credential" in (store / "fetches.jsonl").read_bytes()
    finally:
        origin.close()
