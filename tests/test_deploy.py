"""The deployment files, checked offline with the engines' own tools: docker-compose config,
kubernetes-validate --strict, haproxy -c; and the policy the ConfigMap carries is a valid policy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.policy import load_policy

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    return found


def test_the_compose_file_is_valid(tmp_path: Path) -> None:
    done = subprocess.run([need("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"haproxy", "proxy1", "proxy2", "proxy3", "redis"}
    assert config["services"]["haproxy"]["environment"]["OPTOUT_W3"] == "proxy3:8080"
    assert config["networks"]["internal"]["internal"] is True  # workers are not reachable from outside


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_strict_validation(manifest: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(manifest)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout + done.stderr


def test_the_configmap_carries_a_valid_policy(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "config.yaml").read_text()))
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    policy = load_policy(tmp_path / "default.yaml")
    assert policy.shared_state == "redis://optout-redis:6379/0"
    assert policy.registry.match("www.ghibli.jp", "/") is not None


def test_the_haproxy_config_is_valid() -> None:
    env = {**os.environ, "OPTOUT_LISTEN": "127.0.0.1:8080", "OPTOUT_W1": "a:1", "OPTOUT_W2": "b:2",
           "OPTOUT_W3": "c:3"}  # fmt: skip
    done = subprocess.run([need("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
