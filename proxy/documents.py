"""The policy documents of one origin, fetched once, together, and cached together.

An origin's documents are robots.txt (RFC 9309), /ai.txt and
/.well-known/ai.txt, /.well-known/tdmrep.json and the RSL licences its
robots.txt names in `License:` lines. robots.txt, both ai.txt and
tdmrep.json are fetched concurrently, never one after another; the
licences follow robots.txt, which names them. An `OriginDocuments` is the
cache value: immutable, replaced whole on refresh.

Caching (RFC 9309 §2.4): a good answer is kept for min(Cache-Control, 24 h)
of robots.txt; an unreachable robots.txt is retried after `unreachable_retry`
seconds. When a refresh finds robots.txt unreachable but a good copy younger
than `STALE_LIMIT` is at hand, the good copy stays in force (signals.md §2.2,
S8) and the failed refresh is recorded beside it. The other documents are
optional: any answer but 2xx means "no signal" from them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.evidence import Document, Finding, Says
from proxy.fetch import Fetched, fetch_document
from proxy.origin import Origin
from proxy.policy import Policy
from proxy.signals import aitxt, contentsignal, contentusage, robots, rsl, tdmrep
from proxy.signals.robots import RuleMatcher

# RFC 9309 §2.3.1.4: after "a reasonably long period (e.g. 30 days)" of
# unreachability a crawler MAY stop using its cached copy; we then fall back to
# complete disallow, never to allow-all.
STALE_LIMIT = dt.timedelta(days=30)
MAX_LICENSES = 4  # License lines followed per robots.txt


@dataclass(frozen=True, slots=True)
class OptionalDoc:
    """An optional document (ai.txt, tdmrep.json, a licence): how it was fetched, and what it holds."""

    outcome: str  # ok | unavailable | unreachable | invalid
    document: Document
    parsed: Any  # the module's parse() result when ok, else None


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakly held by proxy.assess.DecisionMemo
class OriginDocuments:
    """What one origin's policy documents said when last fetched."""

    origin: Origin
    robots_outcome: str  # ok | unavailable | unreachable
    robots_document: Document
    robots: robots.RobotsTxt | None  # parsed, when ok
    stale_because: Document | None = None  # a failed refresh while an older good copy stays in force
    ai_txt: OptionalDoc | None = None
    tdm_json: OptionalDoc | None = None
    ai_txt_well_known: OptionalDoc | None = None  # /.well-known/ai.txt (the draft's location)
    licenses: tuple[tuple[str, OptionalDoc], ...] = ()
    # rule_matchers per policy (proxy.assess.DecisionMemo), kept here so they die with these
    # documents; not an argument, so `dataclasses.replace` gives a copy its own.
    plans: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)
    # the pace interval per policy (proxy.politeness), for the same reason
    paces: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def robots_findings(self, path: str, agent: str, honor_agents: tuple[str, ...]) -> list[Finding]:
        """robots.txt Allow/Disallow findings for `path` on this origin."""
        doc = self.robots_document
        if self.robots_outcome == "ok" and self.robots is not None:
            return robots.findings_for(path, self.robots, agent, honor_agents, doc)
        if robots.is_self(path):
            return [robots.self_allowed(doc)]
        if self.robots_outcome == "unavailable":
            return [Finding(robots.NAME, Says.UNAVAILABLE, f"HTTP {doc.status}: no restrictions", doc)]
        return [Finding(robots.NAME, Says.UNREACHABLE, doc.error or "unreachable", doc)]

    def prefetch_findings(self, url: str, path: str, policy: Policy) -> list[Finding]:
        """Every finding this origin's documents give for `url` before it is fetched.

        A source added here that reads the path or the URL must be named in
        `depends_on_rules_only` too, or proxy.assess.DecisionMemo would share its findings
        between paths (tests/test_hot_path.py).
        """
        mode = policy.signal_mode
        found: list[Finding] = []
        if mode(robots.NAME) != "off":
            found += self.robots_findings(path, policy.agent, policy.honor_agents)
        parsed = self.robots if self.robots_outcome == "ok" else None
        inherit = policy.reading("star_group_preferences") == "inherit"
        doc = self.robots_document
        if parsed is not None:
            if mode(robots.NAME) != "off":
                found += robots.ai_training_findings(
                    path, parsed, policy.agent, policy.purpose, doc, inherit_star=inherit
                )
            if mode(contentusage.NAME) != "off":
                found += contentusage.findings_for(
                    path, parsed, policy.agent, policy.purpose, doc,
                    legacy=policy.reading("lenient_readings") == "block", inherit_star=inherit,
                )  # fmt: skip
            if mode(contentsignal.NAME) != "off":
                found += contentsignal.findings_for(
                    parsed, policy.agent, policy.purpose, doc, inherit_star=inherit
                )
        if mode(aitxt.NAME) != "off":
            for ai in (self.ai_txt, self.ai_txt_well_known):
                if ai is not None and ai.parsed is not None:
                    found += aitxt.findings_for(
                        path, ai.parsed, policy.agent, policy.honor_agents, policy.purpose, ai.document
                    )
        if mode(tdmrep.NAME) != "off":
            found += tdmrep.prefetch_findings(
                self.tdm_file(path, policy), policy.purpose, policy.reading("tdmrep_precedence")
            )
        if mode(rsl.NAME) != "off":
            for source, lic in self.licenses:
                found += license_findings(url, source, lic, policy)
        return found

    def depends_on_rules_only(self, policy: Policy) -> bool:
        """True if, under `policy`, `prefetch_findings` depends on the path only through which
        robots.txt rules match it (and whether it is /robots.txt itself): no path-scoped
        records, no ai.txt, no tdmrep.json entry, no licence (whose findings name the URL)."""
        mode = policy.signal_mode
        parsed = self.robots if self.robots_outcome == "ok" else None
        if parsed is not None:
            inherit = policy.reading("star_group_preferences") == "inherit"
            if mode(robots.NAME) != "off" and any(
                parsed.records_for(policy.agent, key, inherit_star=inherit) for key in robots.AI_TRAINING_KEYS
            ):
                return False
            if mode(contentusage.NAME) != "off" and parsed.records_for(
                policy.agent, contentusage.KEY, inherit_star=inherit
            ):
                return False
        if mode(aitxt.NAME) != "off" and any(
            ai is not None and ai.parsed is not None for ai in (self.ai_txt, self.ai_txt_well_known)
        ):
            return False
        if mode(tdmrep.NAME) != "off" and self.tdm_json is not None and self.tdm_json.parsed is not None:
            return False
        return not (mode(rsl.NAME) != "off" and self.licenses)

    def rule_matchers(self, policy: Policy) -> tuple[RuleMatcher | None, ...] | None:
        """The robots.txt matchers `robots_findings` asks, when nothing else in `prefetch_findings`
        depends on the path; None when something does.

        Then the findings for a path are a function of whether it is /robots.txt itself and
        of the rule each matcher returns: our agent's (star groups included) first, then one
        per honored token that a group names. Empty when robots.txt is not read for rules.
        """
        if not self.depends_on_rules_only(policy):
            return None
        parsed = self.robots if self.robots_outcome == "ok" else None
        if parsed is None or policy.signal_mode(robots.NAME) == "off":
            return ()
        matchers = [parsed.matcher_for(policy.agent, star_fallback=True)]
        seen = {policy.agent.lower()}
        named = parsed.named_tokens()
        for token in policy.honor_agents:
            lowered = token.lower()
            if lowered not in named or lowered in seen:
                continue
            seen.add(lowered)
            matchers.append(parsed.matcher_for(token, star_fallback=False))
        return tuple(matchers)

    def tdm_file(self, path: str, policy: Policy) -> tdmrep.Channel | None:
        """The tdmrep.json statement for `path`, if the origin has the file and an entry matches."""
        if self.tdm_json is None or self.tdm_json.parsed is None:
            return None
        lenient = policy.reading("lenient_readings") == "block"
        return tdmrep.file_channel(path, self.tdm_json.parsed, self.tdm_json.document, lenient=lenient)


def license_findings(url: str, source: str, lic: OptionalDoc, policy: Policy) -> list[Finding]:
    """The finding of one RSL licence document for `url` (no signal if it is unusable)."""
    label = f"licence {source}"
    if lic.parsed is None:
        why = "not an RSL document" if lic.outcome in ("ok", "invalid") else f"not fetched ({lic.outcome})"
        return [rsl.unusable(label, lic.document, why)]
    return rsl.findings_for(url, lic.parsed, policy.purpose, policy.reading("rsl_user"), lic.document, label)


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# Called with every document fetched with a body, and what kind it is (the evidence store).
Keep = Callable[[Fetched, str], None]
Get = Callable[
    ..., Awaitable[Fetched]
]  # fetch_document's signature: (client, url, *, max_bytes, total_timeout)


def _no_keep(fetched: Fetched, kind: str) -> None:
    return None


# Documents larger than this are parsed in a worker thread: a 500 KiB robots.txt takes tens
# of milliseconds to parse, and every other flow would wait for it on the event loop.
OFF_LOOP_BYTES = 32 * 1024


async def parse_off_loop(parse: Callable[[bytes], Any], body: bytes) -> Any:
    """`parse(body)`, in a worker thread when the body is large."""
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse, body)
    return parse(body)


async def fetch_optional(
    client: httpx.AsyncClient,
    url: str,
    parse: Any,
    *,
    max_bytes: int,
    total_timeout: float,
    keep: Keep = _no_keep,
    kind: str = "document",
    get: Get = fetch_document,
) -> OptionalDoc:
    """Fetch and parse an optional document; never blocks on failure.

    Raises LocalLimit only when the failure was ours (the origin said nothing).
    """
    got: Fetched = await get(client, url, max_bytes=max_bytes, total_timeout=total_timeout)
    if got.outcome == "ok":
        keep(got, kind)
    if got.outcome != "ok":
        return OptionalDoc(got.outcome, got.document, None)
    try:
        parsed = await parse_off_loop(parse, got.body or b"")
    except Exception:  # a parser bug must not take the origin down; the document gives no signal
        parsed = None
    return OptionalDoc("ok" if parsed is not None else "invalid", got.document, parsed)


async def fetch_license(
    client: httpx.AsyncClient,
    url: str,
    *,
    total_timeout: float,
    keep: Keep = _no_keep,
    get: Get = fetch_document,
) -> OptionalDoc:
    """Fetch and parse an RSL licence document, wherever it was named (robots.txt, Link, HTML)."""
    return await fetch_optional(
        client,
        url,
        rsl.parse,
        max_bytes=rsl.MAX_BYTES,
        total_timeout=total_timeout,
        keep=keep,
        kind="rsl-licence",
        get=get,
    )


def _good_or_kept(new: OptionalDoc, old: OptionalDoc | None) -> OptionalDoc:
    """`new`, or `old` when `new` could not be fetched and `old` is a good copy under STALE_LIMIT."""
    if new.outcome != "unreachable" or old is None or old.outcome != "ok":
        return new
    age = _parse_time(new.document.fetched_at) - _parse_time(old.document.fetched_at)
    return old if age < STALE_LIMIT else new


async def load_origin(
    client: httpx.AsyncClient,
    origin: Origin,
    previous: OriginDocuments | None,
    *,
    total_timeout: float,
    unreachable_retry: float,
    keep: Keep = _no_keep,
    tokens: tuple[str, ...] = (),
    get: Get = fetch_document,
) -> tuple[OriginDocuments, float]:
    """Fetch `origin`'s documents; returns the new cache value and its TTL in seconds.

    `keep` sees every document that came with a body (for the evidence store).
    `tokens` (our agent first, then the honored ones) get their rule matchers
    built with the parse, off the event loop for a large file. `get` fetches
    one document (proxy.shared: from the fleet's store, or by us).
    """
    limit = total_timeout
    fetched, ai, ai_well_known, tdm = await asyncio.gather(
        get(client, origin.url(robots.PATH), max_bytes=robots.MAX_BYTES, total_timeout=limit),
        fetch_optional(
            client, origin.url(aitxt.PATH), aitxt.parse, max_bytes=aitxt.MAX_BYTES, total_timeout=limit,
            keep=keep, kind="ai.txt", get=get,
        ),
        fetch_optional(
            client, origin.url(aitxt.WELL_KNOWN_PATH), aitxt.parse, max_bytes=aitxt.MAX_BYTES,
            total_timeout=limit, keep=keep, kind="well-known-ai.txt", get=get,
        ),
        fetch_optional(
            client, origin.url(tdmrep.PATH), tdmrep.parse, max_bytes=tdmrep.MAX_BYTES, total_timeout=limit,
            keep=keep, kind="tdmrep.json", get=get,
        ),
    )  # fmt: skip
    # An optional document that could not be fetched this time keeps its last good copy (for
    # STALE_LIMIT, as robots.txt does): one 503 at a refresh must not lift a reservation for a
    # whole robots.txt lifetime. The origin is then asked again soon.
    ttl = fetched.ttl
    if previous is not None:
        fresh = (ai, ai_well_known, tdm)
        olds = (previous.ai_txt, previous.ai_txt_well_known, previous.tdm_json)
        kept_docs = [_good_or_kept(new, old) for new, old in zip(fresh, olds, strict=True)]
        if any(k is not new for k, new in zip(kept_docs, fresh, strict=True)):
            ttl = min(ttl, unreachable_retry)
        ai, ai_well_known, tdm = kept_docs
    if fetched.outcome == "ok":
        keep(fetched, "robots.txt")
        parsed = await parse_off_loop(lambda body: robots.parse(body).warm(tokens), fetched.body or b"")
        sources = [r.value for r in parsed.file_records("license") if r.value][:MAX_LICENSES]
        licenses = await asyncio.gather(
            *(fetch_license(client, src, total_timeout=total_timeout, keep=keep, get=get) for src in sources)
        )  # fmt: skip
        docs = OriginDocuments(
            origin, "ok", fetched.document, parsed, ai_txt=ai, tdm_json=tdm, ai_txt_well_known=ai_well_known,
            licenses=tuple(zip(sources, licenses, strict=True)),
        )  # fmt: skip
        return docs, ttl
    if fetched.outcome == "unavailable":
        return OriginDocuments(
            origin, "unavailable", fetched.document, None, ai_txt=ai, tdm_json=tdm,
            ai_txt_well_known=ai_well_known,
        ), ttl  # fmt: skip
    # Unreachable: keep a good copy in force if we have a recent one.
    if previous is not None and previous.robots_outcome != "unreachable":
        age = _parse_time(fetched.document.fetched_at) - _parse_time(previous.robots_document.fetched_at)
        if age < STALE_LIMIT:
            kept = OriginDocuments(
                origin, previous.robots_outcome, previous.robots_document, previous.robots,
                stale_because=fetched.document, ai_txt=previous.ai_txt, tdm_json=previous.tdm_json,
                ai_txt_well_known=previous.ai_txt_well_known, licenses=previous.licenses,
            )  # fmt: skip
            return kept, unreachable_retry
    return OriginDocuments(
        origin, "unreachable", fetched.document, None, ai_txt=ai, tdm_json=tdm,
        ai_txt_well_known=ai_well_known,
    ), unreachable_retry  # fmt: skip
