"""Policy files: `policies/*.yaml` -> `Policy`, or a `PolicyError` naming path:line.

The keys are a contract (issue #2); a policy is only ever replaced whole, so a
broken file never leaves the proxy half-configured. Example:

    agent: ExampleBot
    honor_agents: [GPTBot, CCBot, Google-Extended, ClaudeBot, anthropic-ai]
    mode: enforce                # enforce | monitor
    on_unreachable: block        # block (RFC 9309 §2.3.1.4) | allow
    on_robots_forbidden: allow   # robots.txt 401/403: allow (RFC 9309 §2.3.1.3) | block
    private_addresses: block     # loopback, private, link-local, metadata: block | allow
    registries: [registry.yaml]  # relative to this file
    signals: {robots-txt: enforce, registry: enforce}
    audit: {path: ../audit/decisions.jsonl, log_allowed: true}
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from proxy.errors import PolicyError, Problem
from proxy.registry import Registry, read_entries
from proxy.yamldoc import Reader

MODES = ("enforce", "monitor")
SIGNAL_MODES = ("enforce", "monitor", "off")
# Signal names a policy may set (README: "Signals").
SIGNALS = (
    "registry",
    "robots-txt",
    "ai-txt",
    "tdmrep",
    "content-usage",
    "content-signal",
    "rsl",
    "x-robots-tag",
    "html-meta",
    "media-metadata",
)
PURPOSES = ("ai-train", "search", "ai-input")
RSL_USERS = ("commercial", "non-commercial", "education", "government", "personal")
# Readings of the ambiguities in signals.md §13: key -> (choices, default). The
# defaults are the readings that protect the rights holder.
INTERPRETATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "tdmrep_precedence": (("reservation-wins", "spec"), "reservation-wins"),
    "star_group_preferences": (("inherit", "strict"), "inherit"),
    # Near-misses whose intent is clear (AIPREF legacy labels, a tdmrep.json that is one object ...)
    "lenient_readings": (("block", "ignore"), "block"),
    "noimageai_scope": (("all", "images"), "all"),
    "over_cap": (("withhold", "forward"), "withhold"),
    "rsl_user": (RSL_USERS, "commercial"),
    # C2PA: do an ingredient's reservations bind the asset; does an opt-out in a manifest
    # whose signature fails still bind (signals/c2pa_store.py)
    "c2pa_ingredients": (("inherit", "ignore"), "inherit"),
    "c2pa_invalid_signature": (("bind", "ignore"), "bind"),
}
POLICY_KEYS = (
    "agent",
    "honor_agents",
    "purpose",
    "mode",
    "on_unreachable",
    "on_robots_forbidden",
    "private_addresses",
    "registries",
    "signals",
    "audit",
    "shared_state",
    "politeness",
    *INTERPRETATIONS,
    "aipref_legacy",  # the former name of lenient_readings, still read
)
AUDIT_KEYS = ("path", "log_allowed")
POLITENESS_KEYS = (
    "crawl_delay", "min_interval", "max_crawl_delay", "max_wait", "max_concurrency", "abandoned_hold",
    "backoff",
)  # fmt: skip
SHARED_SCHEMES = ("redis://", "rediss://", "unix://")
# RFC 9309 §2.2.1: a product token is letters, "-" and "_"; our own must be,
# so that every parser reads it the same way (signals.md §2.5).
_OWN_TOKEN = re.compile(r"[A-Za-z_-]+")
# Other operators' tokens in the wild carry digits and dots (AI2Bot, bigsur.ai).
OTHER_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")

DEFAULT_HONOR_AGENTS = ("GPTBot", "CCBot", "Google-Extended", "ClaudeBot", "anthropic-ai")


@dataclass(frozen=True, slots=True)
class Politeness:
    """How often the fleet may ask one origin (proxy.politeness)."""

    crawl_delay: str = "honor"  # honor | ignore: robots.txt Crawl-delay of the group that binds us
    min_interval: float = 0.0  # seconds between requests to one origin, whatever robots.txt says
    max_crawl_delay: float = 60.0  # a larger Crawl-delay is read as this
    max_wait: float = 10.0  # a request waits this long for its turn, then gets 429
    max_concurrency: int = 0  # requests in flight to one origin at once, fleet-wide; 0: no limit
    # A request whose client gave up (or that failed) after it reached the origin keeps its slot
    # this long: the origin may still be working on it.
    abandoned_hold: float = 5.0
    backoff: bool = True  # an origin's 429/503 with Retry-After holds the whole fleet back


@dataclass(frozen=True, slots=True)
class AuditSettings:
    path: Path  # absolute
    log_allowed: bool


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakly held by proxy.assess.DecisionMemo
class Policy:
    """A validated policy and its registries; `digest` identifies it in every audit record."""

    path: Path
    agent: str
    honor_agents: tuple[str, ...]
    mode: str
    on_unreachable: str
    on_robots_forbidden: str
    registries: tuple[Path, ...]
    registry: Registry
    signals: Mapping[str, str]
    audit: AuditSettings
    digest: str  # SHA-256 over the policy file's bytes and each registry's bytes
    purpose: str = "ai-train"
    # block: neither the crawler nor our own fetches reach loopback, private,
    # link-local or metadata addresses; allow: for tests and intranet crawls.
    private_addresses: str = "block"
    interpretations: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({k: v[1] for k, v in INTERPRETATIONS.items()})
    )
    shared_state: str = "memory"  # memory, or a Redis URL: what the workers of a fleet share
    politeness: Politeness = field(default_factory=Politeness)

    def reading(self, key: str) -> str:
        """The policy's reading of one ambiguity (a key of INTERPRETATIONS)."""
        return self.interpretations[key]

    @property
    def tokens(self) -> tuple[str, ...]:
        """Our agent and every honored token: whose bot-scoped in-band signals bind us."""
        return (self.agent, *self.honor_agents)

    def signal_mode(self, signal: str) -> str:
        """enforce | monitor | off for `signal` (unlisted signals are enforced)."""
        return self.signals.get(signal, "enforce")


MAX_FILE_BYTES = 64 * 1024 * 1024  # a policy or registry file past this is refused, not read


def read_file(path: Path) -> bytes:
    """A policy or registry file's bytes. Raises OSError (a message that names the problem) for
    anything but a regular file of at most MAX_FILE_BYTES: a FIFO would hang the reload, and
    /dev/zero fill the memory. Opened without blocking, so a FIFO cannot hold the open either."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)[: MAX_FILE_BYTES + 1]
    finally:
        os.close(fd)


def _read_text(path: Path) -> tuple[bytes | None, Problem | None]:
    try:
        return read_file(path), None
    except FileNotFoundError:
        return None, Problem(path, None, "file not found")
    except OSError as e:
        return None, Problem(path, None, f"cannot read: {e.strerror or e}")


def _decode(path: Path, data: bytes, reader: Reader) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        reader.problems.append(Problem(path, line, "not valid UTF-8"))
        return None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file and its registries.

    Raises PolicyError listing every problem (path:line) found in any of them.
    """
    path = Path(path)
    data, problem = _read_text(path)
    if problem is not None or data is None:
        raise PolicyError([problem or Problem(path, None, "cannot read")])
    reader = Reader(path)
    text = _decode(path, data, reader)
    root = reader.compose(text) if text is not None else None
    if root is None:
        if not reader.problems:
            reader.problem(None, "the policy file is empty")
        raise PolicyError(reader.problems)
    fields = reader.mapping(root, "the policy", allowed=POLICY_KEYS, required=("agent",)) or {}

    agent = ""
    if "agent" in fields:
        agent = reader.string(fields["agent"], "agent") or ""
        if agent and not _OWN_TOKEN.fullmatch(agent):
            reader.problem(
                fields["agent"],
                f"agent '{agent}' must be a robots.txt product token: letters, '-' and '_' only "
                "(RFC 9309 §2.2.1)",
            )

    honor: list[str] = []
    if "honor_agents" in fields:
        for token, node in reader.strings(fields["honor_agents"], "honor_agents") or []:
            if not OTHER_TOKEN.fullmatch(token):
                reader.problem(node, f"honor_agents: '{token}' is not a product token (no spaces or '/')")
            elif token.lower() not in {h.lower() for h in honor}:
                honor.append(token)
    else:
        honor = list(DEFAULT_HONOR_AGENTS)

    def choice(key: str, choices: tuple[str, ...], default: str) -> str:
        if key not in fields:
            return default
        return reader.choice(fields[key], key, choices) or default

    purpose = choice("purpose", PURPOSES, "ai-train")
    interpretations = {
        key: choice(key, options, default) for key, (options, default) in INTERPRETATIONS.items()
    }
    if "aipref_legacy" in fields:
        if "lenient_readings" in fields:
            reader.problem(
                fields["aipref_legacy"],
                "aipref_legacy is the former name of lenient_readings: keep only lenient_readings",
            )
        else:
            options, default = INTERPRETATIONS["lenient_readings"]
            interpretations["lenient_readings"] = choice("aipref_legacy", options, default)
    mode = choice("mode", MODES, "enforce")
    on_unreachable = choice("on_unreachable", ("block", "allow"), "block")
    on_forbidden = choice("on_robots_forbidden", ("allow", "block"), "allow")
    private_addresses = choice("private_addresses", ("block", "allow"), "block")

    signals: dict[str, str] = {}
    if "signals" in fields:
        sig = reader.mapping(fields["signals"], "signals", allowed=SIGNALS) or {}
        for name, node in sig.items():
            value = reader.choice(node, f"signals.{name}", SIGNAL_MODES)
            if value is not None:
                signals[name] = value

    audit_path = path.parent / "../audit/decisions.jsonl"
    log_allowed = True
    if "audit" in fields:
        audit = reader.mapping(fields["audit"], "audit", allowed=AUDIT_KEYS) or {}
        if "path" in audit:
            p = reader.string(audit["path"], "audit.path")
            if p is not None:
                audit_path = path.parent / p
        if "log_allowed" in audit:
            b = reader.boolean(audit["log_allowed"], "audit.log_allowed")
            if b is not None:
                log_allowed = b

    shared_state = "memory"
    if "shared_state" in fields:
        value = reader.string(fields["shared_state"], "shared_state")
        if value is not None and value != "memory" and not value.startswith(SHARED_SCHEMES):
            reader.problem(
                fields["shared_state"],
                f"shared_state must be memory or a Redis URL (redis://host:6379/0), not '{value}'",
            )
        elif value is not None:
            shared_state = value
    politeness = Politeness()
    if "politeness" in fields:
        pol = reader.mapping(fields["politeness"], "politeness", allowed=POLITENESS_KEYS) or {}
        changes: dict[str, Any] = {}
        if "crawl_delay" in pol:
            changes["crawl_delay"] = reader.choice(
                pol["crawl_delay"], "politeness.crawl_delay", ("honor", "ignore")
            )
        for key in ("min_interval", "max_crawl_delay", "max_wait", "abandoned_hold"):
            if key in pol:
                changes[key] = reader.seconds(pol[key], f"politeness.{key}")
        if "max_concurrency" in pol:
            changes["max_concurrency"] = reader.integer(pol["max_concurrency"], "politeness.max_concurrency")
        if "backoff" in pol:
            changes["backoff"] = reader.boolean(pol["backoff"], "politeness.backoff")
        politeness = Politeness(**{k: v for k, v in changes.items() if v is not None})

    digest = hashlib.sha256(data)
    registry_paths: list[Path] = []
    entries = []
    registry_problems: list[Problem] = []
    if "registries" in fields:
        seen: dict[tuple[str, tuple[str, ...]], tuple[str, int, str]] = {}  # domains across the files
        for rel, node in reader.strings(fields["registries"], "registries") or []:
            # As written, made absolute (`..` kept: through a symlinked folder it is not the
            # lexical parent): a symlink swapped under it (a Kubernetes ConfigMap update) is
            # followed on the next read; resolved only to find one file listed twice.
            reg_path = (path.parent / rel).absolute()
            if reg_path.resolve() in (p.resolve() for p in registry_paths):
                reader.problem(node, f"registry file '{rel}' is listed twice; list it once")
                continue
            registry_paths.append(reg_path)
            reg_data, reg_problem = _read_text(reg_path)
            if reg_problem is not None or reg_data is None:
                why = reg_problem.message if reg_problem is not None else "cannot read"
                if why == "file not found":
                    reader.problem(node, f"registry file '{rel}' not found ({reg_path})")
                else:
                    reader.problem(node, f"registry file '{rel}': {why} ({reg_path})")
                continue
            digest.update(b"\0" + reg_data)
            reg_reader = Reader(reg_path)
            reg_text = _decode(reg_path, reg_data, reg_reader)
            reg_root = reg_reader.compose(reg_text) if reg_text is not None else None
            if reg_root is not None:
                entries.extend(read_entries(reg_reader, reg_root, seen))
            elif not reg_reader.problems:
                reg_reader.problem(None, "the registry file is empty")
            registry_problems.extend(reg_reader.problems)
    if reader.problems or registry_problems:
        by_line = sorted(reader.problems, key=lambda p: p.line or 0)
        raise PolicyError(by_line + sorted(registry_problems, key=lambda p: (str(p.path), p.line or 0)))
    return Policy(
        path=path.absolute(),
        agent=agent,
        honor_agents=tuple(honor),
        mode=mode,
        on_unreachable=on_unreachable,
        on_robots_forbidden=on_forbidden,
        registries=tuple(registry_paths),
        registry=Registry(entries),
        signals=MappingProxyType(signals),
        audit=AuditSettings(audit_path.resolve(), log_allowed),
        digest=digest.hexdigest(),
        purpose=purpose,
        private_addresses=private_addresses,
        interpretations=MappingProxyType(interpretations),
        shared_state=shared_state,
        politeness=politeness,
    )


def named_files(path: Path) -> tuple[Path, ...]:
    """The policy file at `path` and the registry files it names now, as `load_policy` would
    read them; never raises (a file it cannot read names only itself). What a reload watches:
    a registry file a new policy adds is watched before that policy is valid."""
    path = Path(path).absolute()
    try:
        fields = yaml.safe_load(read_file(path))
    except (OSError, yaml.YAMLError, RecursionError, ValueError):
        return (path,)
    named = fields.get("registries") if isinstance(fields, dict) else None
    if not isinstance(named, list):
        return (path,)
    return (path, *((path.parent / r).absolute() for r in named if isinstance(r, str)))


def registry_shrinkage(old: Policy, new: Policy) -> list[str]:
    """What a change from `old` to `new` drops from the registries, when it drops a lot.

    A whole registry file gone, or a file that lost at least half its entries,
    is said with the counts: such an edit is more often a mistake than a decision.
    """

    def counts(policy: Policy) -> dict[str, int]:
        out = {str(path): 0 for path in policy.registries}
        for entry in policy.registry.entries:
            out[entry.file] = out.get(entry.file, 0) + 1
        return out

    before, after = counts(old), counts(new)
    warnings = []
    for file, n in before.items():
        if file not in after:
            warnings.append(f"registry {file} ({n} entries) is no longer in the policy")
        elif n and after[file] * 2 <= n:
            warnings.append(f"registry {file} drops from {n} to {after[file]} entries")
    return warnings
