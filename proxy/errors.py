"""The small exception tree of optout-proxy.

    OptOutError            base class; never raised itself
     ├── PolicyError       a policy or registry file is invalid (carries every problem, with path:line)
     ├── AuditError        the audit log cannot be written or read
     └── LocalLimit        a policy document could not be fetched for a reason of ours

Failures to fetch a policy document are not exceptions: an unreachable
robots.txt is a fact about the origin and becomes a Finding. A failure of
ours (a full connection pool, a resolver that is busy, no file descriptors
left) says nothing about the origin: it is `LocalLimit`, never recorded as
the origin being unreachable and never cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class OptOutError(Exception):
    """Base class of every error optout-proxy raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, located by path and 1-based line."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return f"{where}: {self.message}"


class PolicyError(OptOutError):
    """A policy or registry file is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("PolicyError needs at least one problem")
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}")

    def report(self) -> str:
        """Every problem, one `path:line: message` line each."""
        return "\n".join(str(p) for p in self.problems)

    @property
    def path(self) -> Path:
        return self.problems[0].path

    @property
    def line(self) -> int | None:
        return self.problems[0].line


class AuditError(OptOutError):
    """The audit log could not be written (or read)."""


class LocalLimit(OptOutError):
    """A policy document could not be fetched because of a limit of ours, not the origin's answer."""
