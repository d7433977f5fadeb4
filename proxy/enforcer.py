"""The mitmproxy addon: options, configuration and the hooks that enforce decisions.

Per request it asks `assess()` for a decision (registry, then the origin's
cached policy documents), writes the audit record, and answers a block
itself with 451. It never lets a request through unrecorded or undecided:

* an exception in a hook blocks the flow with reason `internal-error`
  (mitmproxy would otherwise log it and forward the flow: fail-open);
* a failed audit write answers 503 `audit-unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from proxy import __version__
from proxy.assess import assess
from proxy.audit import AuditLog, new_id, record_for
from proxy.cache import OriginCache
from proxy.documents import OriginDocuments, load_origin
from proxy.errors import AuditError, PolicyError
from proxy.evidence import Decision, Verdict
from proxy.fetch import make_client, utc_now
from proxy.origin import Origin
from proxy.policy import Policy, load_policy

logger = logging.getLogger(__name__)

REASON_HEADER = "X-Optout-Reason"
ID_HEADER = "X-Optout-Id"
BLOCK_STATUS = 451  # RFC 7725: Unavailable For Legal Reasons
AUDIT_DOWN_STATUS = 503
MODES_OR_POLICY = ("", "enforce", "monitor")
_REASONS = {BLOCK_STATUS: "Unavailable For Legal Reasons", AUDIT_DOWN_STATUS: "Service Unavailable"}
_CLIENT_OPTIONS = frozenset(
    {
        "optout_fetch_timeout",
        "ssl_insecure",
        "ssl_verify_upstream_trusted_ca",
        "ssl_verify_upstream_trusted_confdir",
    }
)


def _host_of(host_header: str | None) -> str | None:
    if not host_header:
        return None
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return host_header


def make_block(status: int, body: str, reason_code: str, record_id: str) -> http.Response:
    """A response the proxy answers itself, naming why and which audit record says so."""
    response = http.Response.make(
        status,
        body,
        {
            "Content-Type": "text/plain; charset=utf-8",
            REASON_HEADER: reason_code,
            ID_HEADER: record_id,
        },
    )
    response.reason = _REASONS.get(status, "")
    return response


def block_body(decision: Decision, record_id: str) -> str:
    """The short text a blocked crawler gets: signal, deciding rule or entry, document."""
    lines = [
        f"{BLOCK_STATUS} Unavailable For Legal Reasons: blocked by optout-proxy",
        f"signal: {decision.signal}",
        f"reason: {decision.reason}",
    ]
    f = decision.deciding
    if f is not None:
        rule = f"{f.detail} (line {f.line})" if f.line is not None and f.entry is None else f.detail
        lines.append(f"rule: {rule}")
        if f.document is not None:
            lines.append(f"document: {f.document.url}")
        if f.entry is not None:
            lines.append(f"entry: {f.entry['file']}:{f.entry['line']}")
    lines.append(f"record: {record_id}")
    return "\n".join(lines) + "\n"


class Enforcer:
    """Decides every request against the policy, answers blocks, and audits each decision."""

    def __init__(self) -> None:
        self.policy: Policy | None = None  # last good policy; replaced only whole
        self.audit: AuditLog | None = None
        self.cache: OriginCache[Origin, OriginDocuments] = OriginCache(10_000)
        self._client: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Task[None]] = set()  # replaced clients still closing

    # -- options -----------------------------------------------------------

    def load(self, loader: Loader) -> None:
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

    def configure(self, updated: set[str]) -> None:
        if "optout_policy" in updated or "optout_audit" in updated:
            path = Path(ctx.options.optout_policy)
            try:
                policy = load_policy(path)
            except PolicyError as e:
                details = "\n".join(str(p) for p in e.problems)
                raise exceptions.OptionsError(f"invalid policy:\n{details}") from e
            self._install(policy)
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
        if updated & _CLIENT_OPTIONS and self._client is not None:
            old, self._client = self._client, None
            self._close_later(old)

    def _install(self, policy: Policy) -> None:
        """Make `policy` the one in force, with its audit log (opened before the swap)."""
        audit_path = Path(ctx.options.optout_audit) if ctx.options.optout_audit else policy.audit.path
        if self.audit is None or self.audit.path != audit_path:
            old_audit, self.audit = self.audit, AuditLog(audit_path)
            if old_audit is not None:
                old_audit.close()
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
            agent = self.policy.agent if self.policy is not None else "optout-proxy"
            self._client = make_client(
                timeout=float(o.optout_fetch_timeout),
                verify=not o.ssl_insecure,
                ca_file=o.ssl_verify_upstream_trusted_ca,
                ca_path=o.ssl_verify_upstream_trusted_confdir,
                user_agent=f"{agent} (optout-proxy/{__version__})",
            )
        return self._client

    async def done(self) -> None:
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
            docs, ttl = await load_origin(
                self.client(),
                origin,
                previous,
                # headers plus a slow body: never wait more than twice the timeout in all
                total_timeout=2 * timeout,
                unreachable_retry=float(ctx.options.optout_unreachable_retry),
            )
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

    # -- hooks -------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered by another addon (or replayed); nothing goes upstream
        policy = self.policy  # one policy for the whole decision, even if a reload lands meanwhile
        try:
            if policy is None:
                raise RuntimeError("no policy loaded")
            await self._request(flow, policy)
        except Exception:
            logger.exception("optout: internal error deciding %s", flow.request.pretty_url)
            self._block_internal_error(flow, policy)

    async def _request(self, flow: http.HTTPFlow, policy: Policy) -> None:
        req = flow.request
        origin = Origin.of(req.scheme, req.host, req.port)
        hosts = [req.host, _host_of(req.host_header) or ""]
        decision = await assess(
            policy,
            origin,
            req.path or "/",
            hosts,
            self.documents,
            mode=ctx.options.optout_mode or None,
        )
        self._finish(flow, decision, policy, origin.host)

    def _finish(self, flow: http.HTTPFlow, decision: Decision, policy: Policy | None, host: str) -> None:
        """Record `decision` on the flow and in the audit log; answer the flow if it blocks."""
        record_id = new_id()
        flow.metadata["optout"] = decision
        flow.metadata["optout_id"] = record_id
        if decision.verdict is Verdict.BLOCK or (policy is not None and policy.audit.log_allowed):
            req = flow.request
            record = record_for(
                decision,
                record_id=record_id,
                ts=utc_now(),
                method=req.method,
                url=req.pretty_url,
                host=host,
                agent=policy.agent if policy is not None else "",
                phase="request",
                status=BLOCK_STATUS if decision.blocks else None,
                user_agent=req.headers.get("user-agent"),
                policy_path=str(policy.path) if policy is not None else None,
            )
            if not self._write(record, flow, record_id):
                return
        if decision.blocks:
            flow.response = make_block(
                BLOCK_STATUS, block_body(decision, record_id), decision.signal or "blocked", record_id
            )

    def _write(self, record: dict[str, Any], flow: http.HTTPFlow, record_id: str) -> bool:
        """Write the record; on failure answer 503 so nothing passes unrecorded."""
        try:
            if self.audit is None:
                raise AuditError("no audit log configured")
            self.audit.write(record)
            return True
        except AuditError as e:
            logger.error("optout: %s; answering %d", e, AUDIT_DOWN_STATUS)
            flow.response = make_block(
                AUDIT_DOWN_STATUS,
                f"{AUDIT_DOWN_STATUS}: optout-proxy cannot write its audit log, so it forwards "
                f"nothing.\nrecord: {record_id}\n",
                "audit-unavailable",
                record_id,
            )
            return False

    def _block_internal_error(self, flow: http.HTTPFlow, policy: Policy | None) -> None:
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
        try:
            self._finish(flow, decision, policy, flow.request.host)
        except Exception:
            # Even recording failed: still never forward.
            logger.exception("optout: cannot record an internal error; blocking anyway")
            flow.response = make_block(BLOCK_STATUS, block_body(decision, "none"), "internal-error", "none")

    def _close_later(self, client: httpx.AsyncClient) -> None:
        """Close a replaced client without blocking configure (which is synchronous)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record_id = flow.metadata.get("optout_id")
        if record_id and flow.response is not None and ID_HEADER not in flow.response.headers:
            # Lets the crawler (and the tests) tie each response to its audit record.
            flow.response.headers[ID_HEADER] = record_id
