"""Fail closed from the first instant: every bad option, both ways to start, nothing forwarded."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.adversarial.rawnet import CountingOrigin
from tests.policies import write_policy
from tests.proxyproc import ADDON, REPO, ProxyProcess

BAD_OPTIONS = [
    ("optout_body_cap", "abc"),
    ("optout_body_cap", "0"),
    ("optout_audit_max_bytes", "100MB"),
    ("optout_audit_max_bytes", "-1"),
    ("optout_reload_interval", "1.5"),
    ("optout_fetch_timeout", "0"),
    ("optout_fetch_timeout", "soon"),
    ("optout_unreachable_retry", "x"),
    ("optout_cache_size", "0"),
    ("optout_fetch_concurrency", "0"),
    ("optout_mode", "bogus"),
    ("optout_metrics", "not-a-port"),
    ("optout_audit_checkpoint_every", "0"),
    ("optout_trusted_network", "maybe"),
    ("optout_policy", "missing.yaml"),
    ("optout_polciy", "policies/default.yaml"),  # misspelled: must not be silently ignored
    ("ignore_hosts", ".*"),
    ("tcp_hosts", ".*"),
    ("mode", "socks5"),
    ("map_remote", "|.*|http://example.org"),
]


@pytest.fixture(scope="module")
def origin() -> Iterator[CountingOrigin]:
    o = CountingOrigin()
    yield o
    o.close()


def start(kind: str, policy: Path, confdir: Path, key: str, value: str) -> tuple[int | None, str]:
    """Start one way with one bad option; returns (exit code or None if still running after 20 s, output)."""
    if kind == "mitmdump":
        args = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", "-s", str(ADDON),
                "--set", f"optout_policy={policy}"]  # fmt: skip
    else:
        args = [sys.executable, "-m", "proxy", "run", "--policy", str(policy)]
    args += ["--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}",
             "--set", f"{key}={value}"]  # fmt: skip
    if key != "optout_audit":
        args += ["--set", f"optout_audit={confdir.with_name(confdir.name + '-audit.jsonl')}"]  # one log each
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out


@pytest.mark.parametrize("kind", ["mitmdump", "run"])
def test_every_bad_option_stops_the_proxy(kind: str, tmp_path: Path) -> None:
    policy = write_policy(tmp_path)

    def one(i: int) -> tuple[str, str, int | None, str]:
        key, value = BAD_OPTIONS[i]
        code, out = start(kind, policy, tmp_path / f"conf{i}", key, value)
        return key, value, code, out

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(len(BAD_OPTIONS))))
    for key, value, code, out in results:
        assert code is not None and code != 0, f"{kind} {key}={value} kept running:\n{out}"
        named = key.removeprefix("optout_").split("_")[0]
        assert named in out or value in out or "unknown option" in out.lower(), f"{key}={value}: {out}"


def test_the_refusal_names_the_bad_value_not_every_option_left_unapplied(tmp_path: Path) -> None:
    """One --set that does not parse leaves all of the script's --set values unapplied in mitmproxy;
    the message must name that value and its error, and a misspelling as a misspelling."""
    policy = write_policy(tmp_path)
    args = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", "-s", str(ADDON),
            "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={tmp_path / 'c'}",
            "--set", f"optout_policy={policy}", "--set", "optout_body_cap=100k", "--set", "optout_mdoe=monitor"]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=30)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0
    assert "--set optout_body_cap=100k: Not an integer: 100k" in last
    assert "unknown option(s) optout_mdoe (did you mean optout_mode?)" in last
    assert "so optout_policy was not applied either" in last  # not called unknown


@pytest.mark.parametrize("kind", ["mitmdump", "run"])
def test_a_broken_or_unwritable_setup_stops_the_proxy(kind: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("agent: ExampleBot\nuser_agnet: x\n")
    code, out = start(kind, broken, tmp_path / "c1", "flow_detail", "0")
    assert code not in (None, 0) and "broken.yaml:2" in out
    policy = write_policy(tmp_path / "p")
    (tmp_path / "file").write_text("x")
    code, out = start(kind, policy, tmp_path / "c2", "optout_audit", str(tmp_path / "file" / "audit.jsonl"))
    assert code not in (None, 0) and "audit" in out


def test_a_second_proxy_on_the_same_log_exits_naming_the_holder(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    first = ProxyProcess(policy, confdir=tmp_path / "c1", audit=tmp_path / "audit.jsonl")
    try:
        code, out = start("mitmdump", policy, tmp_path / "c2", "optout_audit", str(tmp_path / "audit.jsonl"))
        assert code not in (None, 0)
        assert f"pid {first.proc.pid}" in out and "already being written" in out
        code, out = start("run", policy, tmp_path / "c3", "optout_audit", str(tmp_path / "audit.jsonl"))
        assert code not in (None, 0) and f"pid {first.proc.pid}" in out
    finally:
        first.stop()


def test_policy_validate_checks_the_audit_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    policy = write_policy(tmp_path, audit={"path": "file/audit.jsonl", "log_allowed": True})
    done = subprocess.run([sys.executable, "-m", "proxy", "policy", "validate", str(policy)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert "audit.path" in done.stdout


def test_nothing_is_forwarded_while_a_bad_option_is_being_refused(
    origin: CountingOrigin, tmp_path: Path
) -> None:
    """The window between mitmdump listening and the script failing forwards nothing either."""
    policy = write_policy(tmp_path)
    args = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", "-s", str(ADDON),
            "--set", f"optout_policy={policy}", "--listen-host", "127.0.0.1", "--listen-port", "0",
            "--set", f"confdir={tmp_path / 'c'}", "--set", "optout_body_cap=abc"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    assert proc.returncode not in (None, 0)
    assert origin.content_requests() == []
