"""Write policy and registry files for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_policy(
    directory: Path,
    name: str = "policy.yaml",
    *,
    registry: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> Path:
    """A valid policy in `directory` (with its own registry file), keys overridable."""
    directory.mkdir(parents=True, exist_ok=True)
    reg_path = directory / f"{Path(name).stem}-registry.yaml"
    reg_path.write_text(yaml.safe_dump({"entries": registry or []}, sort_keys=False))
    policy: dict[str, Any] = {
        "agent": "ExampleBot",
        "honor_agents": ["GPTBot", "CCBot"],
        "mode": "enforce",
        "on_unreachable": "block",
        # every origin in the tests is on 127.0.0.1
        "private_addresses": "allow",
        "registries": [reg_path.name],
        "signals": {"robots-txt": "enforce", "registry": "enforce"},
        "audit": {"path": "audit.jsonl", "log_allowed": True},
    }
    policy.update(overrides)
    path = directory / name
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def entry(holder: str, *domains: str, paths: list[str] | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {
        "holder": holder,
        "domains": list(domains),
        "reason": f"{holder} wrote to us",
        "source": "https://example.org/letter",
        "since": "2025-10-27",
    }
    if paths:
        e["paths"] = paths
    return e
