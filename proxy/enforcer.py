"""The mitmproxy addon: options, configuration and the hooks that enforce decisions.

Request phase: `assess()` decides from the registry and the origin's cached
policy documents; a block is answered with 451 before anything goes upstream.
Response phase: the headers are judged as soon as they arrive; HTML and media
bodies are buffered (up to `optout_body_cap`) and judged before one byte is
delivered. Content withheld after the fetch gets the same 451.

It never lets a response through unrecorded or undecided:

* an exception in a hook blocks the flow with reason `internal-error`
  (mitmproxy would otherwise log it and forward the flow: fail-open);
* a failed audit write answers 503 `audit-unavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from proxy.answers import (
    AUDIT_DOWN_STATUS,
    BLOCK_STATUS,
    ID_HEADER,
    Withholding,
    answer,
    block_body,
    finish_withheld,
    withhold_in_place,
)
from proxy.assess import assess
from proxy.audit import AuditLog, new_id, record_for
from proxy.cache import OriginCache
from proxy.decide import decide
from proxy.documents import OptionalDoc, OriginDocuments, fetch_license, load_origin
from proxy.errors import AuditError, PolicyError
from proxy.evidence import Decision, Document, Finding, Says, Verdict, utc_now
from proxy.fetch import MAX_TTL, Fetched, answer_deadline, make_client
from proxy.inband import (
    BODY_SIGNALS,
    DEFAULT_BODY_CAP,
    SIGNAL_HEADERS,
    ResponseView,
    body_findings,
    body_kind,
    header_findings,
)
from proxy.metrics import Metrics
from proxy.origin import Origin, canonical_host
from proxy.policy import Policy, load_policy
from proxy.signals import tdmrep
from proxy.store import EvidenceStore, headers_bytes, store_dir

logger = logging.getLogger(__name__)

MODES_OR_POLICY = ("", "enforce", "monitor")
OVER_CAP = "body-over-cap"
_CLIENT_OPTIONS = frozenset(
    {
        "optout_fetch_timeout",
        "ssl_insecure",
        "ssl_verify_upstream_trusted_ca",
        "ssl_verify_upstream_trusted_confdir",
    }
)


def _signature(policy: Policy) -> tuple[tuple[str, int, int, int], ...]:
    """What the policy's files look like on disk now: path, mtime, size, inode."""
    out = []
    for path in (policy.path, *policy.registries):
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(path), -1, -1, -1))
    return tuple(out)


def _host_of(host_header: str | None) -> str | None:
    if not host_header:
        return None
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return host_header


@dataclass(slots=True)
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


def _summary(decision: Decision, record_id: str) -> dict[str, Any]:
    """The serialisable summary other addons (and saved flows) see in flow.metadata["optout"]."""
    return {
        "decision": str(decision.verdict), "enforced": decision.enforced, "signal": decision.signal,
        "reason": decision.reason, "id": record_id,
    }  # fmt: skip


class Enforcer:
    """Decides every request against the policy, answers blocks, and audits each decision."""

    def __init__(self) -> None:
        self.policy: Policy | None = None  # last good policy; replaced only whole
        self.audit: AuditLog | None = None
        self.store: EvidenceStore | None = None
        self.cache: OriginCache[Origin, OriginDocuments] = OriginCache(10_000)
        self.licenses: OriginCache[str, OptionalDoc] = OriginCache(1_000)  # RSL licences named in responses
        self._client: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Task[None]] = set()  # replaced clients still closing
        self.metrics = Metrics(lambda: self.cache.stats, lambda: len(self.cache))
        self._watch: asyncio.Task[None] | None = None
        self._signature: tuple[tuple[str, int, int, int], ...] = ()  # policy files as last seen
        # Dropped with the flow itself: no clean-up hook can be missed.
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()

    # -- options -----------------------------------------------------------

    def load(self, loader: Loader) -> None:
        # httpx logs every policy-document request at INFO; that is debug detail here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        loader.add_option(
            "optout_policy",
            str,
            "policies/default.yaml",
            "Policy file (YAML) that says which opt-out signals to honour; its registries "
            "and audit path are relative to it.",
        )
        loader.add_option(
            "optout_mode",
            str,
            "",
            "Override the policy's mode: 'enforce' answers blocks with 451, 'monitor' forwards "
            "everything and only logs what it would block. Empty: use the policy's mode.",
            choices=list(MODES_OR_POLICY),
        )
        loader.add_option(
            "optout_audit",
            str,
            "",
            "Audit log path (JSON Lines), overriding the policy's audit.path. Empty: use the policy's.",
        )
        loader.add_option(
            "optout_fetch_timeout",
            int,
            5,
            "Seconds to wait for an origin's policy document before treating it as unreachable "
            "(RFC 9309 §2.3.1.4).",
        )
        loader.add_option(
            "optout_unreachable_retry",
            int,
            300,
            "Seconds before an unreachable policy document is fetched again.",
        )
        loader.add_option(
            "optout_cache_size",
            int,
            10_000,
            "Number of origins whose policy documents are cached; the least recently used "
            "are evicted beyond it.",
        )
        loader.add_option(
            "optout_reload_interval",
            int,
            1,
            "Seconds between checks of the policy and registry files for changes; a valid change is "
            "applied without a restart, an invalid one is refused and logged. 0: never reload.",
        )
        loader.add_option(
            "optout_metrics",
            str,
            "",
            "Serve Prometheus metrics at http://ADDRESS/metrics; ADDRESS is PORT (on 127.0.0.1) or "
            "HOST:PORT. Empty: no endpoint.",
        )
        loader.add_option(
            "optout_audit_max_bytes",
            int,
            100 * 1024 * 1024,
            "Rotate the audit log when it would grow past this many bytes (0: never). Rotated files "
            "are numbered and the hash chain continues across them.",
        )
        loader.add_option(
            "optout_audit_checkpoint_every",
            int,
            100,
            "Write a checkpoint (record count and chain head) after this many audit records, so "
            "that cutting records off the end of the log is detected.",
        )
        loader.add_option(
            "optout_body_cap",
            int,
            DEFAULT_BODY_CAP,
            "Largest HTML or media body (bytes) buffered and inspected for in-band signals before "
            "delivery; a larger one is withheld or forwarded uninspected as the policy's over_cap says.",
        )

    def configure(self, updated: set[str]) -> None:
        if "optout_policy" in updated or "optout_audit" in updated:
            path = Path(ctx.options.optout_policy)
            try:
                policy = load_policy(path)
            except PolicyError as e:
                raise exceptions.OptionsError(f"invalid policy:\n{e.report()}") from e
            self._install(policy)
            self._signature = _signature(policy)
        if "optout_metrics" in updated:
            self.metrics.stop()
            if ctx.options.optout_metrics:
                try:
                    url = self.metrics.serve(ctx.options.optout_metrics)
                except (OSError, ValueError) as e:
                    raise exceptions.OptionsError(
                        f"optout_metrics: cannot serve on {ctx.options.optout_metrics!r}: {e}"
                    ) from e
                logger.info("optout: metrics at %s", url)
        if "optout_mode" in updated and ctx.options.optout_mode not in MODES_OR_POLICY:
            raise exceptions.OptionsError(
                f"optout_mode must be enforce, monitor or empty, not '{ctx.options.optout_mode}'"
            )
        if "optout_cache_size" in updated:
            if ctx.options.optout_cache_size < 1:
                raise exceptions.OptionsError("optout_cache_size must be at least 1")
            self.cache.resize(ctx.options.optout_cache_size)
        if "optout_fetch_timeout" in updated and ctx.options.optout_fetch_timeout < 1:
            raise exceptions.OptionsError("optout_fetch_timeout must be at least 1 second")
        if self.audit is not None and updated & {"optout_audit_max_bytes", "optout_audit_checkpoint_every"}:
            if ctx.options.optout_audit_max_bytes < 0 or ctx.options.optout_audit_checkpoint_every < 1:
                raise exceptions.OptionsError(
                    "optout_audit_max_bytes must be 0 or more, optout_audit_checkpoint_every 1 or more"
                )
            self.audit.max_bytes = ctx.options.optout_audit_max_bytes
            self.audit.checkpoint_every = ctx.options.optout_audit_checkpoint_every
        if "optout_body_cap" in updated and ctx.options.optout_body_cap < 1:
            raise exceptions.OptionsError("optout_body_cap must be at least 1 byte")
        if ctx.options.stream_large_bodies and self.policy is not None:
            inspecting = [s for s in BODY_SIGNALS if self.policy.signal_mode(s) != "off"]
            if inspecting:
                # A chunked body that outgrows stream_large_bodies is streamed by
                # mitmproxy without another hook: it would bypass the body checks.
                raise exceptions.OptionsError(
                    "stream_large_bodies would let bodies reach the crawler uninspected while "
                    f"{', '.join(inspecting)} are on; unset it (optout_body_cap bounds what is buffered) "
                    "or set those signals to off"
                )
        if updated & _CLIENT_OPTIONS and self._client is not None:
            old, self._client = self._client, None
            self._close_later(old)

    def _install(self, policy: Policy) -> None:
        """Make `policy` the one in force, with its audit log (opened before the swap)."""
        audit_path = Path(ctx.options.optout_audit) if ctx.options.optout_audit else policy.audit.path
        if self.audit is None or self.audit.path != audit_path:
            old_audit, self.audit = (
                self.audit,
                AuditLog(
                    audit_path,
                    max_bytes=ctx.options.optout_audit_max_bytes,
                    checkpoint_every=ctx.options.optout_audit_checkpoint_every,
                ),
            )
            self.store = EvidenceStore(store_dir(audit_path))
            if old_audit is not None:
                old_audit.close()
        if self._client is not None and (self.policy is None or self.policy.agent != policy.agent):
            # The client identifies as the crawler's token: a new agent needs a new client.
            old, self._client = self._client, None
            self._close_later(old)
        self.policy = policy
        logger.info(
            "optout: policy %s loaded (sha256 %s, agent %s, %d honored agents, %d registry entries, "
            "mode %s); audit log %s",
            policy.path,
            policy.digest[:12],
            policy.agent,
            len(policy.honor_agents),
            len(policy.registry),
            ctx.options.optout_mode or policy.mode,
            audit_path,
        )

    def client(self) -> httpx.AsyncClient:
        """The policy-document client, built from the current TLS and timeout options."""
        if self._client is None:
            o = ctx.options
            self._client = make_client(
                timeout=float(o.optout_fetch_timeout),
                verify=not o.ssl_insecure,
                ca_file=o.ssl_verify_upstream_trusted_ca,
                ca_path=o.ssl_verify_upstream_trusted_confdir,
                agent=self.policy.agent if self.policy is not None else None,
            )
        return self._client

    def running(self) -> None:
        if self._watch is None and ctx.options.optout_reload_interval > 0:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policy())

    async def _watch_policy(self) -> None:
        """Poll the policy and registry files; apply a valid change whole, refuse an invalid one."""
        while True:
            await asyncio.sleep(max(1, ctx.options.optout_reload_interval))
            current = self.policy
            if current is None:
                continue
            seen = _signature(current)
            if seen == self._signature:
                continue
            self._signature = seen
            try:
                policy = load_policy(Path(ctx.options.optout_policy))
            except PolicyError as e:
                self.metrics.reloads.labels("refused").inc()
                logger.error(
                    "optout: policy change refused; still enforcing sha256 %s:\n%s",
                    current.digest[:12],
                    e.report(),
                )
                continue
            except Exception:
                self.metrics.reloads.labels("refused").inc()
                logger.exception(
                    "optout: policy reload failed; still enforcing sha256 %s", current.digest[:12]
                )
                continue
            if policy.digest == current.digest:
                continue
            self._install(policy)
            self._signature = _signature(policy)
            self.metrics.reloads.labels("accepted").inc()
            logger.info("optout: policy reloaded: sha256 %s -> %s", current.digest[:12], policy.digest[:12])

    async def done(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.metrics.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.audit is not None:
            self.audit.close()

    # -- documents ---------------------------------------------------------

    async def documents(self, origin: Origin) -> OriginDocuments:
        """The origin's policy documents, from the cache or fetched once for all callers."""

        async def load(previous: OriginDocuments | None) -> tuple[OriginDocuments, float]:
            timeout = float(ctx.options.optout_fetch_timeout)
            started = time.monotonic()
            docs, ttl = await load_origin(
                self.client(),
                origin,
                previous,
                keep=self._keep,
                total_timeout=answer_deadline(timeout),
                unreachable_retry=float(ctx.options.optout_unreachable_retry),
            )
            self.metrics.fetch_seconds.observe(time.monotonic() - started)
            self._count_documents(docs)
            if docs.robots_outcome == "unreachable" or docs.stale_because is not None:
                failed = docs.stale_because or docs.robots_document
                logger.warning(
                    "optout: %s unreachable (%s)%s",
                    failed.url,
                    failed.error,
                    "; keeping the last good copy" if docs.stale_because else "",
                )
            else:
                logger.debug("optout: fetched %s: %s", docs.robots_document.url, docs.robots_outcome)
            return docs, ttl

        return await self.cache.get(origin, load)

    async def license(self, url: str) -> OptionalDoc:
        """An RSL licence named in a response (Link header, HTML link), fetched once and cached."""

        async def load(previous: OptionalDoc | None) -> tuple[OptionalDoc, float]:
            deadline = answer_deadline(float(ctx.options.optout_fetch_timeout))
            lic = await fetch_license(self.client(), url, total_timeout=deadline, keep=self._keep)
            ttl = MAX_TTL if lic.outcome == "ok" else float(ctx.options.optout_unreachable_retry)
            return lic, ttl

        return await self.licenses.get(url, load)

    def _count_documents(self, docs: OriginDocuments) -> None:
        count = self.metrics.documents
        count.labels(
            "robots.txt", (docs.stale_because and "unreachable-kept-last-good") or docs.robots_outcome
        ).inc()
        for name, doc in (("ai.txt", docs.ai_txt), ("tdmrep.json", docs.tdm_json)):
            if doc is not None:
                count.labels(name, doc.outcome).inc()
        for _, lic in docs.licenses:
            count.labels("rsl-licence", lic.outcome).inc()

    def _keep(self, fetched: Fetched, kind: str) -> None:
        """Put a fetched policy document into the evidence store (a failure is logged, not fatal)."""
        if self.store is None or fetched.body is None:
            return
        doc = fetched.document
        try:
            self.store.put(
                fetched.body, url=doc.url, status=doc.status, headers=fetched.headers,
                fetched_at=doc.fetched_at, kind=kind,
            )  # fmt: skip
        except AuditError as e:
            logger.error("optout: %s", e)

    # -- request phase -----------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered by another addon (or replayed); nothing goes upstream
        # One policy for the whole flow, even if a reload lands meanwhile.
        state = self._flows[flow] = FlowState(self.policy)
        try:
            if state.policy is None:
                raise RuntimeError("no policy loaded")
            await self._request(flow, state, state.policy)
        except Exception:
            logger.exception("optout: internal error deciding %s", flow.request.pretty_url)
            self._internal_error(flow, state, phase="request")

    async def _request(self, flow: http.HTTPFlow, state: FlowState, policy: Policy) -> None:
        req = flow.request
        origin = Origin.of(req.scheme, req.host, req.port)
        hosts = [req.host, _host_of(req.host_header) or ""]

        async def documents(o: Origin) -> OriginDocuments:
            # Kept for the response phase, which reads the same documents the request was decided on.
            state.docs = await self.documents(o)
            return state.docs

        decision = await assess(
            policy, origin, req.path or "/", hosts, documents, mode=ctx.options.optout_mode or None
        )
        record_id = new_id()
        state.decision, state.request_id, state.last_id = decision, record_id, record_id
        flow.metadata["optout"] = _summary(decision, record_id)
        status = BLOCK_STATUS if decision.blocks else None
        if decision.verdict is Verdict.BLOCK or policy.audit.log_allowed:
            record = self._record(flow, decision, policy, record_id, phase="request", status=status)
            if not self._write(record, flow, state, record_id, in_place=False):
                return
        if decision.blocks:
            body = block_body(decision, record_id)
            self._answer(
                flow, state, BLOCK_STATUS, body, decision.signal or "blocked", record_id, in_place=False
            )

    # -- response phase ----------------------------------------------------

    def _judgeable(self, flow: http.HTTPFlow) -> FlowState | None:
        """The flow's state if its response is the origin's and the request was allowed, else None."""
        state = self._flows.get(flow)
        if state is None or state.answered or state.decision is None or state.decision.blocks:
            return None
        return state

    def responseheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
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
            self._internal_error(flow, state, phase="response", in_place=True)
            return None
        if quiet:
            self._stamp(flow, state)
            return None
        return self._judge_headers(flow, state, state.policy, tdm_file)

    async def _judge_headers(
        self, flow: http.HTTPFlow, state: FlowState, policy: Policy, tdm_file: tdmrep.Channel | None
    ) -> None:
        try:
            await self._responseheaders(flow, state, policy, tdm_file)
        except Exception:
            logger.exception("optout: internal error judging the response of %s", flow.request.pretty_url)
            self._internal_error(flow, state, phase="response", in_place=True)
        self._stamp(flow, state)

    def _stamp(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Name the flow's last audit record on a response we forward."""
        if flow.response is not None and not state.answered and state.last_id:
            # Lets the crawler (and the tests) tie each response to its audit record.
            flow.response.headers[ID_HEADER] = state.last_id

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
        decision = decide(found, policy, mode=ctx.options.optout_mode or None)
        if decision.blocks or kind is None:
            self._respond(flow, state, decision, policy, inspected="headers", in_place=True)
            return
        cap = ctx.options.optout_body_cap
        length = view.content_length
        if length is not None and length > cap:
            self._over_cap(flow, state, found, policy, document, length, in_place=True)
            return
        # Buffer the whole body before anything is delivered, even if
        # stream_large_bodies asked mitmproxy to stream this one.
        flow.response.stream = False
        state.inspect = (kind, view, found, tdm_file)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
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
        except Exception:
            logger.exception("optout: internal error inspecting the body of %s", flow.request.pretty_url)
            self._internal_error(flow, state, phase="response")
        self._stamp(flow, state)

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
        cap = ctx.options.optout_body_cap
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
        decision = decide(found, policy, mode=ctx.options.optout_mode or None)
        self._respond(flow, state, decision, policy, inspected=f"headers+{kind}", in_place=False)

    def _over_cap(
        self, flow: http.HTTPFlow, state: FlowState, found: list[Finding], policy: Policy, document: Document,
        size: int, *, in_place: bool,
    ) -> None:  # fmt: skip
        """A body too large to inspect: withheld or forwarded uninspected, as the policy says."""
        cap = ctx.options.optout_body_cap
        withhold = policy.reading("over_cap") == "withhold"
        detail = f"body of {size} bytes exceeds optout_body_cap ({cap}); not inspected"
        says = Says.DISALLOW if withhold else Says.UNKNOWN
        finding = Finding(OVER_CAP, says, detail + ("; withheld" if withhold else "; forwarded"), document)
        decision = decide([*found, finding], policy, mode=ctx.options.optout_mode or None)
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
        record = self._record(flow, decision, policy, record_id, phase="response", status=status)
        record["request_id"] = state.request_id
        record["inspected"] = inspected
        record["withheld"] = decision.blocks
        if decision.verdict is Verdict.BLOCK and self.store is not None and flow.response is not None:
            # The response headers are the document behind an in-band decision.
            fields = tuple(flow.response.headers.items(True))
            try:
                record["response_headers_sha256"] = self.store.put(
                    headers_bytes(flow.response.status_code, fields), url=flow.request.url,
                    status=flow.response.status_code, headers=(), fetched_at=record["ts"],
                    kind="response-headers",
                )  # fmt: skip
            except AuditError as e:
                logger.error("optout: %s", e)
        if not self._write(record, flow, state, record_id, in_place=in_place):
            return
        state.last_id = record_id
        flow.metadata["optout_response"] = _summary(decision, record_id)
        if decision.blocks:
            body = block_body(decision, record_id, withheld=True)
            self._answer(
                flow, state, BLOCK_STATUS, body, decision.signal or "blocked", record_id, in_place=in_place
            )

    # -- recording and failing closed ---------------------------------------

    def _answer(
        self, flow: http.HTTPFlow, state: FlowState, status: int, body: str, reason_code: str, record_id: str,
        *, in_place: bool,
    ) -> None:  # fmt: skip
        """Answer the flow ourselves: a whole new response, or the origin's rewritten in place."""
        if in_place:
            state.withholding = withhold_in_place(flow, status, body, reason_code, record_id)
        else:
            answer(flow, status, body, reason_code, record_id)
        state.answered = True

    def _record(
        self, flow: http.HTTPFlow, decision: Decision, policy: Policy | None, record_id: str, *,
        phase: str, status: int | None,
    ) -> dict[str, Any]:  # fmt: skip
        req = flow.request
        return record_for(
            decision,
            record_id=record_id,
            ts=utc_now(),
            method=req.method,
            # The URL the proxy connects to (not the Host header's view of it): a
            # Host header that names another site is visible in `evidence`.
            url=req.url,
            host=canonical_host(req.host),
            agent=policy.agent if policy is not None else "",
            phase=phase,
            status=status,
            user_agent=req.headers.get("user-agent"),
            policy_path=str(policy.path) if policy is not None else None,
        )

    def _write(
        self, record: dict[str, Any], flow: http.HTTPFlow, state: FlowState, record_id: str, *, in_place: bool
    ) -> bool:
        """Write the record; on failure answer 503 so nothing passes unrecorded."""
        try:
            if self.audit is None:
                raise AuditError("no audit log configured")
            self.audit.write(record)
            self.metrics.decisions.labels(
                record.get("phase"), record.get("signal") or "-", record.get("decision"),
                "true" if record.get("enforced") else "false",
            ).inc()  # fmt: skip
            return True
        except AuditError as e:
            self.metrics.audit_failures.inc()
            logger.error("optout: %s; answering %d", e, AUDIT_DOWN_STATUS)
            body = (
                f"{AUDIT_DOWN_STATUS}: optout-proxy cannot write its audit log, so it forwards "
                f"nothing.\nrecord: {record_id}\n"
            )
            self._answer(
                flow, state, AUDIT_DOWN_STATUS, body, "audit-unavailable", record_id, in_place=in_place
            )
            return False

    def _internal_error(
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
        flow.metadata["optout"] = _summary(decision, record_id)
        try:
            record = self._record(flow, decision, policy, record_id, phase=phase, status=BLOCK_STATUS)
            if not self._write(record, flow, state, record_id, in_place=in_place):
                return
        except Exception:
            logger.exception("optout: cannot record an internal error; blocking anyway")
        self._answer(
            flow, state, BLOCK_STATUS, block_body(decision, record_id), "internal-error", record_id,
            in_place=in_place,
        )  # fmt: skip

    def _close_later(self, client: httpx.AsyncClient) -> None:
        """Close a replaced client without blocking configure (which is synchronous)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
