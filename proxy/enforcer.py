"""The mitmproxy addon: options, configuration and hooks; the thin face of the enforcer.

The work is done elsewhere, one module each:

* `proxy.guard`: the connection guard (options that would relay unjudged
  bytes, raw layers, the names a request goes by, addresses);
* `proxy.judge_request`: the decision before anything goes upstream;
* `proxy.judge_response`: in-band signals before anything reaches the crawler;
* `proxy.outcome`: recording every decision and answering in our name.

Every hook fails closed: an exception blocks the flow with reason
`internal-error` (mitmproxy would otherwise log it and forward the flow), and
a failed audit write answers 503 `audit-unavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import httpx
from mitmproxy import connection, ctx, exceptions, http, tcp, udp
from mitmproxy.addonmanager import Loader
from mitmproxy.flow import Error
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.tls import ClientHelloData
from mitmproxy.utils import human

from proxy.addresses import GuardedBackend, Resolver
from proxy.audit import AuditLog, new_id, record_for, worker_log
from proxy.cache import OriginCache
from proxy.discover import find_policy
from proxy.documents import Get, OptionalDoc, OriginDocuments, fetch_license, load_origin
from proxy.errors import AuditError, PolicyError
from proxy.evidence import utc_now
from proxy.fetch import MAX_TTL, Fetched, answer_deadline, fetch_document, make_client
from proxy.guard import FORCED_OPTIONS, address_refusal, harden_layer, mode_name, option_problems
from proxy.inband import DEFAULT_BODY_CAP
from proxy.judge_request import RequestJudge
from proxy.judge_response import ResponseJudge
from proxy.metrics import Metrics
from proxy.origin import Origin, canonical_host
from proxy.outcome import FlowState, Recorder, refusal
from proxy.policy import Policy, load_policy, named_files, registry_shrinkage
from proxy.politeness import hold_for
from proxy.reclaim import Reclaimer
from proxy.shared import HEARTBEAT_EVERY, SharedState, make_shared_state
from proxy.store import EvidenceStore, store_dir
from proxy.trailers import install as drop_trailers

logger = logging.getLogger(__name__)

MODES_OR_POLICY = ("", "enforce", "monitor")
# A changed policy file is read only once none of its files was modified for this long.
SETTLE_NS = 1_000_000_000
_CLIENT_OPTIONS = frozenset(
    {
        "optout_fetch_timeout",
        "ssl_insecure",
        "ssl_verify_upstream_trusted_ca",
        "ssl_verify_upstream_trusted_confdir",
    }
)
# mitmproxy options the guard reads; a change to any of them is checked again.
_GUARDED_OPTIONS = frozenset(
    {*FORCED_OPTIONS, "ignore_hosts", "allow_hosts", "tcp_hosts", "udp_hosts", "mode", "listen_host",
     "proxyauth", "optout_trusted_network", "map_remote", "modify_headers"}
)  # fmt: skip


Signature = tuple[tuple[str, int, int, int, int], ...]


def _signature(paths: Iterable[Path]) -> Signature:
    """What these files look like on disk now: path, mtime, size, inode (of what a symlink
    points at: a swapped ConfigMap directory is a change)."""
    out = []
    for path in sorted(dict.fromkeys(paths)):  # in one order, however the caller lists them
        try:
            st = path.stat()
            # ctime too: `cp -p` and `touch -r` keep mtime and size, only the kernel sets ctime
            out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns))
        except OSError:
            out.append((str(path), -1, -1, -1, -1))
    return tuple(out)


class Enforcer:
    """Decides every request against the policy, answers blocks, and audits each decision."""

    def __init__(self) -> None:
        drop_trailers()
        self.policy: Policy | None = None  # last good policy; replaced only whole
        self.ready = False  # a policy and an audit log are in force: traffic may be judged
        self.cache: OriginCache[Origin, OriginDocuments] = OriginCache(10_000)
        self.shared: SharedState = SharedState()  # memory until a policy names Redis
        self.requests_seen = 0  # requests this process judged (the heartbeat's rate)
        self._beat: asyncio.Task[None] | None = None
        self.licenses: OriginCache[str, OptionalDoc] = OriginCache(1_000)  # RSL licences named in responses
        self.resolver = Resolver()
        self._client: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Task[None]] = set()  # replaced clients still closing
        self._reclaimer = Reclaimer()  # frees aborted bodies' buffers (proxy.reclaim)
        self.metrics = Metrics(lambda: self.cache.stats, lambda: len(self.cache))
        self.recorder = Recorder(self.metrics)
        self._watch: asyncio.Task[None] | None = None
        self._signature: Signature = ()  # policy files as last seen
        # Dropped with the flow itself: no clean-up hook can be missed.
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()
        self._tunnels: dict[str, str] = {}  # client connection id -> CONNECT host
        self._own_ports: tuple[int, ...] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._slots_limit = 0
        self._mode_override: str | None = None
        self._body_limit_set = ""  # the body_size_limit we set ourselves, if we did
        self._body_cap = DEFAULT_BODY_CAP
        self._body_limit: int | None = None  # mitmproxy's body_size_limit in bytes, when there is one
        self._direct_connections = True
        self.requests = RequestJudge(
            self.recorder, self.documents, self.resolver, cached=self.cache.fresh, own_ports=self.own_ports,
            mode=self._mode, direct=self._direct, shared=lambda: self.shared,
        )  # fmt: skip
        self.responses = ResponseJudge(
            self.recorder,
            self._flows,
            self.license,
            mode=self._mode,
            body_cap=lambda: self._body_cap,
            body_limit=lambda: self._body_limit,
        )

    @property
    def audit(self) -> AuditLog | None:
        return self.recorder.audit

    @property
    def store(self) -> EvidenceStore | None:
        return self.recorder.store

    def _mode(self) -> str | None:
        return self._mode_override

    def _direct(self) -> bool:
        """True unless an upstream proxy makes the connections (and resolves the names)."""
        return self._direct_connections

    def _bound_bodies(self) -> None:
        """Make mitmproxy stop buffering a body at optout_body_cap, unless body_size_limit is set.

        mitmproxy buffers a whole body before the `response` hook; without a
        limit, a 512 MB (or endless) chunked stream is buffered whole, and only
        then could our cap be checked. With `body_size_limit` it aborts the flow
        (502, never delivered) as soon as the body outgrows it, or at once when
        its Content-Length is over it, and `error` records it: memory per flow
        stays within the cap while a body streams in. Under a larger limit of
        the user's own, our 451 applies. Under `over_cap: forward` no limit is
        set: such bodies must be forwarded, so they are buffered to be judged
        (the memory bound is the policy's to give up).
        """
        if not hasattr(ctx.options, "body_size_limit"):
            return
        current = ctx.options.body_size_limit
        if current and current != self._body_limit_set:
            self._body_limit = human.parse_size(current)
            return  # the user chose a limit of their own
        forward = self.policy is not None and self.policy.reading("over_cap") == "forward"
        ours = "" if forward else str(ctx.options.optout_body_cap)
        if (current or "") != ours:
            self._body_limit_set = ours
            ctx.options.update(body_size_limit=ours or None)
        self._body_limit = human.parse_size(ctx.options.body_size_limit)

    def _cache_options(self) -> None:
        """Keep the options the hot path reads as plain attributes: every ctx.options read goes
        through mitmproxy's option manager, and a request would read several."""
        o = ctx.options
        self._mode_override = getattr(o, "optout_mode", "") or None
        self._body_cap = int(getattr(o, "optout_body_cap", DEFAULT_BODY_CAP))
        self._direct_connections = all(mode_name(spec) != "upstream" for spec in getattr(o, "mode", ()))

    def own_ports(self) -> tuple[int, ...]:
        """The ports this proxy listens on (proxy and metrics): never reachable through it."""
        if self._own_ports is not None:
            return self._own_ports
        configured = int(getattr(ctx.options, "listen_port", None) or 0)  # 0: chosen when bound
        ports = {configured} if configured else set()
        server = ctx.master.addons.get("proxyserver") if hasattr(ctx, "master") else None
        bound = [addr[1] for addr in server.listen_addrs()] if server is not None else []
        ports.update(bound)
        if self.metrics.port:
            ports.add(self.metrics.port)
        if bound:  # kept once the servers are up; until then asked again
            self._own_ports = tuple(sorted(ports))
        return tuple(sorted(ports))

    def _fetch_slots(self) -> asyncio.Semaphore:
        """The bound on origins whose documents are fetched at once (optout_fetch_concurrency)."""
        limit = int(getattr(ctx.options, "optout_fetch_concurrency", 64))
        if self._slots is None or self._slots_limit != limit:
            self._slots, self._slots_limit = asyncio.Semaphore(limit), limit
        return self._slots

    # -- options -----------------------------------------------------------

    def load(self, loader: Loader) -> None:
        # httpx logs every policy-document request at INFO; that is debug detail here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        loader.add_option(
            "optout_policy",
            str,
            "",
            "Policy file (YAML) that says which opt-out signals to honour; its registries "
            "and audit path are relative to it. Empty: $OPTOUT_POLICY, then policies/default.yaml "
            "in the current folder, then ~/.config/optout-proxy/policy.yaml, then "
            "/etc/optout-proxy/policy.yaml.",
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
            "optout_fleet_size",
            int,
            1,
            "How many proxy processes share the origins, fleet-wide (`run --workers N` sets N unless "
            "given): while the shared state (Redis) is down, each paces an origin at its interval "
            "times this.",
        )
        loader.add_option(
            "optout_worker",
            str,
            "",
            "This process's worker id under `optout-proxy run --workers N` (set by the supervisor): its "
            "audit log is the audit path with .w<id> before the suffix. Empty: a single process.",
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
            "optout_fetch_concurrency",
            int,
            64,
            "Origins whose policy documents are fetched at the same time; requests for further new "
            "origins queue (their fetch deadline starts when their turn comes). A limit of ours is "
            "never recorded as the origin being unreachable.",
        )
        loader.add_option(
            "optout_trusted_network",
            bool,
            False,
            "Allow listening on a non-loopback address without proxyauth, because the network in front "
            "of the proxy is trusted (a private Kubernetes Service, a firewalled host). Off: such a "
            "listen address refuses to start, since it would be an open proxy.",
        )
        loader.add_option(
            "optout_body_cap",
            int,
            DEFAULT_BODY_CAP,
            "Largest HTML or media body (bytes) buffered and inspected for in-band signals before "
            "delivery; a larger one is withheld or forwarded uninspected as the policy's over_cap says.",
        )

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if not self.ready:
                # At startup this stops mitmdump; through `-s` it may not, and then
                # the gate (proxy.gate) keeps every request from being forwarded.
                logger.error("optout: cannot start: %s", e)
            raise
        self.ready = self.policy is not None and self.audit is not None

    def _configure(self, updated: set[str]) -> None:
        self._guard_options(updated)
        self._cache_options()
        if "optout_policy" in updated or "optout_audit" in updated:
            try:
                path, how = find_policy(ctx.options.optout_policy or None)
                policy = load_policy(path)
            except PolicyError as e:
                raise exceptions.OptionsError(f"invalid policy:\n{e.report()}") from e
            logger.info("optout: policy %s (from %s)", path, how)
            self._install(policy)
            self._signature = _signature((policy.path, *policy.registries))
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
        if "optout_fetch_concurrency" in updated and ctx.options.optout_fetch_concurrency < 1:
            raise exceptions.OptionsError("optout_fetch_concurrency must be at least 1")
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
        self._bound_bodies()
        if getattr(ctx.options, "stream_large_bodies", None) and self.policy is not None:
            # (Checked once a policy is in: raised from a nested configure, a rollback re-enters.)
            # A request body over it is streamed to the origin right after the headers, before
            # the `request` hook judges the request; a chunked response body that outgrows it is
            # streamed without another hook. Either way bytes move before a decision.
            raise exceptions.OptionsError(
                "stream_large_bodies would send large request bodies to the origin before the request "
                "is judged, and let response bodies reach the crawler uninspected; unset it "
                "(optout_body_cap bounds what is buffered)"
            )
        if updated & _CLIENT_OPTIONS and self._client is not None:
            old, self._client = self._client, None
            self._close_later(old)

    def _install(self, policy: Policy) -> None:
        """Make `policy` the one in force, with its audit log (opened before the swap)."""
        audit_path = Path(ctx.options.optout_audit) if ctx.options.optout_audit else policy.audit.path
        if ctx.options.optout_worker:
            audit_path = worker_log(audit_path, ctx.options.optout_worker)
        if self.audit is None or self.audit.path != audit_path:
            audit = AuditLog(
                audit_path,
                max_bytes=ctx.options.optout_audit_max_bytes,
                checkpoint_every=ctx.options.optout_audit_checkpoint_every,
            )
            try:
                audit.claim()  # one writer per log, and a log we can open, before we serve anything
            except AuditError as e:
                raise exceptions.OptionsError(str(e)) from e
            old_audit, self.recorder.audit = self.audit, audit
            self.recorder.store = EvidenceStore(store_dir(audit_path))
            if old_audit is not None:
                old_audit.release()
        if self._client is not None and (
            self.policy is None
            or self.policy.agent != policy.agent
            or self.policy.private_addresses != policy.private_addresses
        ):
            # The client identifies as the crawler's token and connects only where the policy
            # allows: a new agent or address rule needs a new client.
            old, self._client = self._client, None
            self._close_later(old)
        if self.shared.spec != policy.shared_state or self.shared.workers != max(
            1, ctx.options.optout_fleet_size
        ):
            # also when the fleet size changes: workers on memory divide each origin's pace by it
            old_shared, self.shared = (
                self.shared,
                make_shared_state(
                    policy.shared_state, ctx.options.optout_fleet_size, self.metrics.shared_state_changed
                ),
            )
            self.metrics.shared_state_changed(True)
            self._close_shared_later(old_shared)
            self._start_shared()
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
            policy = self.policy
            backend = GuardedBackend(
                self.resolver,
                self._fetch_refusal,
                allow_private=policy is not None and policy.private_addresses == "allow",
            )
            self._client = make_client(
                timeout=float(o.optout_fetch_timeout),
                verify=not o.ssl_insecure,
                ca_file=o.ssl_verify_upstream_trusted_ca,
                ca_path=o.ssl_verify_upstream_trusted_confdir,
                agent=policy.agent if policy is not None else None,
                backend=backend,
            )
        return self._client

    def running(self) -> None:
        if self._watch is None and ctx.options.optout_reload_interval > 0:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policy())
        if self._beat is None:
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
            self._start_shared()
        self._reclaimer.settle()

    async def _heartbeat(self) -> None:
        """Tell the shared state (Redis) this worker is alive: `optout-proxy fleet status` lists it."""
        worker = f"{socket.gethostname()}/{ctx.options.optout_worker or os.getpid()}"
        last, last_at = self.requests_seen, time.monotonic()
        while True:
            now = time.monotonic()
            rate = (self.requests_seen - last) / max(now - last_at, 1e-6)
            last, last_at = self.requests_seen, now
            policy = self.policy
            info = {
                "host": socket.gethostname(), "pid": os.getpid(), "requests": self.requests_seen,
                "requests_per_s": round(rate, 1), "policy_sha256": policy.digest if policy else None,
                "shared_state": "up" if self.shared.up else "down",
            }  # fmt: skip
            try:
                await self.shared.heartbeat(worker, info)
                await self.shared.renew_slots()
            except Exception:
                logger.debug("optout: heartbeat failed", exc_info=True)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _watch_policy(self) -> None:
        """Poll the policy and registry files; apply a settled, valid change whole, refuse an invalid one.

        A file caught mid-write can be valid YAML that says less (a policy cut
        before `registries:`, a registry cut after its first entry). So a change
        is applied only once it has settled: the files looked the same on two
        polls a full interval apart and none was modified in the last second.
        The files are read off the event loop, and read again if they changed
        while being read.
        """
        pending: Signature | None = None
        while True:
            await asyncio.sleep(max(1, ctx.options.optout_reload_interval))
            current = self.policy
            if current is None:
                continue
            # The files in force, and those the policy file names now: a registry a new policy
            # adds is watched from the start, and fixing one refused is seen.
            watched = (*current.registries, *await asyncio.to_thread(named_files, current.path))
            seen = _signature(watched)
            if seen == self._signature:
                pending = None
                continue
            newest = max((mtime for _, mtime, _, _, _ in seen), default=0)
            if seen != pending or time.time_ns() - newest < SETTLE_NS:
                pending = seen  # still being written, perhaps: look again next time
                continue
            pending = None
            try:
                policy = await asyncio.to_thread(load_policy, current.path)
            except PolicyError as e:
                self._signature = seen
                self.metrics.reloads.labels("refused").inc()
                logger.error(
                    "optout: policy change refused; still enforcing sha256 %s:\n%s",
                    current.digest[:12],
                    e.report(),
                )
                continue
            except Exception:
                self._signature = seen
                self.metrics.reloads.labels("refused").inc()
                logger.exception(
                    "optout: policy reload failed; still enforcing sha256 %s", current.digest[:12]
                )
                continue
            if not set(_signature((policy.path, *policy.registries))) <= set(seen):
                continue  # written to while we read it: wait for it to settle again
            self._signature = seen
            if policy.digest == current.digest:
                continue
            for warning in registry_shrinkage(current, policy):
                logger.warning("optout: RELOAD SHRINKS THE REGISTRY: %s", warning)
            try:
                self._install(policy)
                self._bound_bodies()
            except exceptions.OptionsError as e:
                self.metrics.reloads.labels("refused").inc()
                logger.error(
                    "optout: policy change refused (%s); still enforcing sha256 %s", e, current.digest[:12]
                )
                continue
            self.metrics.reloads.labels("accepted").inc()
            logger.info("optout: policy reloaded: sha256 %s -> %s", current.digest[:12], policy.digest[:12])

    async def done(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        self.metrics.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.shared.close()
        self.ready = False
        if self.audit is not None:
            self.audit.release()

    # -- documents ---------------------------------------------------------

    async def documents(self, origin: Origin) -> OriginDocuments:
        """The origin's policy documents, from the cache or fetched once for all callers."""

        async def load(previous: OriginDocuments | None) -> tuple[OriginDocuments, float]:
            timeout = float(ctx.options.optout_fetch_timeout)
            # Queued here, outside the fetch's own deadline: a burst of new origins waits its
            # turn instead of timing out against our own limits.
            async with self._fetch_slots():
                return await fetched(previous, timeout)

        async def fetched(previous: OriginDocuments | None, timeout: float) -> tuple[OriginDocuments, float]:
            started = time.monotonic()
            docs, ttl = await load_origin(
                self.client(),
                origin,
                previous,
                keep=self._keep,
                total_timeout=answer_deadline(timeout),
                unreachable_retry=float(ctx.options.optout_unreachable_retry),
                tokens=self.policy.tokens if self.policy is not None else (),
                get=self._get(),
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
            lic = await fetch_license(
                self.client(), url, total_timeout=deadline, keep=self._keep, get=self._get()
            )
            ttl = MAX_TTL if lic.outcome == "ok" else float(ctx.options.optout_unreachable_retry)
            return lic, ttl

        return await self.licenses.get(url, load)

    def _count_documents(self, docs: OriginDocuments) -> None:
        count = self.metrics.documents
        count.labels(
            "robots.txt", (docs.stale_because and "unreachable-kept-last-good") or docs.robots_outcome
        ).inc()
        optional = (
            ("ai.txt", docs.ai_txt),
            ("well-known-ai.txt", docs.ai_txt_well_known),
            ("tdmrep.json", docs.tdm_json),
        )
        for name, doc in optional:
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

    # -- the guard -----------------------------------------------------------

    def _guard_options(self, updated: set[str]) -> None:
        """Refuse options that would relay unjudged bytes or expose the proxy; force the fail-open
        defaults shut.

        The refusal comes first and changes nothing: an options update made here
        while another is being refused is rolled back into a fresh `configure`
        that would force it again, a loop that ends only at Python's recursion limit.
        """
        if updated & _GUARDED_OPTIONS:
            problems = option_problems(ctx.options, trusted_network=ctx.options.optout_trusted_network)
            if problems:
                raise exceptions.OptionsError("; ".join(problems))
        unsafe = {k: v for k, v in FORCED_OPTIONS.items() if k in updated and getattr(ctx.options, k, v) != v}
        if unsafe:
            if self.ready:
                raise exceptions.OptionsError(
                    f"optout-proxy runs with {', '.join(f'{k}={v}' for k, v in FORCED_OPTIONS.items())}: "
                    "anything else would relay bytes before or without a decision"
                )
            logger.info(
                "optout: %s (mitmproxy's defaults would relay before or without a decision)",
                ", ".join(f"{k}={v}" for k, v in unsafe.items()),
            )
            ctx.options.update(**{k: FORCED_OPTIONS[k] for k in unsafe})
        if "listen_port" in updated or "optout_metrics" in updated:
            self._own_ports = None

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        # Scripts run before mitmproxy's own layer chooser: let it choose now, then
        # check its choice (it leaves a layer that is already set alone).
        chooser = ctx.master.addons.get("nextlayer")
        if nextlayer.layer is None and chooser is not None:
            chooser.next_layer(nextlayer)
        replaced = harden_layer(nextlayer)
        if replaced is not None:
            logger.warning(
                "optout: %s chose %s for %s; parsing it as HTTP instead (nothing is relayed unjudged)",
                "mitmproxy", replaced, nextlayer.context.client.peername,
            )  # fmt: skip

    def tls_clienthello(self, data: ClientHelloData) -> None:
        # Never pass a TLS connection through unintercepted, and never contact the
        # origin before a request has been decided (the SNI is judged with the request).
        data.ignore_connection = False
        data.establish_server_tls_first = False

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._kill_raw(flow, "tcp")

    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._kill_raw(flow, "udp")

    def _kill_raw(self, flow: tcp.TCPFlow | udp.UDPFlow, protocol: str) -> None:
        """Second line behind `harden_layer`: a raw relay that still starts is killed and recorded."""
        flow.kill()
        address = flow.server_conn.address
        host, port = (str(address[0]), int(address[1])) if address else ("", 0)
        decision = refusal(
            "raw-protocol",
            f"A raw {protocol.upper()} relay to {host}:{port} was refused: only HTTP is judged.",
            self.policy,
        )
        record = record_for(
            decision, record_id=new_id(), ts=utc_now(), method=protocol.upper(),
            url=f"{protocol}://{host}:{port}", host=canonical_host(host) if host else "",
            agent=self.policy.agent if self.policy else "", phase="connect", status=None, user_agent=None,
            policy_path=str(self.policy.path) if self.policy else None,
        )  # fmt: skip
        self.recorder.note(record)
        logger.warning("optout: killed a raw %s relay to %s:%d", protocol, host, port)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge a CONNECT on its authority: registry and addresses, before any upstream contact."""
        if flow.response is not None:
            return None
        self.requests_seen += 1
        state = self._flows[flow] = FlowState(self.policy)

        def tunnel_opened() -> None:
            if flow.response is None:
                self._tunnels[flow.client_conn.id] = canonical_host(flow.request.host)

        def judge() -> Awaitable[None] | None:
            if state.policy is None or not self.ready:
                raise RuntimeError("no policy loaded")
            return self.requests.judge_connect(flow, state, state.policy)

        return self._fail_closed(flow, state, "connect", judge, then=tunnel_opened)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Check the address mitmproxy is about to connect to (a redirect, a map, a second DNS answer).

        The request was judged on its names; this is the last look before any
        contact. A refused address kills the connection before it is opened.
        """
        policy = self.policy
        if policy is None or not self._direct() or data.server.address is None:
            return
        host, port = str(data.server.address[0]), int(data.server.address[1])
        allow_private = policy.private_addresses == "allow"
        if allow_private and port not in self.own_ports():
            return
        try:
            why = await address_refusal(
                host, port, self.resolver, allow_private=allow_private, own_ports=self.own_ports(),
            )  # fmt: skip
        except OSError as e:
            why = ("unresolvable", f"{host} does not resolve ({e})")
        if why is not None:
            data.server.error = f"optout-proxy: {why[1]}"
            logger.warning("optout: refused to connect: %s", why[1])

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)

    # -- request phase -----------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Decide the request (synchronously when its origin's documents are cached)."""
        if flow.response is not None:
            return None  # answered by another addon (or replayed); nothing goes upstream
        # One policy for the whole flow, even if a reload lands meanwhile.
        self.requests_seen += 1
        policy = self.policy
        state = self._flows[flow] = FlowState(policy)
        # What _fail_closed does, without its closures: this is every request's path.
        try:
            if policy is None or not self.ready:
                raise RuntimeError("no policy loaded")
            tunnelled = flow.client_conn.id in self._tunnels
            rest = self.requests.judge(flow, state, policy, tunnelled=tunnelled)
        except Exception as e:
            self.recorder.failed(flow, state, e, phase="request")
            return None
        if rest is None:
            return None
        return self._fail_closed(flow, state, "request", lambda: rest)

    def _fail_closed(
        self, flow: http.HTTPFlow, state: FlowState, phase: str, judge: Callable[[], Awaitable[None] | None],
        *, then: Callable[[], None] | None = None,
    ) -> Awaitable[None] | None:  # fmt: skip
        """Run `judge` (and its awaitable rest, if any); whatever fails blocks the flow.

        A limit of ours answers 503 (`fetch-capacity`); any other exception 451
        (`internal-error`): mitmproxy would otherwise log it and forward the flow.
        """

        try:
            rest = judge()
        except Exception as e:
            self.recorder.failed(flow, state, e, phase=phase)
            return None
        if rest is None:
            if then is not None:
                then()
            return None

        async def finish() -> None:
            try:
                await rest
            except Exception as e:
                self.recorder.failed(flow, state, e, phase=phase)
                return
            if then is not None:
                then()

        return finish()

    # -- response phase ----------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge the response headers as they arrive (synchronous when there is nothing to judge)."""
        response = flow.response
        if response is not None and response.status_code in (429, 503) and self.responses.judgeable(flow):
            # Only the origin's own answer: our 429 (crawl-delay) or 503 would hold the origin
            # back for every crawler, each refusal extending the hold.
            try:
                self._back_off(flow)
            except Exception:
                # Politeness, not the judgement: the headers are still judged below.
                logger.exception("optout: cannot read the Retry-After of %s", flow.request.pretty_url)
        return self.responses.headers(flow)

    def _back_off(self, flow: http.HTTPFlow) -> None:
        """An origin's 429/503 with Retry-After holds the fleet back from it (politeness.backoff)."""
        policy = self.policy
        response = flow.response
        if policy is None or response is None or not policy.politeness.backoff:
            return
        seconds = hold_for(response.status_code, response.headers.get("Retry-After"))
        if seconds is None or seconds <= 0:
            return
        origin = Origin.of(flow.request.scheme, flow.request.host, flow.request.port).key
        logger.info(
            "optout: %s answered %d, Retry-After %.0f s: held back", origin, response.status_code, seconds
        )
        shared = self.shared
        self._background(lambda: shared.hold(origin, seconds))

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Judge a buffered body before delivery (a coroutine only when there is one to judge)."""
        if flow.response is not None and flow.response.trailers is not None and not flow.request.is_http2:
            # mitmproxy 11.0 cannot send HTTP/1 trailers to the client (the client hangs);
            # they are metadata, never the content, so they are dropped.
            flow.response.trailers = None
        state = self._flows.get(flow)
        if state is not None and state.release is not None:
            try:
                state.release()  # the origin has sent all it will: its slot is free for the next request
            except Exception:
                logger.exception("optout: cannot free the slot of %s", flow.request.pretty_url)
        rest = self.responses.body(flow)
        if state is None:
            return rest
        if rest is None:
            self.recorder.delivered(state)
            return None

        async def then() -> None:
            await rest
            self.recorder.delivered(state)

        return then()

    def error(self, flow: http.HTTPFlow) -> None:
        """Record a response mitmproxy aborted (a body over body_size_limit): withheld, and said so.

        An error that quotes what the origin sent (mitmproxy's 502 page repeats an answer it could
        not read, `b'<!doctype html>...'`, unjudged) kills the flow instead: the client gets no
        answer at all, and that is recorded (`bad-response`).
        """
        state = self._flows.get(flow)
        if state is not None and state.release is not None:
            self._release_after_error(flow, state, state.release)
        if flow.error is None or flow.error.msg == Error.KILLED_MESSAGE:
            return
        if "body_size_limit" not in flow.error.msg:
            message = flow.error.msg
            if flow.server_conn.timestamp_tcp_setup is None or not ("'" in message or '"' in message):
                # Never connected, or a message that quotes nothing (mitmproxy quotes what it could
                # not read as a repr, in quotes): its 502 says what failed, not what the origin sent.
                return
            flow.kill()
            if state is not None and not state.answered and state.decision is not None:
                try:
                    self.responses.unreadable(flow, state, message)
                except Exception:
                    logger.exception(
                        "optout: cannot record the unreadable response of %s", flow.request.pretty_url
                    )
            return
        if state is None and flow.response is None:
            self._note_request_over_limit(flow, flow.error.msg)
            return
        if state is None or state.answered or state.decision is None:
            return
        try:
            self.responses.aborted(flow, state, flow.error.msg)
        except Exception:
            logger.exception("optout: cannot record the aborted response of %s", flow.request.pretty_url)
        self._reclaimer.soon()

    def _note_request_over_limit(self, flow: http.HTTPFlow, message: str) -> None:
        """Record the 413 mitmproxy sends, before any hook of ours, for a request body over
        body_size_limit (our optout_body_cap): nothing reached the origin, and the record says so."""
        if self.policy is None:
            return
        decision = refusal(
            "request-over-cap",
            "The request body is larger than optout_body_cap; mitmproxy refused it (413) before it "
            "was sent anywhere.",
            self.policy,
            detail=f"{message} (optout_body_cap {ctx.options.optout_body_cap})",
        )
        try:
            self.recorder.note(
                self.recorder.record(flow, decision, self.policy, new_id(), phase="request", status=413)
            )
        except Exception:
            logger.exception("optout: cannot record the refused request %s", flow.request.pretty_url)

    def _release_after_error(self, flow: http.HTTPFlow, state: FlowState, release: Callable[[], Any]) -> None:
        """Give an errored flow's origin slot back: at once if the request never reached the origin,
        else after politeness.abandoned_hold (a client that gave up leaves the origin working)."""
        reached = (
            flow.server_conn.timestamp_tcp_setup is not None
            and flow.request.timestamp_end is not None
            and (flow.response is None or flow.response.timestamp_end is None)
        )
        hold = state.policy.politeness.abandoned_hold if state.policy is not None else 0.0
        if reached and hold > 0:
            if isinstance(release, weakref.finalize):
                # The finalizer fires as soon as mitmproxy drops the dead flow and its state is
                # collected, which freed the slot at once: detached, the slot waits for the hold.
                detached = release.detach()
                if detached is None:
                    return  # already given back
                _, give_back, args, kwargs = detached
                release = functools.partial(give_back, *args, **kwargs)
            asyncio.get_running_loop().call_later(hold, release)
        else:
            release()

    def _background(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run `make()` on the event loop, if one runs yet (configure is synchronous and may come
        first), keeping the task referenced until it ends."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task: asyncio.Task[Any] = loop.create_task(make())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _start_shared(self) -> None:
        """Let the shared state listen to the fleet (running() does it if the loop is not up yet)."""
        self._background(self.shared.start)

    def _close_shared_later(self, shared: SharedState) -> None:
        self._background(shared.close)

    def _get(self) -> Get:
        """How this process gets one policy document: itself, or through the fleet's shared store."""
        shared = self.shared
        if shared.kind == "memory":
            return fetch_document

        async def get(
            client: httpx.AsyncClient, url: str, *, max_bytes: int, total_timeout: float
        ) -> Fetched:
            return await shared.document(
                url,
                lambda: fetch_document(client, url, max_bytes=max_bytes, total_timeout=total_timeout),
                lasts=total_timeout,
            )

        return get

    def _close_later(self, client: httpx.AsyncClient) -> None:
        """Close a replaced client without blocking configure (which is synchronous)."""
        self._background(client.aclose)

    def _fetch_refusal(self, host: str) -> str | None:
        """Why our own fetches may not go to `host`: a rights holder's site in the registry is never
        contacted. An entry for some paths of a host leaves the rest of it, robots.txt included, to
        be fetched and read (refused, robots.txt read as unreachable would lift its Disallow)."""
        policy = self.policy
        if policy is not None and policy.registry.whole_site(host):
            return "a rights holder in the registry"
        return None
