"""What happens to a flow once it is decided: it is recorded, and answered when it is not forwarded.

Shared by the connection guard, the request judgement and the response
judgement, so every path to the crawler goes through the same two rules:

* nothing passes unrecorded: a failed audit write answers 503
  `audit-unavailable` instead of forwarding;
* nothing passes undecided: a failure while deciding answers 451
  `internal-error`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from proxy import fields
from proxy.answers import (
    AUDIT_DOWN_STATUS,
    BLOCK_STATUS,
    ID_HEADER,
    Withholding,
    answer,
    block_body,
    withhold_in_place,
)
from proxy.audit import SCHEMA_VERSION, AuditLog, evidence_of, new_id
from proxy.counting import DELIVERED, settle
from proxy.documents import OriginDocuments
from proxy.errors import AuditError, LocalLimit
from proxy.evidence import Decision, Finding, Says, Verdict, utc_now
from proxy.fields import request_url
from proxy.metrics import Metrics
from proxy.origin import canonical_host
from proxy.policy import Policy
from proxy.store import EvidenceStore

logger = logging.getLogger(__name__)

# A limit of ours (connections, resolver, descriptors) kept us from deciding: retry soon.
BUSY_CODE = "fetch-capacity"
BUSY_STATUS = 503


@dataclass(slots=True, weakref_slot=True)  # weakly held by its slot's finalizer (proxy.slots)
class FlowState:
    """What the addon knows about one flow. Kept beside the flow, not in `flow.metadata`,
    because mitmproxy serialises metadata when flows are saved and these objects are not
    serialisable; metadata gets a plain summary instead (`optout`)."""

    policy: Policy | None
    decision: Decision | None = None
    request_id: str | None = None
    last_id: str | None = None
    answered: bool = False  # the response is ours, not the origin's
    docs: OriginDocuments | None = None  # the origin's documents the request was decided on
    inspect: tuple[Any, ...] | None = None  # a body to judge in the response hook
    withholding: Withholding | None = None
    outcome: str | None = None  # proxy.counting: what its records have settled so far
    # Gives the origin slot back (politeness.max_concurrency); runs once, at the flow's end or
    # when this state is collected, whichever comes first.
    release: Callable[[], Any] | None = None


def summary(decision: Decision, record_id: str) -> dict[str, Any]:
    """The serialisable summary other addons (and saved flows) see in flow.metadata["optout"]."""
    return {
        "decision": str(decision.verdict), "enforced": decision.enforced, "signal": decision.signal,
        "reason": decision.reason, "id": record_id,
    }  # fmt: skip


def refusal(code: str, sentence: str, policy: Policy | None, *, detail: str = "") -> Decision:
    """An enforced block that no signal made: the guard's, whatever the mode (monitor included).

    Monitor mode forwards what opt-out signals would block; it never relays
    what the proxy cannot judge (a raw tunnel, an ambiguous Host, a private address).
    """
    finding = Finding(code, Says.DISALLOW, detail or sentence)
    return Decision(
        Verdict.BLOCK,
        enforced=True,
        signal=code,
        reason=sentence,
        deciding=finding,
        findings=(finding,),
        policy_sha256=policy.digest if policy else "",
    )


class Recorder:
    """Writes audit records and answers flows in the proxy's name."""

    def __init__(self, metrics: Metrics) -> None:
        self.audit: AuditLog | None = None
        self.store: EvidenceStore | None = None
        self.metrics = metrics

    def record(
        self, flow: http.HTTPFlow, decision: Decision, policy: Policy | None, record_id: str, *,
        phase: str, status: int | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The audit record of one decision about `flow`: `record_for(..., serialised=True)`, spelled
        out here because every request makes one (tests/test_hot_path.py holds the two together)."""
        req = flow.request
        evidence, deciding = evidence_of(decision)
        record: dict[str, Any] = {
            "v": SCHEMA_VERSION, "ts": utc_now(), "id": record_id, "phase": phase, "method": req.method,
            # The URL the proxy connects to (not the Host header's view of it): a
            # Host header that names another site is visible in `evidence`.
            "url": request_url(req), "host": canonical_host(req.host),
            "agent": policy.agent if policy is not None else "", "decision": str(decision.verdict),
            "enforced": decision.enforced, "signal": decision.signal, "reason": decision.reason,
            "status": status, "evidence": evidence, "deciding": deciding,
            "policy_sha256": decision.policy_sha256,
        }  # fmt: skip
        user_agent = fields.first(req.headers.fields, b"user-agent")
        if user_agent is not None:
            record["user_agent"] = user_agent
        if policy is not None:
            record["policy"] = str(policy.path)
        return record

    def write(
        self, record: dict[str, Any], flow: http.HTTPFlow, state: FlowState, record_id: str, *, in_place: bool
    ) -> bool:
        """Write the record; on failure answer 503 so nothing passes unrecorded."""
        try:
            if self.audit is None:
                raise AuditError("no audit log configured")
            self.audit.write(record)
            self._count(record)
            self._settle(state, record)
            return True
        except AuditError as e:
            self.metrics.audit_failures.inc()
            logger.error("optout: %s; answering %d", e, AUDIT_DOWN_STATUS)
            body = (
                f"{AUDIT_DOWN_STATUS}: optout-proxy cannot write its audit log, so it forwards "
                f"nothing.\nrecord: {record_id}\n"
            )
            self.answer(
                flow, state, AUDIT_DOWN_STATUS, body, "audit-unavailable", record_id, in_place=in_place
            )
            return False

    def note(self, record: dict[str, Any], state: FlowState | None = None) -> None:
        """Write a record about a flow that is already ended (nothing left to answer); a failure is logged."""
        try:
            if self.audit is None:
                raise AuditError("no audit log configured")
            self.audit.write(record)
            self._count(record)
            self._settle(state or FlowState(None), record)
        except AuditError as e:
            self.metrics.audit_failures.inc()
            logger.error("optout: %s (the flow was not delivered anyway)", e)

    def _settle(self, state: FlowState, record: dict[str, Any]) -> None:
        """Move the flow's outcome on by one record; count a refusal once, when it is settled."""
        now = settle(state.outcome, record.get("phase"), record.get("decision"), record.get("enforced"))
        if now != state.outcome and now is not None and now != DELIVERED:
            self.metrics.requests.add((now,))
        state.outcome = now

    def delivered(self, state: FlowState) -> None:
        """The response went to the crawler: count it, unless a record already refused it."""
        if state.decision is not None and state.outcome in (None, DELIVERED) and not state.answered:
            self.metrics.requests.add((DELIVERED,))

    def _count(self, record: dict[str, Any]) -> None:
        self.metrics.decisions.add((
            str(record.get("phase")), record.get("signal") or "-", str(record.get("decision")),
            "true" if record.get("enforced") else "false",
        ))  # fmt: skip

    def failed(
        self, flow: http.HTTPFlow, state: FlowState, error: Exception, *, phase: str, in_place: bool = False
    ) -> None:
        """A hook failed while deciding: 503 for a limit of ours, else 451 `internal-error`.

        Never let the exception escape: mitmproxy would log it and forward the flow.
        """
        if isinstance(error, LocalLimit):
            logger.warning("optout: %s; answering 503", error)
            self.busy(flow, state, error, phase=phase, in_place=in_place)
        else:
            logger.error("optout: internal error deciding %s", flow.request.pretty_url, exc_info=error)
            self.internal_error(flow, state, phase=phase, in_place=in_place)

    def answer(
        self, flow: http.HTTPFlow, state: FlowState, status: int, body: str, reason_code: str, record_id: str,
        *, in_place: bool,
    ) -> None:  # fmt: skip
        """Answer the flow ourselves: a whole new response, or the origin's rewritten in place."""
        if in_place:
            state.withholding = withhold_in_place(flow, status, body, reason_code, record_id)
        else:
            answer(flow, status, body, reason_code, record_id)
        state.answered = True

    def block(
        self, flow: http.HTTPFlow, state: FlowState, decision: Decision, *, phase: str,
        status: int = BLOCK_STATUS, in_place: bool = False,
    ) -> str:  # fmt: skip
        """Record an enforced block and answer it with `status`; returns the record id."""
        record_id = new_id()
        if state.decision is None:
            state.decision, state.request_id = decision, record_id
        state.last_id = record_id
        flow.metadata["optout"] = summary(decision, record_id)
        record = self.record(flow, decision, state.policy, record_id, phase=phase, status=status)
        if self.write(record, flow, state, record_id, in_place=in_place):
            body = block_body(decision, record_id, status=status)
            self.answer(flow, state, status, body, decision.signal or "blocked", record_id, in_place=in_place)
        return record_id

    def busy(
        self, flow: http.HTTPFlow, state: FlowState, error: Exception, *, phase: str, in_place: bool = False
    ) -> None:
        """Answer 503 when a limit of ours kept us from deciding: not the origin's fault, not a block."""
        decision = refusal(
            BUSY_CODE,
            "optout-proxy could not fetch this origin's policy documents just now, for a reason of its "
            f"own ({error}); nothing was decided about the origin. Retry shortly.",
            state.policy,
        )
        self.block(flow, state, decision, phase=phase, status=BUSY_STATUS, in_place=in_place)
        if flow.response is not None and state.answered:
            flow.response.headers["Retry-After"] = "1"

    def internal_error(
        self, flow: http.HTTPFlow, state: FlowState, *, phase: str, in_place: bool = False
    ) -> None:
        """Block a flow whose decision failed: never forward what we could not judge."""
        policy = state.policy
        record_id = new_id()
        decision = Decision(
            Verdict.BLOCK,
            enforced=True,
            signal="internal-error",
            reason="optout-proxy failed while deciding this request; blocked rather than "
            "forwarded undecided.",
            deciding=None,
            findings=(),
            policy_sha256=policy.digest if policy else "",
        )
        if state.decision is None:
            state.decision = decision
        flow.metadata["optout"] = summary(decision, record_id)
        try:
            record = self.record(flow, decision, policy, record_id, phase=phase, status=BLOCK_STATUS)
            if not self.write(record, flow, state, record_id, in_place=in_place):
                return
        except Exception:
            logger.exception("optout: cannot record an internal error; blocking anyway")
        self.answer(
            flow, state, BLOCK_STATUS, block_body(decision, record_id), "internal-error", record_id,
            in_place=in_place,
        )  # fmt: skip

    def stamp(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Name the flow's last audit record on a response we forward."""
        if flow.response is not None and not state.answered and state.last_id:
            # Lets the crawler (and the tests) tie each response to its audit record.
            flow.response.headers[ID_HEADER] = state.last_id
