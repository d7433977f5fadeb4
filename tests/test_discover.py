"""Every command works from any folder: the policy is found from --policy, OPTOUT_POLICY, the
current folder, then the config folders, and every command says which it uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.discover import find_policy
from proxy.errors import PolicyError
from tests.policies import entry, write_policy

REPO = Path(__file__).resolve().parent.parent


def cli(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPTOUT_POLICY", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(REPO)
    return env


def test_the_order_of_places(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(PolicyError, match=r"no policy found: give --policy PATH or set OPTOUT_POLICY"):
        find_policy(None, env, elsewhere)
    user = write_policy(tmp_path / "home" / ".config" / "optout-proxy", "policy.yaml")
    assert find_policy(None, env, elsewhere) == (user, "the user's config folder")
    xdg = write_policy(tmp_path / "xdg" / "optout-proxy", "policy.yaml")
    assert find_policy(None, {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, elsewhere)[0] == xdg
    here = write_policy(elsewhere / "policies", "default.yaml")
    assert find_policy(None, env, elsewhere) == (here, "the current folder")
    named = write_policy(tmp_path / "named")
    assert find_policy(None, {**env, "OPTOUT_POLICY": str(named)}, elsewhere) == (named, "OPTOUT_POLICY")
    given = write_policy(tmp_path / "given")
    assert find_policy("../given/policy.yaml", {**env, "OPTOUT_POLICY": str(named)}, elsewhere) == (
        elsewhere / "../given/policy.yaml",
        "--policy",
    )
    assert given.samefile(elsewhere / "../given/policy.yaml")
    with pytest.raises(PolicyError, match=r"no policy file here \(named by OPTOUT_POLICY\)"):
        find_policy(None, {**env, "OPTOUT_POLICY": str(tmp_path / "missing.yaml")}, elsewhere)


def test_commands_work_from_another_folder_and_say_which_policy(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "conf", registry=[entry("Holder One", "holder.test")])
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {**clean_env(tmp_path), "OPTOUT_POLICY": str(policy)}
    done = cli("check", "http://www.holder.test/x", cwd=elsewhere, env=env)
    assert done.returncode == 1, done.stderr  # blocked
    assert f"optout-proxy: policy {policy} (from OPTOUT_POLICY)" in done.stderr
    assert "Holder One" in done.stdout
    done = cli("policy", "validate", cwd=elsewhere, env=env)
    assert done.returncode == 0 and f"policy {policy} (from OPTOUT_POLICY)" in done.stderr, done.stderr
    done = cli("policy", "registry", "list", cwd=elsewhere, env=env)
    assert done.returncode == 0 and "Holder One: holder.test" in done.stdout, done.stderr
    # with nothing to find, the error says where it looked
    done = cli("check", "http://www.holder.test/x", cwd=elsewhere, env=clean_env(tmp_path))
    assert done.returncode == 2 and "no policy found" in done.stderr and "OPTOUT_POLICY" in done.stderr


def test_audit_commands_take_log_everywhere(tmp_path: Path) -> None:
    from proxy.audit import AuditLog

    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path)
    log.write({"v": 1, "ts": "2026-12-02T15:00:00.000Z", "id": "a" * 32, "phase": "request", "decision": "block",
               "enforced": True, "signal": "registry", "evidence": [], "deciding": None})  # fmt: skip
    log.close()
    env = clean_env(tmp_path)  # no policy anywhere: a named log needs none
    for argv in (["verify", "--log", str(log_path)], ["verify", str(log_path)], ["summary", "--log", str(log_path)],
                 ["tail", "--log", str(log_path)], ["show", "a" * 8, "--log", str(log_path)]):  # fmt: skip
        done = cli("audit", *argv, cwd=tmp_path, env=env)
        assert done.returncode == 0, (argv, done.stderr)
    done = cli(
        "audit", "verify", str(log_path), "--log", str(tmp_path / "other.jsonl"), cwd=tmp_path, env=env
    )
    assert done.returncode == 2 and "two logs named" in done.stderr
