"""The response judgement: in-band signals in headers and bodies, judged before delivery.

The headers are judged as soon as they arrive, before any body byte is read;
a header block rewrites the response in place and drains the origin's body.
HTML and media bodies are buffered (up to `optout_body_cap`) and judged before
one byte is delivered. Content withheld after the fetch gets the same 451.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

from proxy.answers import BLOCK_STATUS, block_body, finish_withheld
from proxy.audit import new_id
from proxy.decide import decide
from proxy.documents import OptionalDoc
from proxy.errors import AuditError, LocalLimit
from proxy.evidence import Decision, Document, Finding, Says, Verdict, utc_now
from proxy.inband import SIGNAL_HEADERS, ResponseView, body_findings, body_kind, header_findings
from proxy.outcome import FlowState, Recorder, summary
from proxy.policy import Policy
from proxy.signals import tdmrep
from proxy.store import headers_bytes

logger = logging.getLogger(__name__)

OVER_CAP = "body-over-cap"


class ResponseJudge:
    """Judges the origin's response to an allowed request; withholds it when it carries an opt-out."""

    def __init__(
        self,
        recorder: Recorder,
        flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState],
        license: Callable[[str], Awaitable[OptionalDoc]],
        *,
        mode: Callable[[], str | None],
        body_cap: Callable[[], int],
    ) -> None:
        self.recorder = recorder
        self._flows = flows
        self.license = license  # an RSL licence named in a response, fetched once
        self.mode = mode
        self.body_cap = body_cap

    def _judgeable(self, flow: http.HTTPFlow) -> FlowState | None:
        """The flow's state if its response is the origin's and the request was allowed, else None."""
        state = self._flows.get(flow)
        if state is None or state.answered or state.decision is None or state.decision.blocks:
            return None
        return state

    def headers(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge the response headers as they arrive.

        Synchronous on the hot path: most responses carry no signal, and
        mitmproxy awaits a hook's result only when it is awaitable, so the
        coroutine is made only when there is something to judge.
        """
        state = self._judgeable(flow)
        if flow.response is None or state is None or state.policy is None:
            return None
        try:
            tdm_file = state.docs.tdm_file(flow.request.path or "/") if state.docs is not None else None
            names = {name.lower() for name, _ in flow.response.headers.fields}
            quiet = (
                names.isdisjoint(SIGNAL_HEADERS)
                and body_kind(flow.response.headers.get("content-type", ""), state.policy) is None
                and tdm_file is None
            )
        except Exception:
            logger.exception("optout: internal error judging the response of %s", flow.request.pretty_url)
            self.recorder.internal_error(flow, state, phase="response", in_place=True)
            return None
        if quiet:
            self.recorder.stamp(flow, state)
            return None
        return self._judge_headers(flow, state, state.policy, tdm_file)

    async def _judge_headers(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, tdm_file: tdmrep.Channel | None
    ) -> None:
        try:
            await self._responseheaders(flow, state, policy, tdm_file)
        except LocalLimit as e:
            self.recorder.busy(flow, state, e, phase="response", in_place=True)
        except Exception:
            logger.exception("optout: internal error judging the response of %s", flow.request.pretty_url)
            self.recorder.internal_error(flow, state, phase="response", in_place=True)
        self.recorder.stamp(flow, state)

    async def _responseheaders(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, tdm_file: tdmrep.Channel | None
    ) -> None:
        assert flow.response is not None
        view = ResponseView(
            flow.request.url, flow.response.status_code, tuple(flow.response.headers.items(True))
        )
        kind = body_kind(view.content_type, policy)
        document = Document(view.url, view.status, None, utc_now())
        found = await header_findings(
            view, policy, document, tdm_file, self.license, body_follows=kind is not None
        )
        decision = decide(found, policy, mode=self.mode())
        if decision.blocks or kind is None:
            self._respond(flow, state, decision, policy, inspected="headers", in_place=True)
            return
        cap = self.body_cap()
        length = view.content_length
        if length is not None and length > cap:
            self._over_cap(flow, state, found, policy, document, length, in_place=True)
            return
        # Buffer the whole body before anything is delivered, even if
        # stream_large_bodies asked mitmproxy to stream this one.
        flow.response.stream = False
        state.inspect = (kind, view, found, tdm_file)

    def body(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge a buffered body before delivery (a coroutine only when there is one to judge)."""
        state = self._flows.get(flow)
        if state is None:
            return None
        if state.withholding is not None:
            finish_withheld(flow, state.withholding)
            return None
        inspect, state.inspect = state.inspect, None
        if inspect is None or flow.response is None or state.policy is None:
            return None
        return self._judge_body(flow, state, state.policy, inspect)

    async def _judge_body(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, inspect: tuple[Any, ...]
    ) -> None:
        try:
            await self._inspect_body(flow, state, policy, *inspect)
        except LocalLimit as e:
            self.recorder.busy(flow, state, e, phase="response")
        except Exception:
            logger.exception("optout: internal error inspecting the body of %s", flow.request.pretty_url)
            self.recorder.internal_error(flow, state, phase="response")
        self.recorder.stamp(flow, state)

    async def _inspect_body(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        policy: Policy,
        kind: str,
        view: ResponseView,
        found: list[Finding],
        tdm_file: tdmrep.Channel | None,
    ) -> None:
        assert flow.response is not None
        cap = self.body_cap()
        raw = flow.response.raw_content or b""
        document = Document(view.url, view.status, None, utc_now())
        if len(raw) > cap:
            self._over_cap(flow, state, found, policy, document, len(raw), in_place=False)
            return
        try:
            body = flow.response.get_content(strict=False) or b""
        except ValueError:
            body = raw
        body = body[: 4 * cap]  # a decompression bomb stops here
        document = Document(view.url, view.status, hashlib.sha256(body).hexdigest(), document.fetched_at)
        found = found + await body_findings(view, body, kind, policy, document, tdm_file, self.license)
        decision = decide(found, policy, mode=self.mode())
        self._respond(flow, state, decision, policy, inspected=f"headers+{kind}", in_place=False)

    def _over_cap(
        self, flow: http.HTTPFlow, state: FlowState, found: list[Finding], policy: Policy, document: Document,
        size: int, *, in_place: bool,
    ) -> None:  # fmt: skip
        """A body too large to inspect: withheld or forwarded uninspected, as the policy says."""
        cap = self.body_cap()
        withhold = policy.reading("over_cap") == "withhold"
        detail = f"body of {size} bytes exceeds optout_body_cap ({cap}); not inspected"
        says = Says.DISALLOW if withhold else Says.UNKNOWN
        finding = Finding(OVER_CAP, says, detail + ("; withheld" if withhold else "; forwarded"), document)
        decision = decide([*found, finding], policy, mode=self.mode())
        self._respond(flow, state, decision, policy, inspected="over-cap", in_place=in_place)

    def _respond(
        self, flow: http.HTTPFlow, state: FlowState, decision: Decision, policy: Policy, *, inspected: str,
        in_place: bool,
    ) -> None:  # fmt: skip
        """Record a response-phase decision when there is something to record; withhold if it blocks."""
        if decision.verdict is not Verdict.BLOCK and not (decision.findings and policy.audit.log_allowed):
            return
        record_id = new_id()
        status = BLOCK_STATUS if decision.blocks else None
        record = self.recorder.record(flow, decision, policy, record_id, phase="response", status=status)
        record["request_id"] = state.request_id
        record["inspected"] = inspected
        record["withheld"] = decision.blocks
        if (
            decision.verdict is Verdict.BLOCK
            and self.recorder.store is not None
            and flow.response is not None
        ):
            # The response headers are the document behind an in-band decision.
            fields = tuple(flow.response.headers.items(True))
            try:
                record["response_headers_sha256"] = self.recorder.store.put(
                    headers_bytes(flow.response.status_code, fields), url=flow.request.url,
                    status=flow.response.status_code, headers=(), fetched_at=record["ts"],
                    kind="response-headers",
                )  # fmt: skip
            except AuditError as e:
                logger.error("optout: %s", e)
        if not self.recorder.write(record, flow, state, record_id, in_place=in_place):
            return
        state.last_id = record_id
        flow.metadata["optout_response"] = summary(decision, record_id)
        if decision.blocks:
            body = block_body(decision, record_id, withheld=True)
            self.recorder.answer(
                flow, state, BLOCK_STATUS, body, decision.signal or "blocked", record_id, in_place=in_place
            )
