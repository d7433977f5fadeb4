"""Our hooks in a tight loop on real mitmproxy flows: µs per hook, per page kind (thread CPU time).

    .venv/bin/python bench/hooks_micro.py [--n 3000] [--batches 7] [--kinds text,html,media]
                                          [--profile text] [--records out.jsonl]

Starts bench/throughput.py's origins (HTTP and HTTPS, the same pages and
robots.txt), loads the addon in mitmproxy's test harness with the throughput
bench's policy (`log_allowed: true`, every signal on), fetches each origin's
documents once, then drives request -> responseheaders -> response on fresh
flows shaped like the bench's: absolute-form HTTP/1 (wrk) and requests inside
a CONNECT tunnel with SNI (httpx over HTTPS). Prints the best batch's mean µs
per hook (each hook's best batch). `--profile KIND` runs cProfile over one batch of that kind;
`--records` keeps the audit log for comparison between versions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trustme
from mitmproxy import connection, http
from mitmproxy.test import taddons, tflow, tutils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import BODY, HTML, JPEG, KIND_PATH, Origin, write_bench_policy

from proxy.enforcer import Enforcer
from proxy.origin import Origin as Site

VARIED_PATHS = (
    "/",
    "/page",
    "/private",
    "/private/x?y=1",
    "/no-ai/",
    "/no-ai/a",
    "/robots.txt",
    "/robots.txt?x",
    "/a/../private",
    "/%70rivate",
    "/a//private",
    "/x%2F..%2Fprivate",
    "/a;x=1/b",
    "/\u00e9t\u00e9",
    "/page?q=%2e%2e",
    "/PRIVATE",
    "/page#frag",
)
CTYPE = {"text": b"text/plain", "html": b"text/html; charset=utf-8", "media": b"image/jpeg"}
PAYLOAD = {"text": BODY, "html": HTML, "media": JPEG}


def make_flow(scheme: str, port: int, kind: str, tunnel_id: str | None) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.response = None
    host = f"localhost:{port}".encode()
    flow.request = tutils.treq(
        host="localhost", port=port, scheme=scheme.encode(), path=KIND_PATH[kind].encode(),
        headers=http.Headers(
            ((b"host", host), (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
             (b"connection", b"keep-alive"), (b"user-agent", b"python-httpx/0.27.0"))
        ),
        content=b"",
    )  # fmt: skip
    if tunnel_id is not None:
        flow.client_conn.id = tunnel_id
        flow.client_conn.sni = "localhost"
    return flow


def make_response(kind: str) -> http.Response:
    body = PAYLOAD[kind]
    return tutils.tresp(
        headers=http.Headers(((b"content-type", CTYPE[kind]), (b"content-length", str(len(body)).encode()))),
        content=body,
    )


async def _timed(hook: Callable[[http.HTTPFlow], Awaitable[None] | None], flows: list[http.HTTPFlow]) -> int:
    """Thread CPU ns of `hook` over every flow (awaiting what it returns)."""
    started = time.thread_time_ns()
    for flow in flows:
        rest = hook(flow)
        if rest is not None:
            await rest
    return time.thread_time_ns() - started


async def batch(enforcer: Enforcer, flows: list[http.HTTPFlow], kind: str) -> list[float]:
    """Each hook over the whole batch in turn; returns CPU µs per flow for each hook."""
    out = [await _timed(enforcer.request, flows)]
    for flow in flows:
        assert flow.response is None, flow.response
        flow.response = make_response(kind)
    out.append(await _timed(enforcer.responseheaders, flows))
    out.append(await _timed(enforcer.response, flows))
    for flow in flows:
        assert flow.response is not None
        assert flow.response.status_code == 200
    return [x / len(flows) / 1000 for x in out]


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    origins = {"http": Origin(None), "https": Origin(server_ctx)}
    for o in origins.values():
        o.start()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    policy = write_bench_policy(tmp)
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(policy), ssl_verify_upstream_trusted_ca=str(ca_file))
        for scheme, o in origins.items():
            await enforcer.documents(Site.of(scheme, "localhost", o.port))
        # A tunnel as httpx opens one for HTTPS.
        tunnel = connection.Client(peername=("127.0.0.1", 5555), sockname=("127.0.0.1", 8080))
        enforcer._tunnels[tunnel.id] = "localhost"
        enforcer._own_ports = (8080,)  # as in the running proxy, where the bound ports are known
        gc.collect()
        gc.freeze()
        kinds = args.kinds.split(",")
        for kind in kinds:
            for scheme in ("http", "https"):
                port = origins[scheme].port
                tid = tunnel.id if scheme == "https" else None
                best = None
                for _ in range(args.batches):
                    flows = [make_flow(scheme, port, kind, tid) for _ in range(args.n)]
                    per = await batch(enforcer, flows, kind)
                    best = per if best is None else [min(a, b) for a, b in zip(best, per, strict=True)]
                assert best is not None
                print(
                    f"{kind:<6} {scheme:<5} request {best[0]:6.1f} µs  responseheaders {best[1]:5.1f} µs  "
                    f"response {best[2]:6.1f} µs  total {sum(best):6.1f} µs"
                )
        if args.paths:
            # Every decision kind once per scheme: allowed, disallowed, path forms, robots.txt itself.
            for scheme in ("http", "https"):
                tid = tunnel.id if scheme == "https" else None
                for path in VARIED_PATHS:
                    flow = make_flow(scheme, origins[scheme].port, "text", tid)
                    flow.request.path = path
                    r = enforcer.request(flow)
                    if r is not None:
                        await r
        if args.profile:
            kind, scheme = args.profile.split(":") if ":" in args.profile else (args.profile, "http")
            port = origins[scheme].port
            tid = tunnel.id if scheme == "https" else None
            flows = [make_flow(scheme, port, kind, tid) for _ in range(args.n)]
            prof = cProfile.Profile()
            prof.enable()
            await batch(enforcer, flows, kind)
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("tottime").print_stats(35)
            stats.sort_stats("cumulative").print_stats(45)
        enforcer.audit.release()  # type: ignore[union-attr]
    if args.records:
        shutil.copy(tmp / "audit.jsonl", args.records)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--kinds", default="text,html,media")
    parser.add_argument("--profile", default="", help="KIND[:SCHEME] to run under cProfile")
    parser.add_argument("--paths", action="store_true", help="also decide a set of varied paths")
    parser.add_argument("--records", default="", help="copy the audit log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
