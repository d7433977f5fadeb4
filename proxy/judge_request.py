"""The request judgement: every name and every path form of a request, decided before it goes upstream.

Order matters and is the cheapest-first order that contacts nobody early:
the Host fields are checked (several distinct ones are refused), an
absolute-form request's Host is made the target's, the addresses the names
resolve to are checked, then `assess()` decides on the registry and the
origins' documents. A block is answered with 451 here, so no upstream
connection is ever opened for it (the proxy runs with lazy connections).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from mitmproxy import http

from proxy.addresses import Resolver
from proxy.answers import BLOCK_STATUS, block_body
from proxy.assess import GetDocuments, assess
from proxy.audit import new_id
from proxy.documents import OriginDocuments
from proxy.evidence import Decision, Finding, Says, Verdict
from proxy.guard import RequestNames, address_refusal, fix_host, request_names
from proxy.origin import Origin
from proxy.outcome import FlowState, Recorder, refusal, summary
from proxy.policy import Policy

# RFC 9110 §7.2 / RFC 9112 §3.2: a request with more than one Host is a 400.
AMBIGUOUS_STATUS = 400
UNRESOLVED_STATUS = 502


class _Refused(Exception):
    """The request was refused (and recorded) while its documents were being gathered."""


class RequestJudge:
    """Decides one request and records it; answers it when it is not forwarded."""

    def __init__(
        self,
        recorder: Recorder,
        documents: GetDocuments,
        resolver: Resolver,
        *,
        own_ports: Callable[[], Sequence[int]],
        mode: Callable[[], str | None],
        direct: Callable[[], bool],
    ) -> None:
        self.recorder = recorder
        self.documents = documents
        self.resolver = resolver
        self.own_ports = own_ports  # the proxy's own listening and metrics ports
        self.mode = mode  # enforce | monitor override, None for the policy's
        self.direct = direct  # True unless an upstream proxy connects for us (then DNS is its)

    async def judge(self, flow: http.HTTPFlow, state: FlowState, policy: Policy, *, tunnelled: bool) -> None:
        """Decide `flow`'s request; forward it (by leaving it alone) or answer it."""
        req = flow.request
        names = request_names(flow, tunnelled=tunnelled)
        if len(req.headers.get_all("host")) > 1 or len(names.host_headers) > 1:
            await self._ambiguous(flow, state, policy, names)
            return
        rewritten = names.host_headers[0] if fix_host(flow, names) else None
        checked = False

        async def documents(o: Origin) -> OriginDocuments:
            # The first contact with an origin is its documents' fetch: the addresses are
            # checked right before it (after the registry, which needs no contact at all).
            nonlocal checked
            if not checked and self.direct():
                checked = True
                if not await self._addresses_ok(flow, state, policy, names):
                    raise _Refused
            docs = await self.documents(o)
            if state.docs is None:
                # Kept for the response phase, which reads the documents the request was decided on.
                state.docs = docs
            return docs

        origins = [Origin.of(req.scheme, name, req.port) for name in names.served]
        try:
            decision = await assess(policy, origins, req.path or "/", names.all, documents, mode=self.mode())
        except _Refused:
            return  # answered and recorded by _addresses_ok
        if rewritten is not None:
            note = Finding(
                "host-header", Says.UNKNOWN,
                f"Host {rewritten!r} replaced by the target's {names.target!r} (RFC 9112 §3.2.2)",
            )  # fmt: skip
            decision = replace(decision, findings=(*decision.findings, note))
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

    async def judge_connect(self, flow: http.HTTPFlow, state: FlowState, policy: Policy) -> None:
        """Judge a CONNECT on its authority: a whole-site registry entry or a refused address ends it.

        Path-scoped entries and the origin's documents wait for the requests
        inside the tunnel; nothing upstream is contacted before those either.
        """
        host = flow.request.host
        if policy.signal_mode("registry") != "off":
            found = [
                f for f in policy.registry.findings_for((host,), "/") if not (f.entry or {}).get("paths")
            ]
            if found:
                decision = Decision(
                    Verdict.BLOCK, enforced=True, signal="registry",
                    reason=f"{found[0].entry['holder'] if found[0].entry else host} opted out in the "
                    "rights-holder registry; the tunnel is refused before any contact.",
                    deciding=found[0], findings=tuple(found), policy_sha256=policy.digest,
                )  # fmt: skip
                if (
                    decision.enforced
                    and (self.mode() or policy.mode) != "monitor"
                    and (policy.signal_mode("registry") == "enforce")
                ):
                    self.recorder.block(flow, state, decision, phase="connect")
                    return
        names = RequestNames(target=host, host_headers=(), sni=None, tunnelled=False)
        if self.direct():
            await self._addresses_ok(flow, state, policy, names)

    async def _ambiguous(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames
    ) -> None:
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

    async def _addresses_ok(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, names: RequestNames
    ) -> bool:
        """Refuse (and record) a request whose names reach the proxy itself or a private address."""
        allow_private = policy.private_addresses == "allow"
        port = flow.request.port
        own = self.own_ports()
        if allow_private and port not in own:
            return True
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
                code, sentence = refused
                self.recorder.block(flow, state, refusal(code, sentence, policy), phase="request")
                return False
        return True
