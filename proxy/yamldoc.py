"""Read YAML policy files node by node, so every problem can name its line.

PyYAML's `compose()` keeps a `start_mark` on each node; reading nodes instead
of the constructed Python objects lets us report `path:line` for semantic
errors too, and catch duplicate keys (which `safe_load` silently drops).
A `Reader` collects every problem instead of stopping at the first, because
`policy validate` must list them all.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.errors import Problem

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


def line_of(node: Node) -> int:
    """1-based line where `node` starts."""
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return {
        _STR: "a string",
        _BOOL: "a boolean",
        _INT: "an integer",
        _NULL: "nothing",
        _TIMESTAMP: "a date",
    }.get(node.tag, "a number")


# PyYAML composes recursively, so a deep enough nesting ends in RecursionError, somewhere past
# this depth: the problem names the line where the nesting passes it (no policy comes close).
DEEPEST = 100


class Reader:
    """Reads nodes of one file, collecting `Problem`s instead of raising."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def problem(self, node: Node | None, message: str) -> None:
        """Record a problem at `node`'s line (or the file, without a node)."""
        self.problems.append(Problem(self.path, line_of(node) if node is not None else None, message))

    def compose(self, text: str) -> Node | None:
        """Parse `text` into a node tree; a syntax error becomes a problem and None."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = f"YAML syntax error: {e.problem or e}"
            # PyYAML reports an unclosed bracket where it noticed, not where
            # it opened; give both lines so the user finds it.
            if (
                e.context
                and e.context_mark is not None
                and mark is not None
                and e.context_mark.line != mark.line
            ):
                msg += f" ({e.context} at line {e.context_mark.line + 1})"
            self.problems.append(Problem(self.path, mark.line + 1 if mark is not None else None, msg))
        except yaml.YAMLError as e:
            self.problems.append(Problem(self.path, None, f"YAML error: {e}"))
        except RecursionError:
            why = f"YAML nested too deep to read (past {DEEPEST} levels by this line)"
            self.problems.append(Problem(self.path, _deep_line(text, DEEPEST), why))
        return None

    def mapping(
        self,
        node: Node,
        what: str,
        *,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Node] | None:
        """The keys of a mapping node; unknown, duplicate and missing keys are problems."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{what} must be a mapping, not {_kind(node)}")
            return None
        known = list(allowed)
        out: dict[str, Node] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, f"{what}: keys must be plain names")
                continue
            key = str(key_node.value)
            if key in first_line:
                self.problem(
                    key_node,
                    f"duplicate key '{key}' (first at line {first_line[key]}); "
                    "YAML would silently keep only the last",
                )
                continue
            first_line[key] = line_of(key_node)
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                fix = f" (did you mean '{hint[0]}'?)" if hint else f"; expected one of: {', '.join(known)}"
                self.problem(key_node, f"unknown key '{key}' in {what}{fix}")
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.problem(node, f"{what}: missing required key '{key}'")
        return out

    def string(self, node: Node, what: str, *, allow_empty: bool = False) -> str | None:
        """A string scalar (YAML dates and numbers are refused: quote them)."""
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.problem(node, f"{what} must be a string, not {_kind(node)}")
            return None
        value = str(node.value)
        if not allow_empty and not value.strip():
            self.problem(node, f"{what} must not be empty")
            return None
        return value

    def boolean(self, node: Node, what: str) -> bool | None:
        """A YAML boolean (true/false)."""
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.problem(node, f"{what} must be true or false, not {_kind(node)}")
            return None
        return str(node.value).lower() in ("true", "yes", "on")

    def seconds(self, node: Node, what: str) -> float | None:
        """A duration in seconds: a number (whole or not) at least 0."""
        if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
            self.problem(node, f"{what} must be a number of seconds, not {_kind(node)}")
            return None
        value = float(yaml.safe_load(node.value))
        if not 0 <= value < float("inf"):
            self.problem(node, f"{what} must be 0 or more seconds, not {node.value}")
            return None
        return value

    def integer(self, node: Node, what: str, *, minimum: int = 0) -> int | None:
        """A whole number at least `minimum`."""
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            given = node.value if isinstance(node, ScalarNode) and node.tag == _FLOAT else _kind(node)
            self.problem(node, f"{what} must be a whole number, not {given}")
            return None
        value = int(yaml.safe_load(node.value))
        if value < minimum:
            self.problem(node, f"{what} must be at least {minimum}, not {value}")
            return None
        return value

    def choice(self, node: Node, what: str, choices: Iterable[str]) -> str | None:
        """A string that must be one of `choices`."""
        options = list(choices)
        if isinstance(node, ScalarNode) and node.tag != _STR and str(node.value) in options:
            # YAML 1.1 reads a bare `off` as false; the user meant the word.
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag != _STR:
            self.problem(node, f"{what} must be one of {' | '.join(options)}, not '{node.value}'")
            return None
        value = self.string(node, what)
        if value is None:
            return None
        if value not in options:
            hint = difflib.get_close_matches(value, options, n=1)
            fix = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.problem(node, f"{what} must be one of {' | '.join(options)}, not '{value}'{fix}")
            return None
        return value

    def items(self, node: Node, what: str) -> list[Node] | None:
        """The item nodes of a list."""
        if not isinstance(node, SequenceNode):
            self.problem(node, f"{what} must be a list, not {_kind(node)}")
            return None
        return list(node.value)

    def strings(self, node: Node, what: str) -> list[tuple[str, Node]] | None:
        """A list of non-empty strings, each with its node (for line numbers)."""
        items = self.items(node, what)
        if items is None:
            return None
        out = []
        for item in items:
            value = self.string(item, f"each entry of {what}")
            if value is not None:
                out.append((value, item))
        return out

    def date(self, node: Node, what: str) -> str | None:
        """An ISO date (YYYY-MM-DD), quoted or not; returned as its ISO string."""
        if isinstance(node, ScalarNode) and node.tag in (_TIMESTAMP, _STR):
            try:
                return dt.date.fromisoformat(str(node.value).strip()).isoformat()
            except ValueError:
                pass
        shown = f", not '{node.value}'" if isinstance(node, ScalarNode) else ""
        self.problem(node, f"{what} must be a date like 2025-10-27{shown}")
        return None


def _deep_line(text: str, depth: int) -> int | None:
    """The line where brackets or braces first nest `depth` deep (where a reader gives up)."""
    level, line = 0, 1
    for ch in text:
        if ch in "[{":
            level += 1
            if level >= depth:
                return line
        elif ch in "]}":
            level = max(0, level - 1)
        elif ch == "\n":
            line += 1
    return None
