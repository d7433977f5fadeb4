"""Which policy file a command uses, so every command works from any folder.

The first of these that is given or exists wins:

1. `--policy PATH` (or mitmproxy's `--set optout_policy=PATH`);
2. the `OPTOUT_POLICY` environment variable;
3. `policies/default.yaml` under the current folder (a checkout of this repository);
4. `$XDG_CONFIG_HOME/optout-proxy/policy.yaml` (`~/.config/optout-proxy/policy.yaml`);
5. `/etc/optout-proxy/policy.yaml`.

A path that is given (1, 2) must exist; nothing is guessed past it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from proxy.errors import PolicyError, Problem

ENV = "OPTOUT_POLICY"
IN_CHECKOUT = Path("policies") / "default.yaml"
SYSTEM = Path("/etc/optout-proxy/policy.yaml")


def places(env: Mapping[str, str], cwd: Path) -> list[tuple[Path, str]]:
    """Where a policy is looked for when none is given, in order, each with how it is named."""
    config = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or "~").expanduser() / ".config")
    return [
        (cwd / IN_CHECKOUT, "the current folder"),
        (config / "optout-proxy" / "policy.yaml", "the user's config folder"),
        (SYSTEM, "the system config folder"),
    ]


def find_policy(
    given: str | None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[Path, str]:
    """(the policy file, how it was found); PolicyError naming every place looked if there is none."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    for value, how in ((given, "--policy"), (env.get(ENV), ENV)):
        if value:
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = cwd / path
            if not path.is_file():
                raise PolicyError([Problem(path, None, f"no policy file here (named by {how})")])
            return path, how
    looked = places(env, cwd)
    for path, how in looked:
        if path.is_file():
            return path, how
    tried = "; ".join(str(p) for p, _ in looked)
    raise PolicyError(
        [Problem(Path(cwd), None, f"no policy found: give --policy PATH or set {ENV} (looked in: {tried})")]
    )
