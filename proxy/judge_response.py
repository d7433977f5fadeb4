"""The response judgement: in-band signals in headers and bodies, judged before delivery.

The headers are judged as soon as they arrive, before any body byte is read;
a header block rewrites the response in place and drains the origin's body.
HTML and media bodies are buffered (up to `optout_body_cap`) and judged before
one byte is delivered. Content withheld after the fetch gets the same 451.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from mitmproxy import http

from proxy import mime
from proxy.answers import BLOCK_STATUS, block_body, finish_withheld
from proxy.audit import new_id
from proxy.codings import Undecodable, codings_of, decode, transfer_codings_of
from proxy.decide import decide
from proxy.documents import OptionalDoc
from proxy.errors import AuditError
from proxy.evidence import Decision, Document, Finding, Says, Verdict, utc_now
from proxy.inband import (
    SIGNAL_HEADERS,
    ResponseView,
    body_findings,
    body_kind,
    charsets_in,
    header_findings,
    reads_bodies,
)
from proxy.outcome import FlowState, Recorder, refusal, summary
from proxy.policy import Policy
from proxy.signals import htmlhead, tdmrep
from proxy.signals.media import has_xmp
from proxy.sniff import SNIFF_BYTES, contains
from proxy.store import headers_bytes

logger = logging.getLogger(__name__)

OVER_CAP = "body-over-cap"
PARTIAL = "partial-content"
UNREADABLE = "bad-response"
RAW = "raw-protocol"
UNDECODABLE = "undecodable"
# Bodies larger than this are decoded and read in a worker thread: the event loop serves
# every other flow meanwhile (performance.md: nothing over a millisecond or two on the loop).
OFF_LOOP_BYTES = 256 * 1024


def _view(flow: http.HTTPFlow) -> ResponseView:
    assert flow.response is not None
    return ResponseView(flow.request.url, flow.response.status_code, tuple(flow.response.headers.items(True)))


async def _in_thread(
    worker: ThreadPoolExecutor,
    view: ResponseView, body: bytes, kinds: frozenset[str], policy: Policy, document: Document,
    tdm_file: tdmrep.Channel | None, license: Callable[[str], Awaitable[OptionalDoc]],
) -> list[Finding]:  # fmt: skip
    """body_findings for a large body: the reading in a worker thread, licence fetches on the loop."""
    loop = asyncio.get_running_loop()

    async def on_loop(url: str) -> OptionalDoc:
        return await license(url)

    def get_license(url: str) -> Awaitable[OptionalDoc]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_loop(url), loop))

    def run() -> list[Finding]:
        return asyncio.run(body_findings(view, body, kinds, policy, document, tdm_file, get_license))

    return await loop.run_in_executor(worker, run)


# A meta tag, or an element that carries a document of its own (srcdoc, a data: URL).
# XHTML's `<h:meta>` and XML's `<!ENTITY` (whose expansion may be one) count too.
_META_TAG = re.compile(
    rb"<(?:(?=[mMiIfFoOeE])|[A-Za-z_][\w.-]{0,63}:)(?:meta|iframe|frame|object|embed)[\s/>]|<!ENTITY",
    re.IGNORECASE,
)


def _tags_in(data: bytes) -> bool:
    """A `<meta` tag, an iframe, object or embed (each can carry a page of its own), an XML
    entity declaration, or a meta escaped in a script or JSON string, in these bytes."""
    if b"<" in data and _META_TAG.search(data):
        return True
    if b"\\" in data and htmlhead.ESCAPED_OPEN_BYTES.search(data):
        if len(data) > OFF_LOOP_BYTES:
            return True  # unescaped by the HTML reader, in the worker, not here on the loop
        return (
            _META_TAG.search(htmlhead.js_unescape(data.decode("latin-1")).encode("utf-8", "replace"))
            is not None
        )
    return False


def _html_anywhere(body: bytes, codecs: Sequence[str] = ()) -> bool:
    """HTML markup (see `_tags_in`) anywhere in `body`: in its bytes, or in its text decoded with
    a charset that hides tags from a bytes search, UTF-16/32 known by its first bytes or one of
    `codecs` (those the headers name)."""
    if _tags_in(body):
        return True
    for codec in dict.fromkeys((htmlhead.wide_encoding(body), *codecs)):
        if codec is None or htmlhead.ascii_safe(codec):
            continue
        if len(body) > OFF_LOOP_BYTES:
            return True  # decoded by the HTML reader, in the worker, not here on the loop
        if _tags_in(body.decode(codec, "replace").encode("utf-8", "replace")):
            return True
    return False


def _markup_anywhere(
    body: bytes, policy: Policy, kinds: frozenset[str] = frozenset(), types: Sequence[str] = ()
) -> frozenset[str]:
    """`kinds` and the readers a body needs besides, whatever its headers and first bytes say:
    an XMP packet anywhere in a body of no kind is read as media's; HTML markup anywhere (see
    `_html_anywhere`) as HTML's, in a body taken for media too (a page served as
    `application/octet-stream` or `image/png` is still a page to a crawler that parses it).
    Containers (multipart, message/rfc822, message/http, JSON carrying a page) hold pages whose
    meta tags still speak for them; reading one too many (a text about HTML) errs on the rights
    holder's side."""
    if not kinds and has_xmp(body):
        return frozenset({"media"})
    if "html" in kinds or policy.signal_mode("html-meta") == "off":
        return kinds
    if mime.is_mime(body, types):
        if len(body) > OFF_LOOP_BYTES:
            return kinds | {"html"}  # parsed by the HTML reader, in the worker, not here on the loop
        # Its encoded parts (base64, quoted-printable) are looked into decoded.
        parts, complete = mime.encoded_parts(body, types)
        if not complete or any(map(_html_anywhere, parts)):
            return kinds | {"html"}  # read (and withheld if it cannot be read in full)
    named = [c for c in map(htmlhead.codec_of, charsets_in(types)[:4]) if c is not None]
    return kinds | {"html"} if _html_anywhere(body, named) else kinds


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
        body_limit: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.recorder = recorder
        self._flows = flows
        self.license = license  # an RSL licence named in a response, fetched once
        self.mode = mode
        self.body_cap = body_cap
        self.body_limit = body_limit  # mitmproxy's body_size_limit: it aborts larger bodies itself
        # Large bodies are decoded and read one at a time, in one thread: memory stays within
        # about one cap however many arrive together, and one malloc arena holds it.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optout-body")

    def judgeable(self, flow: http.HTTPFlow) -> FlowState | None:
        """The flow's state if its response is the origin's and the request was allowed, else None."""
        state = self._flows.get(flow)
        if state is None or state.answered or state.decision is None or state.decision.blocks:
            return None
        return state

    def headers(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge the response headers as they arrive.

        Synchronous on the hot path: most responses carry no signal, and
        mitmproxy awaits a hook's result only when it is awaitable, so the
        coroutine is made only when there is something to judge. Every body
        is still sniffed in `body` (its Content-Type may lie).
        """
        state = self.judgeable(flow)
        if flow.response is None or state is None or state.policy is None:
            return None
        try:
            docs = state.docs
            tdm_file = docs.tdm_file(flow.request.path or "/", state.policy) if docs is not None else None
            names = {name.lower() for name, _ in flow.response.headers.fields}
            status = flow.response.status_code
            reads = reads_bodies(state.policy)
            unjudged = status == 101 or (status == 206 and reads)
            quiet = names.isdisjoint(SIGNAL_HEADERS) and tdm_file is None and not unjudged
            if quiet and reads:
                state.inspect = (None, None, [], None)  # nothing in the headers: sniff the body
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
        except Exception as e:
            self.recorder.failed(flow, state, e, phase="response", in_place=True)
        self.recorder.stamp(flow, state)

    async def _responseheaders(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, tdm_file: tdmrep.Channel | None
    ) -> None:
        assert flow.response is not None
        view = _view(flow)
        declared = body_kind(view.values("content-type"), policy)
        document = Document(view.url, view.status, None, utc_now())
        found = await header_findings(
            view, policy, document, tdm_file, self.license, body_follows=bool(declared)
        )
        if view.status == 101:
            # An upgrade (WebSocket, h2c, anything): what would follow is not HTTP we can judge.
            detail = "101 Switching Protocols: what follows is not HTTP whose content can be judged"
            found.append(Finding(RAW, Says.DISALLOW, detail + "; withheld", document))
        reads = reads_bodies(policy)
        if view.status == 206 and reads:
            # The request went out without Range (judge_request.whole_body): this part of a body
            # was not asked for, and a part cannot be judged whole.
            detail = "206 Partial Content to a request sent without Range: a part of a body cannot be judged"
            found.append(Finding(PARTIAL, Says.DISALLOW, detail + "; withheld", document))
        decision = decide(found, policy, mode=self.mode())
        if decision.blocks or not reads:
            self._respond(flow, state, decision, policy, inspected="headers", in_place=True)
            return
        cap = self.body_cap()
        length = view.content_length
        if declared and length is not None and length > cap:
            limit = self.body_limit()
            if limit is not None and length > limit:
                return  # mitmproxy answers 502 without reading it; `aborted` records it withheld
            self._over_cap(flow, state, found, policy, document, length, in_place=True)
            if not state.answered:
                flow.response.stream = True  # forwarded uninspected (over_cap: forward), never buffered
            return
        # Buffer the whole body before anything is delivered, even if
        # stream_large_bodies asked mitmproxy to stream this one.
        flow.response.stream = False
        state.inspect = (declared, view, found, tdm_file)

    def body(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge a buffered body before delivery (a coroutine only when there is one to judge).

        What the body is comes from its headers and its first decoded bytes
        (proxy.sniff): HTML served as text/plain, octet-stream or nothing at all
        is read as HTML.
        """
        state = self._flows.get(flow)
        if state is None:
            return None
        if state.withholding is not None:
            finish_withheld(flow, state.withholding)
            return None
        inspect, state.inspect = state.inspect, None
        if inspect is None or flow.response is None or state.policy is None or state.answered:
            return None
        declared, view, found, tdm_file = inspect
        try:
            # One pass over the raw fields (mitmproxy's get_all decodes every field per call).
            encodings: list[str] = []
            transfer: list[str] = []
            types: list[str] = []
            for name, value in flow.response.headers.fields:
                lowered = name.lower()
                if lowered == b"content-encoding":
                    encodings.append(value.decode("latin-1"))
                elif lowered == b"content-type":
                    types.append(value.decode("latin-1"))
                elif lowered == b"transfer-encoding":
                    transfer.append(value.decode("latin-1"))
            raw = flow.response.raw_content or b""
            codings = codings_of(encodings) + transfer_codings_of(transfer)
            try:
                head = decode(raw, codings, SNIFF_BYTES)[0] if codings else raw[:SNIFF_BYTES]
            except Undecodable:
                head = None  # judged (and withheld) in _inspect_body
            kinds = body_kind(types, state.policy, head or b"")
        except Exception:
            logger.exception("optout: internal error sniffing the body of %s", flow.request.pretty_url)
            self.recorder.internal_error(flow, state, phase="response")
            return None
        if "html" not in kinds and head is not None and not codings:
            kinds = _markup_anywhere(raw, state.policy, kinds, types)
        if not kinds and head is not None and not found and not codings:
            # Plain text or an unknown format, no signal in the headers and no XMP packet
            # anywhere in it: nothing to read. (A compressed one is decoded and looked into.)
            return None
        view = view or _view(flow)
        return self._judge_body(
            flow, state, state.policy, (kinds or declared or frozenset(), view, found, tdm_file)
        )

    async def _judge_body(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, inspect: tuple[Any, ...]
    ) -> None:
        try:
            await self._inspect_body(flow, state, policy, *inspect)
        except Exception as e:
            self.recorder.failed(flow, state, e, phase="response")
        self.recorder.stamp(flow, state)

    async def _inspect_body(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        policy: Policy,
        kinds: frozenset[str],
        view: ResponseView,
        found: list[Finding],
        tdm_file: tdmrep.Channel | None,
    ) -> None:
        assert flow.response is not None
        cap = self.body_cap()
        raw = flow.response.raw_content or b""
        document = Document(view.url, view.status, None, utc_now())
        if kinds and len(raw) > cap:
            self._over_cap(flow, state, found, policy, document, len(raw), in_place=False)
            return
        # Transfer codings were applied last, so they come last (and are undone first).
        codings = codings_of(view.values("content-encoding")) + transfer_codings_of(
            view.values("transfer-encoding")
        )
        try:
            if len(raw) > OFF_LOOP_BYTES or (codings and len(raw) > OFF_LOOP_BYTES // 64):
                loop = asyncio.get_running_loop()
                body, over = await loop.run_in_executor(self._worker, decode, raw, codings, cap)
            else:
                body, over = decode(raw, codings, cap)
        except Undecodable as e:
            # The crawler's client may read what we cannot: withhold rather than guess.
            detail = f"codings {', '.join(codings)}: {e}; the body cannot be read, so it is withheld"
            finding = Finding(UNDECODABLE, Says.DISALLOW, detail, document)
            decision = decide([*found, finding], policy, mode=self.mode())
            self._respond(flow, state, decision, policy, inspected="undecodable", in_place=False)
            return
        if over:
            # Whatever its kind: the same body sent uncompressed would be over the cap too (and
            # mitmproxy's body_size_limit stops it), and what lies past the cap is unread.
            self._over_cap(flow, state, found, policy, document, cap + 1, in_place=False, decoded=True)
            return
        if "html" not in kinds and codings:
            # as in `body`, now that it is decoded
            kinds = _markup_anywhere(body, policy, kinds, view.values("content-type"))
        if kinds:
            # The C2PA SDK is native code that may take its time: never on the event loop.
            # A PDF too: its parser's work grows with the file's object count, not its size.
            if len(body) > OFF_LOOP_BYTES or contains(body, b"c2pa", 1) or b"%PDF-" in body[:1024]:
                from_body = await _in_thread(
                    self._worker, view, body, kinds, policy, document, tdm_file, self.license
                )
            else:
                from_body = await body_findings(view, body, kinds, policy, document, tdm_file, self.license)
            if from_body:
                # The body is hashed only when a finding cites it (most pages say nothing).
                # Built directly: dataclasses.replace costs several µs per object.
                d = document
                hashed = Document(
                    d.url, d.status, hashlib.sha256(body).hexdigest(), d.fetched_at, d.final_url, d.error,
                    d.truncated,
                )  # fmt: skip
                from_body = [
                    Finding(f.signal, f.says, f.detail, hashed, f.line, f.agent, f.entry)
                    if f.document is document
                    else f
                    for f in from_body
                ]
            found = found + from_body
        decision = decide(found, policy, mode=self.mode())
        inspected = "headers+" + "+".join(sorted(kinds)) if kinds else "headers"
        self._respond(flow, state, decision, policy, inspected=inspected, in_place=False)

    def aborted(self, flow: http.HTTPFlow, state: FlowState, why: str) -> None:
        """Record a response mitmproxy gave up on (a body over its limit): the crawler got a 502."""
        status = flow.response.status_code if flow.response else None
        self._note_withheld(
            flow, state, OVER_CAP, status,
            f"{why} (optout_body_cap {self.body_cap()}); the body was not delivered",
            f"The response body outgrew the cap and was withheld: {why}", answered=502, inspected="over-cap",
        )  # fmt: skip

    def unreadable(self, flow: http.HTTPFlow, state: FlowState, message: str) -> None:
        """Record an origin answer mitmproxy could not read as HTTP: the flow was killed, so the
        client got nothing (mitmproxy's own 502 page would have quoted the origin's bytes)."""
        # The kind of failure only: the rest of the message quotes the origin, content included.
        kind = message.split(":", 1)[0][:120]
        self._note_withheld(
            flow, state, UNREADABLE, None,
            f"the origin's answer could not be read as HTTP ({kind}); the connection was closed, "
            "nothing delivered",
            f"The origin's answer could not be read as HTTP ({kind}); withheld.", answered=None,
            inspected="unreadable",
        )  # fmt: skip

    def _note_withheld(
        self, flow: http.HTTPFlow, state: FlowState, code: str, status: int | None, detail: str,
        sentence: str, *, answered: int | None, inspected: str,
    ) -> None:  # fmt: skip
        """Record a response withheld after mitmproxy ended the flow itself (nothing left to answer):
        `code` decides, `status` is the origin's, `answered` what the client got (None: nothing)."""
        policy = state.policy
        if policy is None:
            return
        finding = Finding(code, Says.DISALLOW, detail, Document(flow.request.url, status, None, utc_now()))
        decision = replace(refusal(code, sentence, policy), findings=(finding,), deciding=finding)
        record_id = new_id()
        record = self.recorder.record(flow, decision, policy, record_id, phase="response", status=answered)
        record["request_id"] = state.request_id
        record["inspected"] = inspected
        record["withheld"] = True
        self.recorder.note(record, state)
        state.last_id = record_id

    def _over_cap(
        self, flow: http.HTTPFlow, state: FlowState, found: list[Finding], policy: Policy, document: Document,
        size: int, *, in_place: bool, decoded: bool = False,
    ) -> None:  # fmt: skip
        """A body too large to inspect: withheld or forwarded uninspected, as the policy says."""
        cap = self.body_cap()
        withhold = policy.reading("over_cap") == "withhold"
        what = (
            f"decodes to more than {cap} bytes"
            if decoded
            else f"of {size} bytes exceeds optout_body_cap ({cap})"
        )
        detail = f"body {what}; not inspected"
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
