"""The `optout-proxy` command: run the proxy, explain a decision, validate a policy.

    optout-proxy run [--policy PATH] [--listen-host H] [--listen-port P]
                     [--mode enforce|monitor] [--audit PATH] [--set OPTION=VALUE ...]
    optout-proxy check URL [--agent TOKEN] [--policy PATH] [--json]
    optout-proxy policy validate [PATH]

Results go to stdout; progress and diagnostics to stderr. Exit codes are
`ExitStatus`. This module parses and prints; the work is done elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ruamel.yaml.error import YAMLError

from proxy import __version__
from proxy.assess import assess
from proxy.audit import (
    VerifyReport,
    logs_at,
    new_id,
    record_for,
    seal,
    start_new_chain,
    verify_chain,
    worker_log,
    writable_problem,
)
from proxy.decide import decide
from proxy.discover import find_policy
from proxy.documents import OptionalDoc, OriginDocuments, fetch_license, load_origin
from proxy.errors import AuditError, PolicyError
from proxy.evidence import Decision, Document, Finding, Verdict, utc_now
from proxy.fetch import answer_deadline, make_client
from proxy.fleetlog import verify_fleet, write_fleet_checkpoint
from proxy.inband import (
    DEFAULT_BODY_CAP,
    ResponseView,
    body_findings,
    body_kind,
    header_findings,
    reads_bodies,
)
from proxy.logview import (
    BY,
    Filter,
    Tail,
    check_agent,
    check_signal,
    export,
    find_record,
    format_summary,
    one_line,
    outcome_line,
    parse_when,
    records,
    summarize,
)
from proxy.origin import Origin, path_and_query
from proxy.policy import Policy, load_policy
from proxy.policydiff import diff
from proxy.policyedit import (
    add_entries,
    add_honor_agents,
    entries_from_csv,
    make_entry,
    registry_file,
    remove_entries,
    tokens_from_robots_json,
)
from proxy.report import gather, render
from proxy.shared import fleet_workers
from proxy.store import EvidenceStore, store_dir
from proxy.warc import write_warc
from proxy.workers import (
    Supervisor,
    die_with_supervisor,
    ensure_ca,
    free_local_port,
    reserve_port,
    serve_merged_metrics,
    share_port,
    worker_count,
)  # fmt: skip

POLICY_HELP = (
    "policy file (default: $OPTOUT_POLICY, ./policies/default.yaml, ~/.config/optout-proxy/policy.yaml, "
    "/etc/optout-proxy/policy.yaml)"
)


class ExitStatus(enum.IntEnum):
    OK = 0  # allowed (check), valid (validate), clean shutdown (run)
    BLOCKED = 1  # check: the URL would be blocked
    INVALID = 2  # invalid policy, bad arguments, or an error that prevented a decision


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optout-proxy",
        description="A crawler-policy enforcement proxy that honours AI-training opt-outs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy (mitmdump with the optout addon)")
    run.add_argument("--policy", help=POLICY_HELP)
    run.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--listen-port", type=int, default=8080, help="port to listen on (default 8080)")
    run.add_argument("--mode", choices=("enforce", "monitor"), help="override the policy's mode")
    run.add_argument("--audit", help="audit log path, overriding the policy's audit.path")
    run.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="any mitmproxy or optout_* option, e.g. --set flow_detail=1 (repeatable)",
    )
    run.add_argument(
        "--workers", default="1",
        help="how many enforcer processes share the listening address (SO_REUSEPORT), supervised; "
        "auto = one per core (default 1)",
    )  # fmt: skip
    run.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers

    check = sub.add_parser("check", help="explain what the proxy would decide for a URL")
    check.add_argument("url", help="absolute http(s) URL")
    check.add_argument("--agent", help="product token to evaluate as (default: the policy's agent)")
    check.add_argument("--policy", help=POLICY_HELP)
    check.add_argument("--json", action="store_true", help="print the audit record instead of text")
    check.add_argument("--timeout", type=float, default=5.0, help="fetch timeout in seconds (default 5)")
    check.add_argument("--insecure", action="store_true", help="do not verify origin TLS certificates")
    check.add_argument("--ca-file", help="trust this CA bundle for origin TLS")

    audit = sub.add_parser("audit", help="read, verify and report on the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    def log_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log", help="audit log (default: the policy's audit.path)")
        p.add_argument("--policy", help="policy whose log to read, if --log is not given (found as for run)")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="only this host and its subdomains")
        p.add_argument("--signal", help="only this deciding signal (e.g. robots-txt, registry); checked")
        p.add_argument("--decision", choices=("allow", "block", "would-block"), help="only this outcome")
        p.add_argument(
            "--since",
            help="from this time on: 2026-12-02, '2026-12-02 16:01' or RFC 3339 with an offset (default UTC)",
        )
        p.add_argument("--until", help="before this time (same forms as --since)")
        p.add_argument("--agent", help="only records for this agent")

    verify = asub.add_parser("verify", help="check the hash chain and checkpoints; exit 1 if broken")
    verify.add_argument("path", nargs="?", help="audit log (the same as --log; default: the policy's)")
    verify.add_argument("--log", help="audit log (default: the policy's audit.path)")
    verify.add_argument("--policy", help="policy whose log to verify, if no log is given (found as for run)")
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        action="append",
        default=[],
        help="a chain head kept elsewhere (a checkpoint line copied off the machine): the log must still "
        "hold record SEQ with this hash; repeatable",
    )
    chain = asub.add_parser(
        "new-chain",
        help="archive a log (a broken chain, say) and start a new one that points at it",
        description="Moves the log's files into --archive, verifies them there, and starts a new log whose "
        "first record names the archive, its last verified head and whether it was intact. Refused while a "
        "proxy writes the log.",
    )
    chain.add_argument("--archive", required=True, help="folder to move the old log's files into")
    log_arg(chain)
    show = asub.add_parser("show", help="one record with its evidence, the deciding line marked")
    show.add_argument("id", help="record id (or its first 8+ characters)")
    log_arg(show)
    tail = asub.add_parser("tail", help="the latest records, human-readable")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new records (across rotations)"
    )
    tail.add_argument(
        "--interval", type=float, default=0.5, help="with -f: seconds between looks at the log (default 0.5)"
    )
    log_arg(tail)
    filters(tail)

    def no_verify(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-verify",
            action="store_true",
            help="do not walk the hash chain afterwards (by default a broken chain is said and exits 1)",
        )

    summary = asub.add_parser("summary", help="counts of allow / block / would-block, grouped")
    summary.add_argument("--by", default="signal", choices=BY, help="group by (default signal)")
    summary.add_argument("--top", type=int, default=25, help="groups to show (default 25)")
    log_arg(summary)
    filters(summary)
    no_verify(summary)
    export = asub.add_parser("export", help="records as CSV or JSON Lines on stdout")
    export.add_argument(
        "--format",
        choices=("csv", "jsonl", "warc"),
        default="csv",
        help="csv or jsonl: the records; warc: their evidence as WARC 1.1 (needs --out; .warc.gz is gzipped)",
    )
    export.add_argument("--out", help="write to this file instead of stdout")
    log_arg(export)
    filters(export)
    no_verify(export)
    report = asub.add_parser("report", help="a self-contained HTML report")
    report.add_argument("--out", default="report.html", help="output file (default report.html)")
    log_arg(report)
    filters(report)

    fleet = sub.add_parser("fleet", help="the workers of a fleet, as the shared state (Redis) sees them")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    status = fsub.add_parser(
        "status", help="workers seen in the last 30 s: id, policy, requests/s, last seen"
    )
    status.add_argument("--policy", help=POLICY_HELP + "; its shared_state names Redis")
    status.add_argument("--redis", help="Redis URL (default: the policy's shared_state)")
    status.add_argument("--json", action="store_true", help="print the workers as JSON")

    policy = sub.add_parser("policy", help="work with policy files")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    registry = psub.add_parser("registry", help="add, remove or list rights-holder registry entries")
    rsub = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    radd = rsub.add_parser("add", help="add a rights holder's opt-out")
    radd.add_argument("--holder", required=True)
    radd.add_argument(
        "--domain", action="append", required=True, help="a domain (covers its subdomains); repeatable"
    )
    radd.add_argument(
        "--path", action="append", default=[], help="a URL path prefix; repeatable (default: whole site)"
    )
    radd.add_argument("--reason", required=True, help="why, in one sentence (e.g. the letter and its date)")
    radd.add_argument("--source", required=True, help="URL documenting the opt-out")
    radd.add_argument("--since", required=True, help="date of the opt-out, YYYY-MM-DD")
    rremove = rsub.add_parser(
        "remove",
        help="remove a holder's entries, a domain, or a domain from one holder",
        description="--holder H removes H's entries; --domain D removes D from every entry listing it "
        "(an entry left with no domain goes too); both remove D from H's entries only.",
    )
    rremove.add_argument("--holder", help="the holder whose entries to remove (or to remove --domain from)")
    rremove.add_argument("--domain", help="the domain to remove (an entry keeps its other domains)")
    rlist = rsub.add_parser("list", help="list the registry entries")
    for p in (radd, rremove, rlist):
        p.add_argument("--policy", help=POLICY_HELP)
        p.add_argument("--registry", help="registry file to edit (default: the policy's first)")
    pimport = psub.add_parser("import", help="import holders from CSV, or honor_agents from a robots.json")
    source = pimport.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV with columns holder,domains,paths,reason,source,since")
    source.add_argument("--robots-json", help="ai.robots.txt robots.json: its tokens join honor_agents")
    pimport.add_argument("--match", help="robots.json: only entries whose fields mention this text")
    pimport.add_argument("--policy", help=POLICY_HELP)
    pimport.add_argument("--registry", help="registry file for --csv (default: the policy's first)")
    pdiff = psub.add_parser("diff", help="URLs whose decision differs between two policies (exit 1 if any)")
    pdiff.add_argument("old")
    pdiff.add_argument("new")
    pdiff.add_argument("--urls", required=True, help="file with one URL per line")
    pdiff.add_argument("--timeout", type=float, default=5.0, help="fetch timeout in seconds (default 5)")

    validate = psub.add_parser("validate", help="check a policy and its registries")
    validate.add_argument("path", nargs="?", help=POLICY_HELP)
    return parser


def _print_problems(error: PolicyError, out: TextIO) -> None:
    print(error.report(), file=out)


# -- run -------------------------------------------------------------------


def mitmdump_args(args: argparse.Namespace, *, script: bool = True) -> list[str]:
    """The mitmdump command line that `run` amounts to (`script`: load the addon with -s)."""
    argv = ["-s", str(Path(__file__).with_name("addon.py"))] if script else []
    argv += [
        "--listen-host",
        args.listen_host,
        "--listen-port",
        str(args.listen_port),
        # performance.md: printing every flow costs ~18 %; --set flow_detail=1 brings it back.
        "--set",
        "flow_detail=0",
        "--set",
        f"optout_policy={args.policy}",
    ]
    if args.mode:
        argv += ["--set", f"optout_mode={args.mode}"]
    if args.audit:
        argv += ["--set", f"optout_audit={args.audit}"]
    for option in args.options:
        argv += ["--set", option]
    return argv


def serve(argv: Sequence[str]) -> None:
    """Run mitmdump with the enforcer built in, configured whole before anything listens.

    Unlike `mitmdump -s` (which loads a script after the fact and carries on
    without it when it fails), the enforcer is added once every option is
    parsed, and configured with all of them: a bad `--set optout_*` value, a
    broken policy or an audit log that cannot be claimed makes mitmproxy print
    the problem and exit 1 before it binds its port.
    """
    from mitmproxy import ctx
    from mitmproxy.exceptions import OptionsError
    from mitmproxy.tools import cmdline, dump
    from mitmproxy.tools import main as mitmproxy_main

    from proxy.enforcer import Enforcer

    enforcer = Enforcer()

    def install(ns: argparse.Namespace) -> dict[str, Any]:
        pending = sorted(ctx.options.deferred)
        try:
            ctx.master.addons.add(enforcer)  # adds our options and applies the deferred --set values
        except OptionsError as e:
            # mitmproxy's parse errors do not name the option; name the candidates.
            given = ", ".join(
                f"{k}={ctx.options.deferred[k].val[0]}" for k in pending if k in ctx.options.deferred
            )
            raise OptionsError(f"{e} (in --set {given})") from e
        if ctx.options.deferred:
            raise OptionsError(f"unknown option(s): {', '.join(sorted(ctx.options.deferred))} (misspelled?)")
        enforcer.configure(set(ctx.options.keys()))
        if ns.filter_args:
            v = " ".join(ns.filter_args)
            return {"save_stream_filter": v, "readfile_filter": v, "dumper_filter": v}
        return {}

    mitmproxy_main.run(dump.DumpMaster, cmdline.mitmdump, list(argv), install)


def _resolve_policy(args: argparse.Namespace) -> bool:
    """Settle which policy file the command uses (proxy.discover) and say so on stderr; False if none.

    Commands that name everything they read (an audit command given its log,
    `policy diff`) need no policy.
    """
    if args.command == "audit":
        log = getattr(args, "log", None)
        given = getattr(args, "path", None)
        if log and given and Path(log) != Path(given):
            print(f"optout-proxy audit verify: two logs named: {given} and --log {log}", file=sys.stderr)
            return False
        if log or given:
            return True
    if args.command == "policy" and args.policy_command == "validate":
        found = _find(args.path)
        if found is not None:
            args.path = str(found)
        return found is not None
    if not hasattr(args, "policy"):
        return True
    found = _find(args.policy)
    if found is not None:
        args.policy = str(found)
    return found is not None


def _find(given: str | None) -> Path | None:
    try:
        path, how = find_policy(given)
    except PolicyError as e:
        _print_problems(e, sys.stderr)
        return None
    print(f"optout-proxy: policy {path} (from {how})", file=sys.stderr)
    return path


def _load_or_report(path: str) -> Policy | None:
    """The policy at `path`, or None after printing its problems to stderr."""
    try:
        return load_policy(Path(path))
    except PolicyError as e:
        _print_problems(e, sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.policy)
    if policy is None:
        return ExitStatus.INVALID
    try:
        workers = worker_count(args.workers)
    except ValueError as e:
        print(f"optout-proxy run: {e}", file=sys.stderr)
        return ExitStatus.INVALID
    audit = Path(args.audit) if args.audit else policy.audit.path
    if args.worker_id is not None:
        die_with_supervisor()
        share_port()
        args.options = [*args.options, f"optout_worker={args.worker_id}"]
        audit = worker_log(audit, args.worker_id)
    elif workers > 1:
        if policy.shared_state == "memory":
            print(
                f"optout-proxy run: warning: {workers} workers with shared_state: memory share nothing: "
                f"each paces an origin at {workers} x its interval and allows max_concurrency / {workers} "
                "(at least 1) in flight, each fetches its own documents, and an origin's Retry-After holds "
                "back only the worker that saw it; set shared_state to a Redis URL for one fleet-wide pace",
                file=sys.stderr,
            )
        return _supervise(args, workers, policy, audit)
    print(
        f"optout-proxy {__version__}: policy {args.policy} (sha256 {policy.digest[:12]}), "
        f"mode {args.mode or policy.mode}, audit log {audit}\n"
        f"  route a crawler with: curl -x http://{args.listen_host}:{args.listen_port} URL "
        "(HTTPS: trust ~/.mitmproxy/mitmproxy-ca-cert.pem)",
        file=sys.stderr,
    )
    try:
        serve(mitmdump_args(args, script=False))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else ExitStatus.INVALID
    except KeyboardInterrupt:
        pass
    return ExitStatus.OK


def _set_option(args: argparse.Namespace, name: str) -> str | None:
    """The value a `--set name=value` gave, if any (the last one wins, as in mitmproxy)."""
    values = [o.split("=", 1)[1] for o in args.options if o.startswith(f"{name}=")]
    return values[-1] if values else None


def _supervise(args: argparse.Namespace, workers: int, policy: Policy, audit: Path) -> int:
    """`run --workers N`: N worker processes on one address, each its own `run --worker-id K`."""
    confdir = _set_option(args, "confdir") or "~/.mitmproxy"
    try:
        ensure_ca(Path(confdir))
        held, port = reserve_port(args.listen_host, args.listen_port)
    except OSError as e:
        print(
            f"optout-proxy run: cannot listen on {args.listen_host}:{args.listen_port}: {e}", file=sys.stderr
        )
        return ExitStatus.INVALID
    metrics = _set_option(args, "optout_metrics") or ""

    def command(k: int) -> list[str]:
        argv = [sys.executable, "-m", "proxy", "run", "--policy", args.policy, "--listen-host",
                args.listen_host, "--listen-port", str(port), "--worker-id", str(k)]  # fmt: skip
        if args.mode:
            argv += ["--mode", args.mode]
        if args.audit:
            argv += ["--audit", args.audit]
        if _set_option(args, "optout_fleet_size") is None:
            argv += ["--set", f"optout_fleet_size={workers}"]
        if metrics:
            # A port the system has free now, chosen again at every (re)start: a fixed one could
            # be taken by anything on the machine, and the worker would fail to start for ever.
            worker_ports[k] = free_local_port()
        for option in args.options:
            if option.startswith("optout_metrics=") and metrics:
                option = f"optout_metrics=127.0.0.1:{worker_ports[k]}"  # merged by the supervisor
            argv += ["--set", option]
        return argv

    worker_ports: dict[int, int] = {}  # read by the merged endpoint at every scrape
    merged = None
    if metrics:
        try:
            merged = serve_merged_metrics(metrics, worker_ports)
        except (OSError, ValueError) as e:
            print(f"optout-proxy run: cannot serve metrics on {metrics}: {e}", file=sys.stderr)
            return ExitStatus.INVALID
    shown = metrics if ":" in metrics else f"127.0.0.1:{metrics}"
    print(
        f"optout-proxy {__version__}: {workers} workers on {args.listen_host}:{port}, policy {args.policy} "
        f"(sha256 {policy.digest[:12]}), audit logs {worker_log(audit, 1).name} ... in {audit.parent}"
        + (f", metrics of all workers at http://{shown}/metrics" if metrics else ""),
        file=sys.stderr,
    )

    def checkpoint() -> None:
        write_fleet_checkpoint(audit, list(range(1, workers + 1)))

    try:
        return Supervisor(command, workers, tick=checkpoint).run()
    finally:
        held.close()
        if merged is not None:
            merged.shutdown()


# -- check -----------------------------------------------------------------


def _finding_line(finding: Finding, deciding: bool) -> str:
    mark = "=>" if deciding else "  "
    parts = [f"{mark} {finding.signal:<11} {finding.says!s:<11} {finding.detail}"]
    if finding.line is not None:
        parts.append(f"(line {finding.line})")
    if finding.agent:
        parts.append(f"[group {finding.agent}]")
    text = " ".join(parts)
    doc = finding.document
    if doc is not None:
        status = doc.status if doc.status is not None else (doc.error or "no answer")
        digest = f", sha256 {doc.sha256[:16]}" if doc.sha256 else ""
        text += f"\n      {doc.url} ({status}{digest}, fetched {doc.fetched_at})"
    if finding.entry is not None:
        text += f"\n      {finding.entry['file']}:{finding.entry['line']} source {finding.entry['source']}"
    return text


def explain(decision: Decision, url: str) -> str:
    """The human-readable explanation `check` prints."""
    verdict = decision.verdict.value.upper()
    if decision.verdict is Verdict.BLOCK and not decision.enforced:
        verdict += " (monitor: would block, forwarded)"
    lines = [f"{verdict}  {url}"]
    if decision.signal:
        lines.append(f"signal: {decision.signal}")
    lines.append(f"reason: {decision.reason}")
    lines.append(f"findings ({len(decision.findings)}):")
    for finding in decision.findings:
        lines.append(_finding_line(finding, finding is decision.deciding))
    lines.append(f"policy sha256: {decision.policy_sha256}")
    return "\n".join(lines)


async def check_url(
    url: str,
    policy: Policy,
    *,
    timeout: float,
    verify: bool = True,
    ca_file: str | None = None,
    body_cap: int = DEFAULT_BODY_CAP,
) -> Decision:
    """Decide `url` as the proxy would: its policy documents first, then (if those allow)
    the response itself, fetched here, with every finding of both phases."""
    origin = Origin.from_url(url)
    client = make_client(
        timeout=timeout,
        verify=verify,
        ca_file=ca_file,
        agent=policy.agent,
    )
    async with client:
        docs_seen: list[OriginDocuments] = []

        async def documents(o: Origin) -> OriginDocuments:
            docs, _ = await load_origin(
                client, o, None, total_timeout=answer_deadline(timeout), unreachable_retry=0
            )
            docs_seen.append(docs)
            return docs

        async def get_license(target: str) -> OptionalDoc:
            return await fetch_license(client, target, total_timeout=answer_deadline(timeout))

        path = path_and_query(url)
        before = await assess(policy, origin, path, [origin.host], documents)
        if before.verdict is Verdict.BLOCK:
            return before  # never fetch what the policy documents already reserve
        tdm_file = docs_seen[0].tdm_file(path, policy) if docs_seen else None
        found = list(before.findings)
        async with client.stream("GET", url) as response:
            view = ResponseView(url, response.status_code, tuple(response.headers.multi_items()))
            declared = body_kind(view.values("content-type"), policy)
            document = Document(url, view.status, None, utc_now())
            found += await header_findings(
                view, policy, document, tdm_file, get_license, body_follows=bool(declared)
            )
            if reads_bodies(policy):
                body = bytearray()
                async for chunk in response.aiter_bytes():  # decoded as the crawler's client would
                    body += chunk
                    if len(body) > body_cap:
                        break
                kinds = body_kind(view.values("content-type"), policy, bytes(body[:2048]))
                if kinds:
                    document = Document(
                        url, view.status, hashlib.sha256(body).hexdigest(), document.fetched_at
                    )
                    found += await body_findings(
                        view, bytes(body[:body_cap]), kinds, policy, document, tdm_file, get_license
                    )
        return decide(found, policy)


def _check(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.policy)
    if policy is None:
        return ExitStatus.INVALID
    if args.agent:
        policy = dataclasses.replace(policy, agent=args.agent)
    try:
        Origin.from_url(args.url)
    except ValueError as e:
        print(f"optout-proxy check: {e}", file=sys.stderr)
        return ExitStatus.INVALID
    print(f"checking {args.url} as {policy.agent} ...", file=sys.stderr)
    decision = asyncio.run(
        check_url(args.url, policy, timeout=args.timeout, verify=not args.insecure, ca_file=args.ca_file)
    )
    if args.json:
        record: dict[str, Any] = record_for(
            decision,
            record_id=new_id(),
            ts=utc_now(),
            method="GET",
            url=args.url,
            host=Origin.from_url(args.url).host,
            agent=policy.agent,
            phase="check",
            status=None,
            policy_path=str(policy.path),
        )
        print(json.dumps(record, ensure_ascii=False, indent=2))
    else:
        print(explain(decision, args.url))
    return ExitStatus.BLOCKED if decision.verdict is Verdict.BLOCK else ExitStatus.OK


# -- audit -----------------------------------------------------------------


class _Progress:
    """Progress on stderr, only when it is a terminal, at most a few times a second."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def __bool__(self) -> bool:
        return self.enabled  # a reader skips its byte counting when nobody watches

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.25 and done < total):
            return
        self.last = now
        pct = 100 * done / total if total else 100
        print(
            f"\r{self.what}: {pct:5.1f}% ({done / 1e6:.0f} of {total / 1e6:.0f} MB)", end="", file=sys.stderr
        )
        if done >= total:
            print(file=sys.stderr)


def _log_path(args: argparse.Namespace) -> Path | None:
    explicit = getattr(args, "log", None) or getattr(args, "path", None)
    if explicit:
        return Path(explicit)
    policy = _load_or_report(args.policy)
    return policy.audit.path if policy is not None else None


def _filter(args: argparse.Namespace) -> Filter:
    """The filter the options ask for; ValueError (with an example of what works) for one that could
    only ever match nothing by mistake: an unreadable time, an unknown signal."""
    return Filter(
        host=args.host, signal=check_signal(args.signal) if args.signal else None, decision=args.decision,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until) if args.until else None, agent=args.agent,
    )  # fmt: skip


def _show(path: Path, record_id: str) -> int:
    record = find_record(path, record_id)
    if record is None:
        print(f"optout-proxy audit show: no record {record_id} in {path}", file=sys.stderr)
        return ExitStatus.INVALID
    store = EvidenceStore(store_dir(path))
    print(f"record {record.get('id')}  (seq {record.get('seq')}, {record.get('phase')})")
    _, digest = seal({k: v for k, v in record.items() if k != "hash"})
    if digest != record.get("hash"):
        # Its own hash is cheap to check; the chain around it is `audit verify`'s.
        print(f"  WARNING: this record was edited: its content does not match its hash {record.get('hash')}")
        edited = True
    else:
        edited = False
    for key in ("ts", "method", "url", "agent", "user_agent", "decision", "enforced", "signal", "status",
                "reason", "policy", "policy_sha256", "request_id", "inspected", "withheld"):  # fmt: skip
        if record.get(key) is not None:
            print(f"  {key + ':':<15} {record[key]}")
    print("evidence:")
    for i, f in enumerate(record.get("evidence") or []):
        mark = "=>" if i == record.get("deciding") else "  "
        line = f" (line {f['line']})" if f.get("line") is not None else ""
        group = f" [group {f['agent']}]" if f.get("agent") else ""
        print(f"{mark} [{i}] {f.get('signal')} {f.get('says')}: {f.get('detail')}{line}{group}")
        doc = f.get("document") or {}
        if doc:
            print(f"       {doc.get('url')} status {doc.get('status')} fetched {doc.get('fetched_at')}"
                  + (f" sha256 {doc['sha256']}" if doc.get("sha256") else ""))  # fmt: skip
        if f.get("entry"):
            e = f["entry"]
            print(
                f"       registry {e.get('file')}:{e.get('line')} holder {e.get('holder')}; "
                f"source {e.get('source')}"
            )
        if i == record.get("deciding") and doc.get("sha256"):
            _print_document(store, doc["sha256"], f.get("line"))
    if record.get("response_headers_sha256"):
        print("response headers (as received):")
        _print_document(store, record["response_headers_sha256"], None)
    return ExitStatus.BLOCKED if edited else ExitStatus.OK


def _print_document(store: EvidenceStore, sha: str, line: int | None, context: int = 5) -> None:
    excerpt = store.excerpt(sha, line, context=context, head=40)
    if excerpt is None:
        print(f"       (document {sha[:16]}... is not in the evidence store {store.root})")
        return
    shown, more = excerpt
    for n, text in shown:
        print(f"    {'>>' if n == line else '  '} {n:>5} | {text[:200]}")
    if more:
        print(f"             ... {more} more lines")


class _Skipped:
    """Lines the reading commands skip, each reported on stderr as `file:line: why` (the first few)."""

    SHOWN = 20

    def __init__(self) -> None:
        self.count = 0
        self.agents: set[str] | None = None  # every record's agent, when an --agent filter is checked

    def __call__(self, problem: str) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            print(f"optout-proxy audit: {problem}", file=sys.stderr)

    def close(self) -> None:
        if self.count > self.SHOWN:
            print(f"optout-proxy audit: ... {self.count - self.SHOWN} more lines skipped", file=sys.stderr)
        if self.count:
            print(
                f"optout-proxy audit: {self.count} line(s) are not records and were skipped; "
                "`optout-proxy audit verify` tells whether the chain is intact",
                file=sys.stderr,
            )


def _tail(path: Path, args: argparse.Namespace, skipped: _Skipped) -> int:
    flt = _filter(args)
    if not logs_at(path):
        raise AuditError(f"no audit log at {path}")
    follower = Tail(path, skipped)
    last: deque[str] = deque(maxlen=max(0, args.n))
    for r in follower.poll():
        if not args.follow and skipped.agents is not None:  # a followed log may yet show the agent
            skipped.agents.add(str(r.get("agent")))
        if flt.keeps(r):
            last.append(one_line(r))
    for line in last:
        print(line)
    if not args.follow:
        return ExitStatus.OK
    sys.stdout.flush()
    try:
        while True:
            time.sleep(args.interval)
            for r in follower.poll():
                if flt.keeps(r):
                    print(one_line(r), flush=True)
    except KeyboardInterrupt:
        return ExitStatus.OK


def _audit(args: argparse.Namespace) -> int:
    path = _log_path(args)
    if path is None:
        return ExitStatus.INVALID
    skipped = _Skipped()
    if getattr(args, "agent", None):
        skipped.agents = set()
    try:
        status = _audit_command(args, path, skipped)
        if status == ExitStatus.OK and getattr(args, "agent", None) and skipped.agents:
            check_agent(args.agent, skipped.agents)  # after the fact: the log itself says which exist
        return status
    except (AuditError, ValueError, OSError) as e:
        print(f"optout-proxy audit {args.audit_command}: {e}", file=sys.stderr)
        return ExitStatus.INVALID
    finally:
        skipped.close()


def _export_warc(path: Path, args: argparse.Namespace, skipped: _Skipped) -> int:
    """The evidence of the selected records as a WARC file (proxy.warc)."""
    if not args.out:
        print(
            "optout-proxy audit export: --format warc writes a file: give --out FILE.warc.gz", file=sys.stderr
        )
        return ExitStatus.INVALID
    flt = _filter(args)
    passes = iter((skipped, lambda _problem: None))  # the second pass reads the same lines: report once

    def selected() -> Iterator[dict[str, Any]]:
        return records(path, flt, _Progress("exporting"), next(passes), skipped.agents)

    with open(args.out, "wb") as out:
        done = write_warc(
            out, selected, EvidenceStore(store_dir(path)), log=path, filtered=flt.describe(),
            gzip=not args.out.endswith(".warc"),
        )  # fmt: skip
    missing = f"; {done.missing} cited document(s) not in the evidence store" if done.missing else ""
    print(
        f"wrote {args.out}: {done.decisions} decision(s), {done.documents} document(s){missing}",
        file=sys.stderr,
    )
    return ExitStatus.OK


def _anchors(given: Sequence[str]) -> dict[int, str]:
    """`--expect-head SEQ:HASH` values; raises ValueError for one that is not."""
    out: dict[int, str] = {}
    for value in given:
        seq, _, head = value.partition(":")
        if not seq.isdigit() or len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
            raise ValueError(
                f"--expect-head {value!r}: give SEQ:HASH, a checkpoint's seq and head (64 hex digits)"
            )
        out[int(seq)] = head
    return out


def _verify_one(path: Path, anchors: dict[int, str] | None = None) -> bool:
    """Verify one chain and print the verdict; True if intact."""
    report = verify_chain(path, anchors)
    for repair in report.repairs:
        # A repair is chained like any record: written by the proxy, not an edit.
        print(f"{repair} (a repair, not tampering)")
    if report.ok:
        print(f"{path}: chain intact: {report.records} records in {len(report.files)} file(s), "
              f"{report.checkpoints} checkpoint(s); head {report.head}")  # fmt: skip
        # A proxy stopped before its first checkpoint leaves none; so does one whose checkpoints
        # file was removed: either way, records cut from the end go unseen.
        for warning in _chain_warnings([report]):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        return True
    print(f"{report.where}: {report.problem}")
    print(f"{path}: chain BROKEN; records before {report.where} verified ({report.records})", file=sys.stderr)
    return False


def _chains(path: Path) -> list[VerifyReport]:
    """The verification of each log at `path` (one per worker); a log that cannot be read is left out."""
    chains: list[VerifyReport] = []
    for log in logs_at(path):
        with contextlib.suppress(AuditError):
            chains.append(verify_chain(log))
    return chains


def _chain_said(args: argparse.Namespace, path: Path, out: TextIO) -> int:
    """After `summary` or `export`: walk the chain and say whether what was read can be trusted.

    Figures and rows from a log whose chain is broken include records that may
    have been edited, added or put back; that is said, and the exit status is 1.
    What verify only warns about (no checkpoints, time going backwards, worker
    logs no fleet checkpoint binds) is said too.
    """
    if args.no_verify:
        print(f"{path}: chain not verified (--no-verify)", file=out)
        return ExitStatus.OK
    chains = _chains(path)
    _, fleet_problems, fleet_warnings = verify_fleet(path)
    broken = next((c for c in chains if not c.ok), None)
    if broken is not None or fleet_problems:
        where, problem = (broken.where, broken.problem) if broken else ("", fleet_problems[0])
        print(f"{path}: chain BROKEN{f' at {where}' if where else ''}: {problem}; the records from there on "
              "cannot be trusted and are included above (`optout-proxy audit verify` for every log)",
              file=out)  # fmt: skip
        return ExitStatus.BLOCKED
    many = f" ({len(chains)} chains, one per worker)" if len(chains) > 1 else ""
    print(f"{path}: chain intact{many}: {sum(c.records for c in chains)} records, "
          f"{sum(c.checkpoints for c in chains)} checkpoint(s)", file=out)  # fmt: skip
    for warning in _chain_warnings(chains) + fleet_warnings:
        print(f"{path}: warning: {warning}", file=out)
    return ExitStatus.OK


def _chain_warnings(chains: Sequence[VerifyReport]) -> list[str]:
    """What an intact chain still leaves open, one line each."""
    out = []
    for c in chains:
        name = c.files[-1] if c.files else "?"
        if c.records and not c.checkpoints:
            out.append(f"{name}: no checkpoints, so records removed from the end cannot be found; "
                       "compare the head with one kept elsewhere")  # fmt: skip
        if c.backwards:
            out.append(f"time goes backwards at {c.backwards}: counts by time may be off")
    return out


def _audit_command(args: argparse.Namespace, path: Path, skipped: _Skipped) -> int:
    if args.audit_command == "verify":
        logs = logs_at(path) or [path]  # [path]: verify says there is no log there
        anchors = _anchors(args.expect_head)
        if anchors and len(logs) > 1:
            raise ValueError("--expect-head names one chain's head: give the log of one worker")
        broken = 0
        for log in logs:  # one chain per worker: each verified on its own, each named
            broken += not _verify_one(log, anchors)
        if len(logs) > 1:
            print(f"{path}: {len(logs)} chains, {len(logs) - broken} intact, {broken} broken")
        checked, problems, warnings = verify_fleet(path)
        for problem in problems:
            print(problem)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if checked:
            verdict = "bind the workers' chains" if not problems else f"BROKEN ({len(problems)} problem(s))"
            print(f"{path}: {checked} fleet checkpoint(s) {verdict}")
        return ExitStatus.BLOCKED if broken or problems else ExitStatus.OK
    if args.audit_command == "new-chain":
        first, old = start_new_chain(path, Path(args.archive))
        print(f"{args.archive}: the old log, {old.records} verified record(s), chain "
              f"{'intact' if old.ok else f'BROKEN at {old.where}: {old.problem}'}")  # fmt: skip
        print(f"{path}: a new chain; its first record {first['id']} points at head {old.head}")
        return ExitStatus.OK
    if args.audit_command == "show":
        return _show(path, args.id)
    if args.audit_command == "tail":
        return _tail(path, args, skipped)
    if args.audit_command == "summary":
        s = summarize(records(path, _filter(args), _Progress("reading"), skipped, skipped.agents), args.by)
        print(format_summary(s, args.top))
        return _chain_said(args, path, sys.stdout)
    if args.audit_command == "export" and args.format == "warc":
        status = _export_warc(path, args, skipped)
        return status if status != ExitStatus.OK else _chain_said(args, path, sys.stderr)
    if args.audit_command == "export":
        recs = records(path, _filter(args), _Progress("exporting"), skipped, skipped.agents)
        if args.out:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                n = export(recs, args.format, out)
        else:
            n = export(recs, args.format, sys.stdout)
        print(f"exported {n} records", file=sys.stderr)
        return _chain_said(args, path, sys.stderr)
    if args.audit_command == "report":
        flt = _filter(args)
        data = gather(records(path, flt, _Progress("reading"), skipped, skipped.agents))
        chains = _chains(path)
        page = render(data, chains, path, EvidenceStore(store_dir(path)), utc_now(), flt.describe())
        Path(args.out).write_text(page, encoding="utf-8")
        print(
            f"wrote {args.out}: {outcome_line(data.summary)}",
            file=sys.stderr,
        )
        cut = next((c for c in chains if not c.ok), None)
        if cut is not None:
            print(f"{path}: chain BROKEN at {cut.where}: {cut.problem} (the report says so too)",
                  file=sys.stderr)  # fmt: skip
            return ExitStatus.BLOCKED
        for warning in _chain_warnings(chains):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        return ExitStatus.OK
    raise AssertionError(args.audit_command)


# -- fleet -----------------------------------------------------------------


def _fleet(args: argparse.Namespace) -> int:
    """`fleet status`: the workers Redis has heard from, with the policy each enforces."""
    url = args.redis
    if not url:
        policy = _load_or_report(args.policy)
        if policy is None:
            return ExitStatus.INVALID
        if policy.shared_state == "memory":
            print(
                f"optout-proxy fleet: {policy.path} keeps its state in memory (shared_state: memory): "
                "there is no fleet view; set shared_state to a Redis URL, or give --redis",
                file=sys.stderr,
            )
            return ExitStatus.INVALID
        url = policy.shared_state
    try:
        workers = asyncio.run(fleet_workers(url))
    except Exception as e:
        print(f"optout-proxy fleet: cannot read {url}: {e}", file=sys.stderr)
        return ExitStatus.INVALID
    if args.json:
        print(json.dumps(workers, indent=2))
        return ExitStatus.OK
    now = time.time()
    policies = {w.get("policy_sha256") for w in workers}
    print(f"{len(workers)} worker(s) seen in the last 30 s at {url}; {len(policies)} policy version(s)")
    print(f"{'worker':<28} {'policy':<13} {'req/s':>8} {'requests':>10} {'shared':>7} {'seen':>6}")
    for w in workers:
        sha = str(w.get("policy_sha256") or "-")[:12]
        print(f"{w['id']:<28} {sha:<13} {w.get('requests_per_s', 0):>8} {w.get('requests', 0):>10} "
              f"{w.get('shared_state', '-'):>7} {now - float(w.get('seen', now)):>5.0f}s")  # fmt: skip
    if len(policies) > 1:
        print(
            "workers enforce different policies: a reload is still spreading, or a file differs",
            file=sys.stderr,
        )
    return ExitStatus.OK


# -- policy validate -------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(Path(args.path))
    except PolicyError as e:
        _print_problems(e, sys.stdout)
        print(f"{args.path}: invalid ({len(e.problems)} problem(s))", file=sys.stderr)
        return ExitStatus.INVALID
    unwritable = writable_problem(policy.audit.path)
    if unwritable is not None:
        print(f"{policy.path}: audit.path: {unwritable}; the proxy would refuse to start", file=sys.stdout)
        print(f"{args.path}: invalid (1 problem(s))", file=sys.stderr)
        return ExitStatus.INVALID
    print(
        f"{args.path}: valid (sha256 {policy.digest[:12]}; agent {policy.agent}; "
        f"{len(policy.honor_agents)} honored agents; {len(policy.registry)} registry entries "
        f"covering {policy.registry.domain_count} domains)",
        file=sys.stderr,
    )
    return ExitStatus.OK


def _policy_edit(args: argparse.Namespace) -> int:
    try:
        if args.policy_command == "diff":
            old, new = load_policy(Path(args.old)), load_policy(Path(args.new))
            urls = [
                u.strip()
                for u in Path(args.urls).read_text().splitlines()
                if u.strip() and not u.startswith("#")
            ]
            print(f"judging {len(urls)} URLs under both policies ...", file=sys.stderr)
            changes, bad = asyncio.run(diff(old, new, urls, timeout=args.timeout))
            for change in changes:
                print(change.describe())
            for url in bad:
                print(f"{url}: not an absolute http(s) URL", file=sys.stderr)
            print(f"{len(changes)} of {len(urls)} decisions change", file=sys.stderr)
            return ExitStatus.BLOCKED if changes else ExitStatus.OK
        policy = load_policy(Path(args.policy))
        if args.policy_command == "import" and args.robots_json:
            tokens = tokens_from_robots_json(Path(args.robots_json).read_text(encoding="utf-8"), args.match)
            new_tokens, skipped = add_honor_agents(policy.path, tokens)
            listed = ", ".join(new_tokens) or "-"
            print(f"{policy.path}: added {len(new_tokens)} token(s) to honor_agents: {listed}")
            if skipped:
                print(
                    f"skipped {len(skipped)} that are not product tokens: {', '.join(skipped)}",
                    file=sys.stderr,
                )
            return ExitStatus.OK
        target = registry_file(policy, args.registry)
        if args.policy_command == "import":
            csv_path = Path(args.csv)
            try:  # a BOM (a spreadsheet's export) is not part of the first column's name
                csv_text = csv_path.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as bad:
                raise ValueError(f"{csv_path}: not UTF-8 text ({bad}); save it as UTF-8") from bad
            entries = entries_from_csv(csv_text, csv_path, policy.registry.entries)
            added = add_entries(target, entries, policy)
            print(f"{target}: added {added} of {len(entries)} entries ({len(entries) - added} already there)")
            return ExitStatus.OK
        if args.registry_command == "add":
            entry = make_entry(args.holder, args.domain, args.path, args.reason, args.source, args.since)
            added = add_entries(target, [entry], policy)
            print(f"{target}: {'added' if added else 'already lists'} {args.holder}")
            return ExitStatus.OK
        if args.registry_command == "remove":
            for removed in remove_entries(target, holder=args.holder, domain=args.domain):
                print(f"{target}: {removed}")
            return ExitStatus.OK
        for e in policy.registry.entries:
            paths = f" paths {', '.join(e.paths)}" if e.paths else ""
            print(
                f"{e.holder}: {', '.join(e.domains)}{paths} (since {e.since}; {Path(e.file).name}:{e.line})"
            )
        return ExitStatus.OK
    except PolicyError as e:
        _print_problems(e, sys.stderr)
        if args.policy_command != "diff":
            print("nothing was written", file=sys.stderr)
        return ExitStatus.INVALID
    except (OSError, ValueError, YAMLError) as e:
        print(f"optout-proxy policy {args.policy_command}: {e}", file=sys.stderr)
        return ExitStatus.INVALID


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (sys.exit happens in entrypoint only)."""
    args = _parser().parse_args(argv)
    if not _resolve_policy(args):
        return ExitStatus.INVALID
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        return _check(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "fleet":
        return _fleet(args)
    if args.command == "policy" and args.policy_command == "validate":
        return _validate(args)
    if args.command == "policy":
        return _policy_edit(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse requires one


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())
