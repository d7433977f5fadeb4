"""The optout-proxy command: validate, check (text and JSON), run's command line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cli import ExitStatus, _parser, main, mitmdump_args
from tests.policies import entry, write_policy
from tests.sites import Reply, Site

REPO = Path(__file__).resolve().parent.parent


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(REPO / "policies" / "default.yaml")]) == ExitStatus.OK
    err = capsys.readouterr().err
    assert "valid" in err and "8 registry entries" in err


def test_validate_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: ExampleBot\nagent: Other\nmode: enforc\nregistries: [gone.yaml]\n")
    assert main(["policy", "validate", str(bad)]) == ExitStatus.INVALID
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:2: duplicate key 'agent' (first at line 1); YAML would silently keep only the last",
        f"{bad}:3: mode must be one of enforce | monitor, not 'enforc' (did you mean 'enforce'?)",
        f"{bad}:4: registry file 'gone.yaml' not found ({tmp_path / 'gone.yaml'})",
    ]


def test_validate_names_the_line_of_nesting_too_deep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "deep.yaml"
    bad.write_text("agent: ExampleBot\nsignals: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["policy", "validate", str(bad)]) == ExitStatus.INVALID
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{bad}:2: YAML nested too deep to read")


def test_check_blocked_with_deciding_line(
    make_site: Callable[..., Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site(
        {"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n\nUser-agent: CCBot\nDisallow: /data\n")}
    )
    policy = write_policy(tmp_path)
    assert main(["check", site.url("/data/1"), "--policy", str(policy)]) == ExitStatus.BLOCKED
    out = capsys.readouterr().out
    assert out.startswith(f"BLOCK  {site.url('/data/1')}")
    assert "signal: robots-txt" in out
    assert "=> robots-txt  disallow    Disallow: /data (line 5) [group CCBot]" in out
    assert site.url("/robots.txt") in out


def test_check_allowed_and_agent_override(
    make_site: Callable[..., Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site({"/robots.txt": Reply(200, "User-agent: OtherBot\nDisallow: /\n")})
    policy = write_policy(tmp_path)
    assert main(["check", site.url("/a"), "--policy", str(policy)]) == ExitStatus.OK
    assert (
        main(["check", site.url("/a"), "--policy", str(policy), "--agent", "OtherBot"]) == ExitStatus.BLOCKED
    )
    assert "OtherBot" in capsys.readouterr().out


def test_check_json_is_an_audit_record(
    make_site: Callable[..., Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nDisallow: /x\n")})
    policy = write_policy(tmp_path)
    assert main(["check", site.url("/x"), "--policy", str(policy), "--json"]) == ExitStatus.BLOCKED
    record = json.loads(capsys.readouterr().out)
    for key in (
        "ts",
        "id",
        "method",
        "url",
        "host",
        "agent",
        "decision",
        "enforced",
        "signal",
        "reason",
        "evidence",
        "policy_sha256",
    ):
        assert key in record
    assert (record["decision"], record["signal"]) == ("block", "robots-txt")
    ev = record["evidence"][record["deciding"]]
    assert (ev["detail"], ev["line"]) == ("Disallow: /x", 2)
    assert ev["document"]["status"] == 200


def test_check_registry_needs_no_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, registry=[entry("Holder", "holder.test")])
    assert main(["check", "https://www.holder.test/a", "--policy", str(policy)]) == ExitStatus.BLOCKED
    assert "Holder" in capsys.readouterr().out


def test_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path)
    assert main(["check", "ftp://x/y", "--policy", str(policy)]) == ExitStatus.INVALID
    assert "not an absolute http(s) URL" in capsys.readouterr().err
    assert main(["check", "http://x/", "--policy", str(tmp_path / "none.yaml")]) == ExitStatus.INVALID


def test_run_builds_the_mitmdump_command_line() -> None:
    args = _parser().parse_args(
        [
            "run",
            "--policy",
            "p.yaml",
            "--listen-port",
            "9000",
            "--mode",
            "monitor",
            "--set",
            "ssl_insecure=true",
        ]
    )
    argv = mitmdump_args(args)
    assert argv[argv.index("-s") + 1].endswith("proxy/addon.py")
    assert argv[argv.index("--listen-port") + 1] == "9000"
    assert argv[argv.index("--listen-host") + 1] == "127.0.0.1"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert {
        "optout_policy=p.yaml",
        "optout_mode=monitor",
        "ssl_insecure=true",
        "flow_detail=0",
    } <= set(sets)


def test_run_refuses_an_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: ExampleBot\nmode: x\n")
    assert main(["run", "--policy", str(bad)]) == ExitStatus.INVALID
    assert f"{bad}:2:" in capsys.readouterr().err


def test_installed_script_smoke(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("optout-proxy")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]
    done = subprocess.run([*cmd, "policy", "validate"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: ExampleBot\nmode: x\n")
    done = subprocess.run([*cmd, "policy", "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{bad}:2:" in done.stdout
