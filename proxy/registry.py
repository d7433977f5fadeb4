"""The rights-holder registry: opt-outs that no file on the holder's site expresses.

A letter such as CODA's of 2025-10-27 to OpenAI binds a compliant crawler even
where robots.txt says nothing. Each entry names a holder, the domains it
covers (each with all its subdomains) and optional path prefixes.

Matching is by host, spelled canonically (`proxy.origin.canonical_host`:
case, trailing dot, IDNA Unicode/punycode), and walks the host's parent
domains in a dict: O(number of labels), independent of the registry's size.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import Node

from proxy.evidence import Finding, Says
from proxy.origin import canonical_host
from proxy.paths import normalize
from proxy.yamldoc import Reader, line_of

NAME = "registry"
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
ENTRY_KEYS = ("holder", "domains", "paths", "reason", "source", "since")
REQUIRED_KEYS = ("holder", "domains", "reason", "source", "since")


@dataclass(frozen=True, slots=True)
class Entry:
    """One rights holder's opt-out, as written in a registry file."""

    holder: str
    domains: tuple[str, ...]  # canonical
    paths: tuple[str, ...]  # URL path prefixes; empty = the whole site
    reason: str
    source: str
    since: str  # ISO date
    file: str
    line: int

    def covers_path(self, path: str) -> str | None:
        """The path prefix of this entry that covers `path`, "" for a whole-site entry, else None."""
        if not self.paths:
            return ""
        # Both sides canonical (proxy.paths), so /%77orks/ and /x/../works/ are /works/.
        canonical = normalize(path)
        for prefix in self.paths:
            if canonical.startswith(normalize(prefix)):
                return prefix
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "holder": self.holder,
            "domains": list(self.domains),
            "reason": self.reason,
            "source": self.source,
            "since": self.since,
            "file": self.file,
            "line": self.line,
        }
        if self.paths:
            out["paths"] = list(self.paths)
        return out


class Registry:
    """All entries of one or more registry files, indexed by canonical domain."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        self._by_domain: dict[str, list[Entry]] = {}
        for entry in self.entries:
            for domain in entry.domains:
                self._by_domain.setdefault(domain, []).append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def domain_count(self) -> int:
        return len(self._by_domain)

    def match(self, host: str, path: str) -> tuple[Entry, str] | None:
        """The entry covering `host` + `path` and the domain it matched on, or None."""
        h = canonical_host(host)
        while True:
            for entry in self._by_domain.get(h, ()):
                if entry.covers_path(path) is not None:
                    return entry, h
            dot = h.find(".")
            if dot < 0:
                return None
            h = h[dot + 1 :]

    def whole_site(self, host: str) -> bool:
        """True if an entry with no paths covers `host` (or a domain above it): the whole site is
        the holder's, so nothing of it is fetched, not even its robots.txt."""
        h = canonical_host(host)
        while True:
            if any(not entry.paths for entry in self._by_domain.get(h, ())):
                return True
            dot = h.find(".")
            if dot < 0:
                return False
            h = h[dot + 1 :]

    def findings_for(self, hosts: Iterable[str], path: str) -> list[Finding]:
        """A DISALLOW finding if any of `hosts` (target and Host header) is covered."""
        seen: set[str] = set()
        for host in hosts:
            if not host or host in seen:
                continue
            seen.add(host)
            hit = self.match(host, path)
            if hit is not None:
                entry, domain = hit
                prefix = entry.covers_path(path)
                scope = f"{domain}{prefix}" if prefix else f"{domain} and its subdomains"
                return [
                    Finding(
                        NAME,
                        Says.DISALLOW,
                        f"{entry.holder}: {scope}",
                        entry=entry.to_json(),
                        line=entry.line,
                    )
                ]
        return []


def _domain(reader: Reader, value: str, node: Node) -> str | None:
    """A registry domain, canonical; a URL or a path is a problem with a fix."""
    v = value.strip()
    if "://" in v or "/" in v or "@" in v or " " in v:
        host = urlsplit(v if "://" in v else f"//{v}").hostname or v
        reader.problem(node, f"'{value}' is not a bare domain (write '{canonical_host(host)}')")
        return None
    if v.startswith("*."):
        reader.problem(node, f"'{value}': write '{v[2:]}'; a domain always covers its subdomains")
        return None
    name, colon, _ = v.partition(":")
    host = canonical_host(name)
    if colon:
        reader.problem(node, f"'{value}' has a port; a registry domain covers every port: write '{host}'")
        return None
    labels = host.split(".")
    if any(not label for label in labels):
        fixed = ".".join(label for label in labels if label)
        reader.problem(node, f"'{value}' has an empty label (two dots in a row); write '{fixed}'")
        return None
    if "_" in host:
        reader.problem(
            node, f"'{value}': a host name has no '_' (RFC 952/1123); this entry would match nothing"
        )
        return None
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        reader.problem(
            node, f"'{value}': '{bad}' is not a host name label (letters, digits and inner '-', at most 63)"
        )
        return None
    if len(labels) < 2:
        reader.problem(node, f"'{value}' is a top-level domain; an entry must name a registrable domain")
        return None
    return host


def read_entries(
    reader: Reader, root: Node, seen: dict[tuple[str, tuple[str, ...]], tuple[str, int, str]] | None = None
) -> list[Entry]:
    """Entries of one registry document (`entries:` list); problems go to `reader`.

    `seen` (shared across the files of one policy) finds a domain listed twice
    with the same paths: the second listing could never decide anything.
    """
    seen = {} if seen is None else seen
    top = reader.mapping(root, "the registry", allowed=("entries",), required=("entries",))
    if not top or "entries" not in top:
        return []
    items = reader.items(top["entries"], "entries")
    entries: list[Entry] = []
    for item in items or []:
        fields = reader.mapping(item, "a registry entry", allowed=ENTRY_KEYS, required=REQUIRED_KEYS)
        if fields is None:
            continue
        before = len(reader.problems)
        holder = reader.string(fields["holder"], "holder") if "holder" in fields else None
        domains: list[str] = []
        for value, node in (
            (reader.strings(fields["domains"], "domains") or []) if "domains" in fields else []
        ):
            d = _domain(reader, value, node)
            if d is not None:
                domains.append(d)
        if "domains" in fields and not domains and len(reader.problems) == before:
            reader.problem(fields["domains"], "domains must list at least one domain")
        paths: list[str] = []
        for value, node in (reader.strings(fields["paths"], "paths") or []) if "paths" in fields else []:
            if not value.startswith("/"):
                reader.problem(node, f"path '{value}' must start with '/'")
            elif (
                value.startswith("//")
                or "?" in value
                or any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in value)
            ):
                reader.problem(
                    node,
                    f"path {value!r} would match less than it seems: registry paths are path prefixes, "
                    "without a query ('?'), a second leading '/', spaces or invisible characters",
                )
            elif "*" in value or value.endswith("$"):
                # robots.txt's wildcards mean nothing here: the entry would match only this text.
                prefix = value.split("*", 1)[0].rstrip("$")
                prefix = prefix[: prefix.rfind("/") + 1] or "/"
                reader.problem(
                    node,
                    f"path '{value}' has a robots.txt wildcard ('*' or a final '$'); registry paths "
                    f"are prefixes: write '{prefix}' to cover everything under it",
                )
            else:
                paths.append(value)
        reason = reader.string(fields["reason"], "reason") if "reason" in fields else None
        source = reader.string(fields["source"], "source") if "source" in fields else None
        if source is not None and not source.startswith(("https://", "http://")):
            reader.problem(fields["source"], f"source must be an http(s) URL, not '{source}'")
        since = reader.date(fields["since"], "since") if "since" in fields else None
        for d in domains if len(reader.problems) == before else ():
            first = seen.setdefault((d, tuple(paths)), (str(reader.path), line_of(item), holder or "?"))
            if first[:2] != (str(reader.path), line_of(item)):
                where = f"{Path(first[0]).name}:{first[1]}"
                reader.problem(
                    fields["domains"], f"'{d}' is already listed for {first[2]} at {where}; list it once"
                )
        if len(reader.problems) == before and holder and reason and source and since:
            entries.append(
                Entry(
                    holder,
                    tuple(domains),
                    tuple(paths),
                    reason,
                    source,
                    since,
                    str(reader.path),
                    line_of(item),
                )
            )
    return entries
