"""Editing policy and registry files: keep comments and order, validate, replace atomically.

Edits go through ruamel.yaml's round-trip mode, so a person's comments, key
order and blank lines survive. The new text is validated with the same
checks as `policy validate` before anything is written, and it replaces the
file by rename (after fsync): a crash mid-write leaves the old file or the
new one, never half of either. The running proxy picks the change up by
itself (hot reload).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from proxy.errors import PolicyError, Problem
from proxy.policy import DEFAULT_HONOR_AGENTS, OTHER_TOKEN, Policy, load_policy
from proxy.registry import ENTRY_KEYS, Entry, read_entries
from proxy.yamldoc import Reader


def _yaml() -> YAML:
    y = YAML()  # round-trip
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text`: write a temporary file beside it, fsync, rename, fsync the directory."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump(data: Any) -> str:
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def _check_registry_text(path: Path, text: str) -> None:
    """Raise PolicyError (naming `path` and lines) if `text` is not a valid registry."""
    reader = Reader(path)
    root = reader.compose(text)
    if root is not None:
        read_entries(reader, root)
    elif not reader.problems:
        reader.problem(None, "the registry would be empty")
    if reader.problems:
        raise PolicyError(reader.problems)


def registry_file(policy: Policy, chosen: str | None) -> Path:
    """The registry to edit: `chosen`, or the policy's first."""
    if chosen:
        return Path(chosen)
    if not policy.registries:
        raise PolicyError(
            [Problem(policy.path, None, "the policy lists no registries: add one under 'registries:'")]
        )
    return policy.registries[0]


def make_entry(
    holder: str, domains: Iterable[str], paths: Iterable[str], reason: str, source: str, since: str
) -> CommentedMap:
    """A registry entry in the file's key order."""
    entry = CommentedMap()
    entry["holder"] = holder
    entry["domains"] = CommentedSeq(list(domains))
    entry["domains"].fa.set_flow_style()
    plist = list(paths)
    if plist:
        entry["paths"] = CommentedSeq(plist)
        entry["paths"].fa.set_flow_style()
    entry["reason"] = reason
    entry["source"] = source
    try:
        entry["since"] = dt.date.fromisoformat(since)
    except ValueError:
        entry["since"] = since  # validation names the problem
    return entry


def add_entries(path: Path, entries: list[CommentedMap]) -> int:
    """Append entries to a registry file (validated, atomically); returns how many were added."""
    data = _yaml().load(path.read_text(encoding="utf-8")) if path.exists() else None
    if data is None:
        data = CommentedMap()
    if "entries" not in data or data["entries"] is None:
        data["entries"] = CommentedSeq()
    existing = {(str(e.get("holder")), tuple(e.get("domains") or ())) for e in data["entries"]}
    added = 0
    for entry in entries:
        key = (str(entry["holder"]), tuple(entry["domains"]))
        if key in existing:
            continue
        data["entries"].append(entry)
        existing.add(key)
        added += 1
    text = _dump(data)
    _check_registry_text(path, text)
    atomic_write(path, text)
    return added


def remove_entries(path: Path, *, holder: str | None = None, domain: str | None = None) -> list[str]:
    """Remove what is named, nothing more; returns one line per change.

    * `holder` alone: that holder's entries, whole;
    * `domain` alone: that domain from every entry listing it; an entry left
      with no domain goes too (its other domains stay listed);
    * both: that domain from that holder's entries only.

    Names are matched without case and trailing dot. Raises ValueError when
    nothing matches, with what would (a subdomain of a listed domain cannot be
    removed on its own: it is covered by the parent).
    """
    if not holder and not domain:
        raise ValueError("name a holder (--holder), a domain (--domain) or both")
    data = _yaml().load(path.read_text(encoding="utf-8"))
    entries = (data or {}).get("entries") or []
    wanted = domain.lower().rstrip(".") if domain else None
    changes: list[str] = []
    keep: list[Any] = []
    for e in entries:
        name = str(e.get("holder"))
        if holder and name.lower() != holder.lower():
            keep.append(e)
            continue
        domains = e.get("domains") or []
        if wanted is None:
            changes.append(f"removed {name} ({', '.join(str(d) for d in domains)})")
            continue
        left = [d for d in domains if str(d).lower().rstrip(".") != wanted]
        if len(left) == len(domains):
            keep.append(e)
        elif left:
            domains[:] = left  # in place: the list keeps its style and comments
            changes.append(f"removed {wanted} from {name} (still listed: {', '.join(str(d) for d in left)})")
            keep.append(e)
        else:
            changes.append(f"removed {name} ({wanted} was its only domain)")
    if not changes:
        raise ValueError(_nothing_to_remove(entries, holder, wanted, path))
    del entries[:]
    entries.extend(keep)
    text = _dump(data)
    _check_registry_text(path, text)
    atomic_write(path, text)
    return changes


def _nothing_to_remove(entries: list[Any], holder: str | None, domain: str | None, path: Path) -> str:
    """Why a removal matched nothing, and what would match."""
    if domain:
        for e in entries:
            for d in e.get("domains") or []:
                parent = str(d).lower().rstrip(".")
                if domain.endswith("." + parent):
                    return (f"{path}: {domain} is not listed; it is covered by {parent} ({e.get('holder')}): "
                            f"remove {parent}, or replace it by the subdomains that should stay")  # fmt: skip
    what = " and ".join(
        x for x in (f"holder {holder!r}" if holder else "", f"domain {domain}" if domain else "") if x
    )
    holders = sorted({str(e.get("holder")) for e in entries})
    return f"{path}: no entry matches {what} (holders: {', '.join(holders) or 'none'})"


def entries_from_csv(text: str, path: Path, existing: Iterable[Entry] = ()) -> list[CommentedMap]:
    """Registry entries from CSV with a header row: holder, domains, [paths], reason, source, since.

    Lists (domains, paths) are separated by ';' or spaces. Each row is
    checked as `policy validate` checks an entry, and against `existing`
    entries and earlier rows for a domain listed twice; every problem is
    reported at the CSV file's line (PolicyError). A row identical in holder
    and domains to an existing entry is not a problem (add_entries skips it).
    """
    rows = csv.DictReader(io.StringIO(text))
    columns = rows.fieldnames or []
    missing = {"holder", "domains", "reason", "source", "since"} - set(columns)
    if missing:
        raise ValueError(
            f"{path}: the header lacks {', '.join(sorted(missing))} (columns: {', '.join(ENTRY_KEYS)})"
        )
    unknown = [c for c in columns if c not in ENTRY_KEYS]
    if unknown:
        raise ValueError(
            f"{path}:1: unknown column(s) {', '.join(unknown)} (columns: {', '.join(ENTRY_KEYS)})"
        )

    def split(value: str | None) -> list[str]:
        return [v for v in (value or "").replace(";", " ").split() if v]

    seen = {(d, e.paths): f"{Path(e.file).name}:{e.line} ({e.holder})" for e in existing for d in e.domains}
    same = {(e.holder, e.domains) for e in existing}
    problems: list[Problem] = []
    entries: list[CommentedMap] = []
    line = rows.line_num + 1
    for row in rows:
        here = line
        line = rows.line_num + 1
        if None in row:
            extra = len(row[None])
            problems.append(Problem(path, here, f"{extra} value(s) more than the header has columns"))
            continue
        cell = {k: (v or "").strip() for k, v in row.items()}
        entry = make_entry(cell["holder"], split(cell["domains"]), split(cell.get("paths")), cell["reason"],
                           cell["source"], cell["since"])  # fmt: skip
        reader = Reader(path)
        found = read_entries(reader, reader.compose(_dump({"entries": [entry]})))  # type: ignore[arg-type]
        problems.extend(Problem(path, here, p.message) for p in reader.problems)
        for e in found:
            if (e.holder, e.domains) in same:
                continue
            for d in e.domains:
                first = seen.setdefault((d, e.paths), f"{path.name}:{here} ({e.holder})")
                if not first.startswith(f"{path.name}:{here} "):
                    problems.append(Problem(path, here, f"'{d}' is already listed at {first}; list it once"))
        entries.append(entry)
    if problems:
        raise PolicyError(problems)
    return entries


def tokens_from_robots_json(text: str, match: str | None = None) -> list[str]:
    """Product tokens from an ai.robots.txt `robots.json`; with `match`, only entries mentioning it."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("robots.json must be an object keyed by product token")
    out = []
    for token, info in data.items():
        if match and match.lower() not in json.dumps(info).lower():
            continue
        out.append(str(token))
    return out


def add_honor_agents(policy_path: Path, tokens: list[str]) -> tuple[list[str], list[str]]:
    """Add tokens to `honor_agents` (validated with the whole policy, atomically).

    Returns (added, skipped): tokens that are not valid product tokens (spaces, '/') are skipped,
    as are those already present (case-insensitively).
    """
    data = _yaml().load(policy_path.read_text(encoding="utf-8"))
    if "honor_agents" not in data or data["honor_agents"] is None:
        data["honor_agents"] = CommentedSeq(list(DEFAULT_HONOR_AGENTS))
    current = {str(t).lower() for t in data["honor_agents"]}
    added, skipped = [], []
    for token in tokens:
        if not OTHER_TOKEN.fullmatch(token):
            skipped.append(token)
        elif token.lower() not in current:
            data["honor_agents"].append(token)
            current.add(token.lower())
            added.append(token)
    if added:
        text = _dump(data)
        temp = policy_path.with_name(f".{policy_path.stem}.check{policy_path.suffix}")
        temp.write_text(text, encoding="utf-8")
        try:
            load_policy(temp)  # the whole policy, registries included, must still be valid
        except PolicyError as e:
            raise PolicyError([Problem(policy_path, p.line, p.message) if p.path == temp else p
                               for p in e.problems]) from e  # fmt: skip
        finally:
            temp.unlink()
        atomic_write(policy_path, text)
    return added, skipped
