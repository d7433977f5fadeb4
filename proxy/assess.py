"""assess(): gather the findings for one request and decide.

Shared by the addon and `optout-proxy check`, so that both reach the same
decision from the same evidence. The only I/O is through `get_documents`,
which the addon backs with its cache and `check` with a direct fetch.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.decide import decide
from proxy.documents import OriginDocuments
from proxy.evidence import Decision, Finding, Says
from proxy.origin import Origin
from proxy.paths import variants
from proxy.policy import Policy
from proxy.signals.robots import is_self

GetDocuments = Callable[[Origin], Awaitable[OriginDocuments]]

# The finding that says which reading of an ambiguous path decided.
PATH_FORM = "path-form"
# Decisions kept by `DecisionMemo`, across all origins (the oldest dropped first).
MEMO_SIZE = 4096


class DecisionMemo:
    """Decisions reached from one origin's documents, kept by what they depended on (never by URL).

    When an origin's documents give findings that depend on the path only through
    the robots.txt rules matching it (`OriginDocuments.rule_matchers`), the
    decision is a function of (documents, policy, mode, matched rules): it is kept
    under that key and shared, since Decision and Finding are immutable. An entry
    holds its documents and policy weakly and is used only for those very objects,
    so a refreshed cache entry or a reloaded policy starts afresh, and the memo
    keeps neither alive (a large robots.txt is freed with its cache entry). At most
    `size` decisions are kept, the oldest dropped first.
    """

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._decisions: dict[tuple[Any, ...], tuple[weakref.ref[Any], weakref.ref[Any], Decision]] = {}

    def decision(
        self, docs: OriginDocuments, origin: Origin, path: str, policy: Policy, mode: str | None
    ) -> Decision:
        """`decide(docs.prefetch_findings(origin.url(path), path, policy), policy, mode=mode)`."""
        plan = docs.plans.get(id(policy))
        if plan is None or plan[0]() is not policy:
            if len(docs.plans) >= 4:  # policies replaced by reloads
                docs.plans.clear()
            plan = docs.plans[id(policy)] = (weakref.ref(policy), docs.rule_matchers(policy))
        matchers = plan[1]
        if matchers is None:
            return decide(docs.prefetch_findings(origin.url(path), path, policy), policy, mode=mode)
        # What the findings depend on: /robots.txt itself (always allowed), else the rules matched.
        rules: Any
        if is_self(path):
            rules = True
        elif len(matchers) == 1:
            rules = matchers[0].match(path) if matchers[0] is not None else None
        else:
            rules = tuple(m.match(path) if m is not None else None for m in matchers)
        key = (id(docs), id(policy), mode, rules)
        table = self._decisions
        hit = table.get(key)
        if hit is not None and hit[0]() is docs and hit[1]() is policy:
            return hit[2]
        decision = decide(docs.prefetch_findings(origin.url(path), path, policy), policy, mode=mode)
        if len(table) >= self.size:
            del table[next(iter(table))]
        table[key] = (weakref.ref(docs), weakref.ref(policy), decision)
        return decision


def _strictest(decisions: Sequence[tuple[str, Decision]]) -> tuple[str, Decision]:
    """An enforced block first, then a monitored one, else the first (canonical) form's allow."""
    for form, decision in decisions:
        if decision.blocks:
            return form, decision
    for form, decision in decisions:
        if decision.deciding is not None:
            return form, decision
    return decisions[0]


@dataclass(slots=True)
class Pending:
    """A request judged as far as the registry: its path forms, each with its findings so far."""

    path: str
    hosts: tuple[str, ...]
    by_form: list[tuple[str, list[Finding]]]


def start(policy: Policy, path: str, hosts: Iterable[str], *, mode: str | None = None) -> Decision | Pending:
    """The registry's part of a decision: a Decision when an enforced registry block settles it
    (no document of the origin is needed, nor fetched), else what `finish` completes."""
    hosts = tuple(hosts)
    monitor_all = (mode or policy.mode) == "monitor"
    registry_mode = policy.signal_mode("registry")
    by_form: list[tuple[str, list[Finding]]] = []
    for form in variants(path):
        found: list[Finding] = []
        if registry_mode != "off":
            found.extend(policy.registry.findings_for(hosts, form))
            if found and registry_mode == "enforce" and not monitor_all:
                return _with_form(path, form, decide(found, policy, mode=mode))
        by_form.append((form, found))
    return Pending(path, hosts, by_form)


def finish(
    policy: Policy,
    pending: Pending,
    origins: Sequence[Origin],
    docs: Sequence[OriginDocuments],
    *,
    mode: str | None = None,
    memo: DecisionMemo | None = None,
) -> Decision:
    """The decision, from the registry's findings and each origin's documents (pure; `memo`
    only keeps decisions already reached, for the next request that matches the same rules)."""
    if memo is not None and len(docs) == 1 and len(pending.by_form) == 1 and not pending.by_form[0][1]:
        # The usual request: one origin, one path form, nothing in the registry.
        form = pending.by_form[0][0]
        decision = memo.decision(docs[0], origins[0], form, policy, mode)
        return _with_form(pending.path, form, decision)
    decisions = []
    for form, registry_found in pending.by_form:
        found = list(registry_found)
        for origin, d in zip(origins, docs, strict=True):
            found.extend(d.prefetch_findings(origin.url(form), form, policy))
        decisions.append((form, decide(found, policy, mode=mode)))
    form, decision = _strictest(decisions)
    return _with_form(pending.path, form, decision)


async def assess(
    policy: Policy,
    origins: Sequence[Origin] | Origin,
    path: str,
    hosts: Iterable[str],
    get_documents: GetDocuments,
    *,
    mode: str | None = None,
) -> Decision:
    """The decision for a request to `path` (path plus ?query, as sent) on `origins`.

    `hosts` are every name the request goes by (target, Host header, CONNECT
    authority, TLS SNI), all checked against the registry. `origins` are the
    sites whose documents apply (more than one when the names disagree). The
    path is judged in every form the origin may serve (`proxy.paths.variants`)
    and the strictest answer wins. A registry block that will be enforced
    skips the origins' documents: a rights holder who wrote to us does not get
    even its robots.txt fetched.
    """
    if isinstance(origins, Origin):
        origins = (origins,)
    begun = start(policy, path, hosts, mode=mode)
    if isinstance(begun, Decision):
        return begun
    if len(origins) == 1:
        docs = [await get_documents(origins[0])]
    else:
        docs = list(await asyncio.gather(*(get_documents(o) for o in origins)))
    return finish(policy, begun, origins, docs, mode=mode)


def _with_form(path: str, form: str, decision: Decision) -> Decision:
    """Name the path form that decided when it is not the path as sent."""
    if form == path:
        return decision
    note = Finding(PATH_FORM, Says.UNKNOWN, f"path {path!r} judged as {form!r}")
    return replace(decision, findings=(*decision.findings, note))
