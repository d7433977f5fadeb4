"""Editing policy and registry files: keep comments and order, validate, replace atomically.

Edits go through ruamel.yaml's round-trip mode, so a person's comments (the
one above each entry included), key order and blank lines survive. The new
text is validated with the same checks as `policy validate`, beside the
policy's other registries, before anything is written, and it replaces the
file by rename (after fsync): a crash mid-write leaves the old file or the
new one, never half of either. One edit at a time holds the file's lock
(`.NAME.lock` beside it), so edits run together are all kept. The file keeps
its mode, a read-only one is refused, a symlink is written through. The
running proxy picks the change up by itself (hot reload).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from proxy.errors import PolicyError, Problem
from proxy.policy import DEFAULT_HONOR_AGENTS, OTHER_TOKEN, Policy, load_policy, read_file
from proxy.registry import ENTRY_KEYS, Entry, read_entries
from proxy.yamldoc import Reader


def _yaml() -> YAML:
    y = YAML()  # round-trip
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text`: write a temporary file beside it, fsync, rename, fsync the directory.

    A symlink is written through (the file it names is replaced, the link stays), the file keeps
    its mode, and a file we may not write is refused, not replaced behind its owner's back.
    """
    path = path.resolve() if path.is_symlink() else path
    mode = None
    if path.exists():
        mode = path.stat().st_mode & 0o7777
        if not os.access(path, os.W_OK) or not mode & 0o222:  # root may write anything: the mode says
            raise PermissionError(f"{path}: the file is read-only; nothing was written")
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
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


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for one read-change-write of `path` (a lock file beside it): edits
    run at the same time are applied one after the other, none lost."""
    target = path.resolve() if path.is_symlink() else path
    lock = target.with_name(f".{target.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _dump(data: Any) -> str:
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def _check_registry_text(path: Path, text: str, policy: Policy | None = None) -> None:
    """Raise PolicyError (naming `path` and lines) if `text` is not a valid registry, alone or, given
    the `policy`, beside its other registries (a domain listed in two files)."""
    seen: dict[tuple[str, tuple[str, ...]], tuple[str, int, str]] = {}
    for other in policy.registries if policy is not None else ():
        if other.resolve() == path.resolve():
            continue
        other_reader = Reader(other)
        other_root = other_reader.compose(read_file(other).decode("utf-8-sig"))
        if other_root is not None:
            read_entries(other_reader, other_root, seen)
    reader = Reader(path)
    root = reader.compose(text)
    if root is not None:
        read_entries(reader, root, seen)
    elif not reader.problems:
        reader.problem(None, "the registry would be empty")
    if reader.problems:
        raise PolicyError(reader.problems)


def _load_registry(path: Path) -> Any:
    """The registry file for editing (round-trip), checked first: a file that is already broken
    is reported at its lines, not edited."""
    if not path.exists():
        return CommentedMap()
    text = read_file(path).decode("utf-8-sig")
    if text.strip():
        reader = Reader(path)
        root = reader.compose(text)
        if root is not None:
            read_entries(reader, root)
        if reader.problems:
            raise PolicyError(reader.problems)
    data = _yaml().load(text)
    return CommentedMap() if data is None else data


def registry_file(policy: Policy, chosen: str | None) -> Path:
    """The registry to edit: `chosen` (as given, or relative to the policy's folder), which must be
    one the policy reads; or the policy's first. A file the policy does not list would be
    written and never enforced."""
    if not policy.registries:
        raise PolicyError(
            [Problem(policy.path, None, "the policy lists no registries: add one under 'registries:'")]
        )
    if not chosen:
        return policy.registries[0]
    listed = {r.resolve(): r for r in policy.registries}
    for candidate in (Path(chosen), policy.path.parent / chosen):
        if candidate.resolve() in listed:
            return listed[candidate.resolve()]
    names = ", ".join(str(r) for r in policy.registries)
    why = f"{chosen} is not one of the registries this policy reads ({names}); list it under 'registries:'"
    raise PolicyError([Problem(policy.path, None, why)])


def _text(value: str) -> str:
    """`value`, quoted when written if a YAML 1.1 reader (PyYAML, which validates and loads
    policies) would read it as something else (`NO`, `yes`, `1e3`, `2025-01-01`, `null`)."""
    try:
        plain = yaml.safe_load(value)
    except yaml.YAMLError:
        plain = None
    return value if plain == value and isinstance(plain, str) else DoubleQuotedScalarString(value)


def make_entry(
    holder: str, domains: Iterable[str], paths: Iterable[str], reason: str, source: str, since: str
) -> CommentedMap:
    """A registry entry in the file's key order."""
    entry = CommentedMap()
    entry["holder"] = _text(holder)
    entry["domains"] = CommentedSeq([_text(d) for d in domains])
    entry["domains"].fa.set_flow_style()
    plist = [_text(p) for p in paths]
    if plist:
        entry["paths"] = CommentedSeq(plist)
        entry["paths"].fa.set_flow_style()
    entry["reason"] = _text(reason)
    entry["source"] = _text(source)
    try:
        entry["since"] = dt.date.fromisoformat(since)
    except ValueError:
        entry["since"] = since  # validation names the problem
    return entry


def add_entries(path: Path, entries: list[CommentedMap], policy: Policy | None = None) -> int:
    """Append entries to a registry file (validated with the policy's other registries, atomically,
    under the file's lock); returns how many were added."""
    with locked(path):
        return _add_entries(path, entries, policy)


def _add_entries(path: Path, entries: list[CommentedMap], policy: Policy | None) -> int:
    data = _load_registry(path)
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
    _check_registry_text(path, text, policy)
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
    with locked(path):
        return _remove_entries(path, holder, domain)


def _remove_entries(path: Path, holder: str | None, domain: str | None) -> list[str]:
    data = _load_registry(path)
    entries = data.get("entries") or []
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
            if _shared(domains, entries):
                # An alias (`domains: *shared`): the other entries listing it keep the domain.
                e["domains"] = CommentedSeq(left)
                e["domains"].fa.set_flow_style()
            else:
                domains[:] = left  # in place: the list keeps its style and comments
            changes.append(f"removed {wanted} from {name} (still listed: {', '.join(str(d) for d in left)})")
            keep.append(e)
        else:
            changes.append(f"removed {name} ({wanted} was its only domain)")
    if not changes:
        raise ValueError(_nothing_to_remove(entries, holder, wanted, path))
    _keep_with_comments(data, [i for i, e in enumerate(entries) if any(e is k for k in keep)])
    text = _dump(data)
    _check_registry_text(path, text)
    atomic_write(path, text)
    return changes


def _keep_with_comments(data: Any, keep: list[int]) -> None:
    """Keep only the entries at indices `keep`, each with the comment lines above it.

    ruamel keeps the comment above an entry on the entry before it (after its last value), and
    the first one's on the list: removing an entry must not take the next one's heading along.
    """
    entries = data["entries"]
    heads: list[Any] = [("first", entries.ca.comment[1] if entries.ca.comment else None)]
    heads += [("after", (_last_slot(e) or [None] * 3)[2]) for e in entries]  # heads[i]: above entry i
    kept = [entries[i] for i in keep]
    for e in kept:
        if (slot := _last_slot(e)) is not None:
            slot[2] = None
    del entries[:]
    entries.extend(kept)
    first = _as_first(heads[keep[0]]) if keep else None
    if entries.ca.comment:
        entries.ca.comment[1] = first
    elif first:
        entries.ca.comment = [None, first]
    if "entries" in data.ca.items and len(data.ca.items["entries"]) > 3:
        data.ca.items["entries"][3] = first
    for j in range(1, len(kept)):
        _last_slot(kept[j - 1], create=True)[2] = heads[keep[j]][1]  # type: ignore[index]
    if kept and heads[-1][1] is not None:  # what followed the last entry stays at the end
        _last_slot(kept[-1], create=True)[2] = heads[-1][1]  # type: ignore[index]


def _last_slot(entry: Any, create: bool = False) -> list[Any] | None:
    """ruamel's comment slot of an entry's last key (its [2] is what follows the value)."""
    if not isinstance(entry, CommentedMap) or not entry:
        return None
    last = list(entry.keys())[-1]
    if create:
        return entry.ca.items.setdefault(last, [None, None, None, None])  # type: ignore[no-any-return]
    return entry.ca.items.get(last)  # type: ignore[no-any-return]


def _as_first(head: tuple[str, Any]) -> list[Any] | None:
    """A heading comment moved to the top of the list: there ruamel keeps a list of lines."""
    kind, token = head
    if kind == "first" or token is None:
        return token  # type: ignore[no-any-return]
    text = token.value[1:] if token.value.startswith("\n") else token.value
    return [CommentToken(text.lstrip(" "), CommentMark(2), None)] if text.strip() else None


def _shared(domains: Any, entries: list[Any]) -> bool:
    """Whether a domains list is an anchored node, or the same list as another entry's (an alias)."""
    anchor = getattr(domains, "anchor", None)
    if anchor is not None and getattr(anchor, "value", None):
        return True
    return sum(e.get("domains") is domains for e in entries) > 1


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
    with locked(policy_path):
        return _add_honor_agents(policy_path, tokens)


def _add_honor_agents(policy_path: Path, tokens: list[str]) -> tuple[list[str], list[str]]:
    data = _yaml().load(read_file(policy_path).decode("utf-8-sig"))
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
        temp = policy_path.with_name(f".{policy_path.stem}.check.{os.getpid()}{policy_path.suffix}")
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
