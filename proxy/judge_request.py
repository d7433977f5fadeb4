"""The request judgement: every name and every path form of a request, decided before it goes upstream.

Order matters and is the cheapest-first order that contacts nobody early:
the Host fields are checked (several distinct ones are refused), an
absolute-form request's Host is made the target's, the registry decides what
it can (no contact at all), the addresses the names resolve to are checked,
then the origins' documents decide. A block is answered with 451 here, so no
upstream connection is ever opened for it (the proxy runs with lazy
connections).

A request to an origin whose documents are cached, and whose addresses need
no look-up, is decided synchronously: mitmproxy awaits a hook's result only
when it is awaitable, and most of a crawl is such requests.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from mitmproxy import http

from proxy.addresses import Resolver
from proxy.answers import BLOCK_STATUS, block_body
from proxy.assess import DecisionMemo, GetDocuments, Pending, finish, start
from proxy.audit import new_id
from proxy.documents import OriginDocuments
from proxy.evidence import Decision, Finding, Says, Verdict
from proxy.guard import (
    RequestNames,
    address_refusal,
    fix_host,
    refusal_for,
    request_names,
    target_form_problem,
)
from proxy.inband import reads_bodies
from proxy.origin import Origin
from proxy.outcome import FlowState, Recorder, refusal, summary
from proxy.policy import Policy
from proxy.politeness import STATUS as PACE_STATUS
from proxy.politeness import Interval, interval_for, retry_after, slow_down, too_many
from proxy.shared import SharedState
from proxy.slots import release_soon

# RFC 9110 §7.2 / RFC 9112 §3.2: a request with more than one Host is a 400.
AMBIGUOUS_STATUS = 400
UNRESOLVED_STATUS = 502

CachedDocuments = Callable[[Origin], "OriginDocuments | None"]
# The same Origin object for the same (scheme, name, port): built once per origin, not per request.
_origin = functools.lru_cache(maxsize=16384)(Origin.of)


RANGE_FIELDS = (b"range", b"if-range")


def whole_body(flow: http.HTTPFlow) -> Finding | None:
    """Ask the origin for the whole body: remove Range and If-Range (RFC 9110 §14.2 lets a server
    ignore them, so the client gets a 200 with all of it). A part of a body is not judged whole:
    the bytes asked for can leave out the very tag or packet that reserves them. The note that
    says so, for the record; None when the request asked for no range."""
    fields = flow.request.headers.fields
    asked = [value.decode("latin-1") for name, value in fields if name.lower() in RANGE_FIELDS]
    if not asked:
        return None
    flow.request.headers.fields = tuple((n, v) for n, v in fields if n.lower() not in RANGE_FIELDS)
    return Finding(
        "range", Says.UNKNOWN,
        f"Range/If-Range {'; '.join(asked)[:200]!r} removed: the origin is asked for the whole body, "
        "which is judged whole (a part could leave its opt-out out)",
    )  # fmt: skip


class RequestJudge:
    """Decides one request and records it; answers it when it is not forwarded."""

    def __init__(
        self,
        recorder: Recorder,
        documents: GetDocuments,
        resolver: Resolver,
        *,
        cached: CachedDocuments,
        own_ports: Callable[[], Sequence[int]],
        mode: Callable[[], str | None],
        direct: Callable[[], bool],
        shared: Callable[[], SharedState] = SharedState,
    ) -> None:
        self.recorder = recorder
        self.shared = shared  # the pace of each origin (proxy.shared, proxy.politeness)
        self.documents = documents  # fetches (once) when not cached
        self.cached = cached  # fresh cached documents, or None
        self.resolver = resolver
        self.own_ports = own_ports  # the proxy's own listening and metrics ports
        self.mode = mode  # enforce | monitor override, None for the policy's
        self.direct = direct  # True unless an upstream proxy connects for us (then DNS is its)
        self.memo = DecisionMemo()  # decisions by the robots.txt rules they matched (every request asks)

    def judge(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, *, tunnelled: bool
    ) -> Awaitable[None] | None:
        """Decide `flow`'s request: forward it (by leaving it alone) or answer it.

        Returns a coroutine to await only when documents must be fetched or
        names resolved; a request decided from the cache is done on return.
        """
        req = flow.request
        problem = target_form_problem(flow)
        if problem is not None:
            decision = refusal(
                "target-form",
                "The request cannot be judged as sent (its target or a field is malformed).",
                policy,
                detail=problem,
            )
            self.recorder.block(flow, state, decision, phase="request", status=AMBIGUOUS_STATUS)
            return None
        names = request_names(flow, tunnelled=tunnelled)
        if names.host_fields > 1 or len(names.host_headers) > 1:
            self._ambiguous(flow, state, policy, names)
            return None
        rewritten = names.host_headers[0] if fix_host(flow, names) else None
        mode = self.mode()
        every = names.all
        begun = start(policy, req.path or "/", every, mode=mode)
        if isinstance(begun, Decision):
            self._conclude(flow, state, policy, begun, names, rewritten)
            return None
        scheme, port = req.scheme, req.port
        origins = [_origin(scheme, name, port) for name in (every if names.tunnelled else (names.target,))]
        addresses_ok = self._addresses_known_ok(flow, state, policy, names) if self.direct() else True
        if addresses_ok is False:
            return None
        docs = [self.cached(o) for o in origins] if addresses_ok else []
        if addresses_ok and all(d is not None for d in docs):
            state.docs = docs[0]
            decision = finish(policy, begun, origins, docs, mode=mode, memo=self.memo)  # type: ignore[arg-type]
            interval = self._pace(policy, decision, docs[0])
            if interval is not None:
                return self._conclude_in_turn(flow, state, policy, decision, names, rewritten, interval)
            self._conclude(flow, state, policy, decision, names, rewritten)
            return None
        return self._judge_later(
            flow, state, policy, names, rewritten, begun, origins, check=addresses_ok is None
        )

    async def _judge_later(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames,
        rewritten: str | None, begun: Pending, origins: Sequence[Origin], *, check: bool,
    ) -> None:  # fmt: skip
        # The first contact with an origin is its documents' fetch: the addresses are
        # checked right before it (after the registry, which needs no contact at all).
        if check and not await self._addresses_ok(flow, state, policy, names):
            return
        if len(origins) == 1:
            docs = [await self.documents(origins[0])]
        else:
            docs = list(await asyncio.gather(*(self.documents(o) for o in origins)))
        # Kept for the response phase, which reads the documents the request was decided on.
        state.docs = docs[0]
        decision = finish(policy, begun, origins, docs, mode=self.mode(), memo=self.memo)
        interval = self._pace(policy, decision, docs[0])
        if interval is not None:
            await self._conclude_in_turn(flow, state, policy, decision, names, rewritten, interval)
            return
        self._conclude(flow, state, policy, decision, names, rewritten)

    def _pace(self, policy: Policy, decision: Decision, docs: OriginDocuments | None) -> Interval | None:
        """The interval a forwarded request must keep at its origin, or None when it need not wait
        (no Crawl-delay, no minimum interval, no Retry-After in force, no concurrency limit): then
        it costs nothing."""
        if decision.blocks or docs is None:
            return None
        known = docs.paces.get(id(policy))
        if known is not None and known[0] is policy:
            interval: Interval = known[1]
        else:
            interval = interval_for(policy, docs)
            docs.paces[id(policy)] = (policy, interval)
        if interval.seconds <= 0 and not policy.politeness.max_concurrency and not self._held(docs):
            return None
        return interval

    def _held(self, docs: OriginDocuments) -> bool:
        shared = self.shared()
        return shared.pace.anything_held() and shared.held(docs.origin.key)

    async def _conclude_in_turn(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, decision: Decision, names: RequestNames,
        rewritten: str | None, interval: Interval,
    ) -> None:  # fmt: skip
        """Wait for the origin's turn (fleet-wide with Redis) and, under max_concurrency, for one of
        its slots; then conclude. Either more than politeness.max_wait away is a 429 of our own,
        recorded."""
        assert state.docs is not None
        key = state.docs.origin.key
        shared = self.shared()
        budget = policy.politeness.max_wait
        if interval.seconds > 0 or self._held(state.docs):
            turn = await shared.turn(key, interval.seconds, budget)
            if not turn.granted:
                self._refuse(flow, state, slow_down(policy, key, turn.wait, interval), turn.wait)
                return
            if turn.wait > 0:
                await asyncio.sleep(turn.wait)
            budget -= turn.wait
        limit = policy.politeness.max_concurrency
        if limit:
            lease = await shared.acquire_slot(key, limit, max(0.0, budget))
            if lease is None:
                self._refuse(flow, state, too_many(policy, key, limit), 1.0)
                return
            loop = asyncio.get_running_loop()
            state.release = weakref.finalize(state, release_soon, loop, shared.release_slot, lease)
        self._conclude(flow, state, policy, decision, names, rewritten)

    def _refuse(self, flow: http.HTTPFlow, state: FlowState, refused: Decision, wait: float) -> None:
        """Answer a request politeness holds back: 429 with Retry-After, recorded."""
        self.recorder.block(flow, state, refused, phase="request", status=PACE_STATUS)
        if flow.response is not None and state.answered:
            flow.response.headers["Retry-After"] = str(retry_after(wait))

    def _conclude(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, decision: Decision, names: RequestNames,
        rewritten: str | None,
    ) -> None:  # fmt: skip
        """Record the decision (a block always, an allow if the policy says so) and answer a block."""
        if rewritten is not None:
            note = Finding(
                "host-header", Says.UNKNOWN,
                f"Host {rewritten!r} replaced by the target's {names.target!r} (RFC 9112 §3.2.2)",
            )  # fmt: skip
            decision = replace(decision, findings=(*decision.findings, note))
        if not decision.blocks and reads_bodies(policy):
            whole = whole_body(flow)
            if whole is not None:
                decision = replace(decision, findings=(*decision.findings, whole))
        record_id = new_id()
        state.decision, state.request_id, state.last_id = decision, record_id, record_id
        flow.metadata["optout"] = summary(decision, record_id)
        status = BLOCK_STATUS if decision.blocks else None
        if decision.verdict is Verdict.BLOCK or policy.audit.log_allowed:
            record = self.recorder.record(flow, decision, policy, record_id, phase="request", status=status)
            if not self.recorder.write(record, flow, state, record_id, in_place=False):
                return
        if decision.blocks:
            body = block_body(decision, record_id)
            self.recorder.answer(
                flow, state, BLOCK_STATUS, body, decision.signal or "blocked", record_id, in_place=False
            )

    def judge_connect(self, flow: http.HTTPFlow, state: FlowState, policy: Policy) -> Awaitable[None] | None:
        """Judge a CONNECT on its authority: a whole-site registry entry or a refused address ends it.

        Path-scoped entries and the origin's documents wait for the requests
        inside the tunnel; nothing upstream is contacted before those either.
        """
        host = flow.request.host
        if policy.signal_mode("registry") == "enforce" and (self.mode() or policy.mode) != "monitor":
            found = [
                f for f in policy.registry.findings_for((host,), "/") if not (f.entry or {}).get("paths")
            ]
            if found:
                holder = found[0].entry["holder"] if found[0].entry else host
                decision = Decision(
                    Verdict.BLOCK, enforced=True, signal="registry",
                    reason=f"{holder} opted out in the rights-holder registry; the tunnel is refused before "
                    "any contact.",
                    deciding=found[0], findings=tuple(found), policy_sha256=policy.digest,
                )  # fmt: skip
                self.recorder.block(flow, state, decision, phase="connect")
                return None
        if not self.direct():
            return None
        names = RequestNames(target=host, host_headers=(), sni=None, tunnelled=False)
        if self._addresses_known_ok(flow, state, policy, names) is None:
            return self._connect_later(flow, state, policy, names)
        return None

    async def _connect_later(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames
    ) -> None:
        await self._addresses_ok(flow, state, policy, names)

    def _ambiguous(self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames) -> None:
        """Several Host fields: 451 if any name is a registry block, else 400; never forwarded."""
        found = policy.registry.findings_for(names.all, flow.request.path or "/")
        if found and policy.signal_mode("registry") != "off":
            deciding = found[0]
            decision = Decision(
                Verdict.BLOCK, enforced=True, signal="registry",
                reason=f"One of the request's names is in the rights-holder registry ({deciding.detail}).",
                deciding=deciding, findings=tuple(found), policy_sha256=policy.digest,
            )  # fmt: skip
            self.recorder.block(flow, state, decision, phase="request")
            return
        fields = ", ".join(flow.request.headers.get_all("host")) or ", ".join(names.host_headers)
        decision = refusal(
            "ambiguous-host",
            "The request names more than one host (several Host fields, or :authority and Host "
            "disagree); RFC 9112 §3.2 requires a 400.",
            policy,
            detail=f"Host: {fields}",
        )
        self.recorder.block(flow, state, decision, phase="request", status=AMBIGUOUS_STATUS)

    def _addresses_known_ok(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames
    ) -> bool | None:
        """The address check without waiting: True (fine), False (refused and recorded), or None
        when a name must be resolved first."""
        allow_private = policy.private_addresses == "allow"
        port = flow.request.port
        own = self.own_ports()
        if allow_private and port not in own:
            return True
        for name in names.served:
            addresses = self.resolver.cached(name)
            if addresses is None:
                return None
            refused = refusal_for(name, port, addresses, allow_private=allow_private, own_ports=own)
            if refused is not None:
                self.recorder.block(flow, state, refusal(*refused, policy), phase="request")
                return False
        return True

    async def _addresses_ok(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames
    ) -> bool:
        """Refuse (and record) a request whose names reach the proxy itself or a private address."""
        allow_private = policy.private_addresses == "allow"
        port = flow.request.port
        own = self.own_ports()
        for name in names.served:
            try:
                refused = await address_refusal(
                    name, port, self.resolver, allow_private=allow_private, own_ports=own
                )
            except OSError as e:
                decision = refusal(
                    "unresolvable", f"{name} does not resolve ({e}); nothing to judge or forward.", policy
                )
                self.recorder.block(flow, state, decision, phase="request", status=UNRESOLVED_STATUS)
                return False
            if refused is not None:
                self.recorder.block(flow, state, refusal(*refused, policy), phase="request")
                return False
        return True
