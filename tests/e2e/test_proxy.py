"""End to end: real origins on 127.0.0.1, a real mitmdump with our addon, real requests."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess, run_mitmdump_expecting_exit
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private\n\nUser-agent: GPTBot\nDisallow: /no-ai/\n"


def client(proxy: ProxyProcess, **kw: object) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=20, trust_env=False, **kw)  # type: ignore[arg-type]


def content_site(make_site: Callable[..., Site], robots: str = ROBOTS, *, tls: bool = False) -> Site:
    return make_site(
        {
            "/robots.txt": Reply(200, robots),
            "/": Reply(200, "home"),
            "/page": Reply(200, "page"),
            "/private/x": Reply(200, "secret"),
            "/no-ai/x": Reply(200, "no ai please"),
        },
        tls=tls,
    )


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_policy(
        tmp_path,
        registry=[
            entry("Studio Example", "holder.test"),
            entry("Paths Inc", "paths.test", paths=["/manga/"]),
        ],
    )


def test_http_allow_block_and_audit_match_the_response(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site)
    proxy = make_proxy(policy)
    with client(proxy) as c:
        ok = c.get(site.url("/page"))
        private = c.get(site.url("/private/x"))
        no_ai = c.get(site.url("/no-ai/x"))
        robots = c.get(site.url("/robots.txt"))
    assert (ok.status_code, ok.text) == (200, "page")
    assert private.status_code == 451 and private.headers["X-Optout-Reason"] == "robots-txt"
    assert "secret" not in private.text
    assert "Disallow: /private (line 2)" in private.text
    assert site.url("/robots.txt") in private.text
    # honor_agents: the GPTBot group binds us too
    assert no_ai.status_code == 451 and "Disallow: /no-ai/ (line 5)" in no_ai.text
    assert robots.status_code == 200
    assert site.hits["/private/x"] == 0 and site.hits["/no-ai/x"] == 0
    assert site.hits["/robots.txt"] == 2  # one policy fetch + the crawler's own request

    # every response names its audit record, and the record says what the crawler got
    for response, decision, signal, status in [
        (ok, "allow", None, None),
        (private, "block", "robots-txt", 451),
        (no_ai, "block", "robots-txt", 451),
    ]:
        record = proxy.record(response.headers["X-Optout-Id"])
        assert (record["decision"], record["signal"], record["status"], record["enforced"]) == (
            decision,
            signal,
            status,
            True,
        )
        assert record["url"] == str(response.request.url)
        assert record["method"] == "GET" and record["agent"] == "ExampleBot"
        assert len(record["policy_sha256"]) == 64
        assert record["ts"].endswith("Z")
    rec = proxy.record(no_ai.headers["X-Optout-Id"])
    deciding = rec["evidence"][rec["deciding"]]
    assert deciding["agent"] == "GPTBot" and deciding["line"] == 5
    assert deciding["document"]["status"] == 200
    assert deciding["document"]["url"] == site.url("/robots.txt")
    assert len(deciding["document"]["sha256"]) == 64


def test_https_through_tls_interception(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site, tls=True)
    proxy = make_proxy(policy)
    with client(proxy) as c:
        ok = c.get(site.url("/page", host="localhost"))
        blocked = c.get(site.url("/private/x", host="localhost"))
    assert (ok.status_code, ok.text) == (200, "page")
    assert blocked.status_code == 451 and blocked.headers["X-Optout-Reason"] == "robots-txt"
    assert site.hits["/private/x"] == 0
    rec = proxy.record(blocked.headers["X-Optout-Id"])
    assert rec["url"].startswith("https://localhost:")
    assert rec["evidence"][rec["deciding"]]["document"]["url"].startswith("https://localhost:")


def test_ssl_insecure_lets_policy_fetches_skip_verification(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site, tls=True)
    # No trusted CA for the origin: only ssl_insecure lets mitmproxy and our fetches through.
    proxy = make_proxy(policy, ssl_verify_upstream_trusted_ca=None, ssl_insecure="true")
    with client(proxy) as c:
        blocked = c.get(site.url("/private/x", host="localhost"))
        ok = c.get(site.url("/page", host="localhost"))
    assert blocked.status_code == 451 and blocked.headers["X-Optout-Reason"] == "robots-txt"
    assert ok.status_code == 200


def test_registry_blocks_before_any_contact(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site)
    proxy = make_proxy(policy)
    with client(proxy) as c:
        responses = {
            url: c.get(url)
            for url in [
                f"http://holder.test:{site.port}/",
                f"http://WWW.Holder.Test.:{site.port}/a",
                "http://deep.sub.holder.test/x",
                "http://paths.test/manga/1",
            ]
        }
        # the target is an address, but the Host header names the holder
        spoofed = c.get(site.url("/page"), headers={"Host": "cdn.holder.test"})
        # not covered by the registry, so robots.txt is consulted: the name does not resolve
        outside = c.get("http://paths.test:1/sports")
    for url, r in responses.items():
        assert r.status_code == 451, url
        assert r.headers["X-Optout-Reason"] == "registry"
        assert "Studio Example" in r.text or "Paths Inc" in r.text
        # the crawler learns the registry's name and line and the letter's source, never a local path
        assert str(policy.parent) not in r.text and "entry: " in r.text and "source: " in r.text
    assert spoofed.status_code == 451 and spoofed.headers["X-Optout-Reason"] == "registry"
    assert outside.headers["X-Optout-Reason"] == "unreachable"
    assert site.hits["/robots.txt"] == 0 and site.hits["/page"] == 0
    rec = proxy.record(spoofed.headers["X-Optout-Id"])
    ev = rec["evidence"][rec["deciding"]]
    assert ev["signal"] == "registry" and ev["entry"]["holder"] == "Studio Example"
    assert ev["entry"]["source"] == "https://example.org/letter"


def test_monitor_mode_forwards_and_logs(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = content_site(make_site)
    proxy = make_proxy(write_policy(tmp_path, mode="monitor"))
    with client(proxy) as c:
        r = c.get(site.url("/private/x"))
    assert (r.status_code, r.text) == (200, "secret")
    rec = proxy.record(r.headers["X-Optout-Id"])
    assert (rec["decision"], rec["enforced"], rec["signal"], rec["status"]) == (
        "block",
        False,
        "robots-txt",
        None,
    )


def test_mode_option_overrides_the_policy(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site)
    proxy = make_proxy(policy, optout_mode="monitor")
    with client(proxy) as c:
        assert c.get(site.url("/private/x")).status_code == 200


@pytest.mark.parametrize(
    ("robots", "expected_status", "reason"),
    [
        (Reply(503, "down"), 451, "unreachable"),
        (Reply(429, "slow down"), 451, "unreachable"),
        (Reply(404, "none"), 200, None),
        (Reply(403, "no"), 200, None),
    ],
)
def test_robots_failure_semantics_through_the_proxy(
    make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess],
    policy: Path,
    robots: Reply,
    expected_status: int,
    reason: str | None,
) -> None:
    site = make_site({"/robots.txt": robots, "/page": Reply(200, "page")})
    proxy = make_proxy(policy)
    with client(proxy) as c:
        r = c.get(site.url("/page"))
    assert r.status_code == expected_status
    assert r.headers.get("X-Optout-Reason") == reason
    assert site.hits["/page"] == (1 if expected_status == 200 else 0)


def test_hanging_robots_blocks_after_the_timeout(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    release = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        release.wait(20)

    site = make_site({"/robots.txt": hang, "/page": Reply(200, "page")})
    proxy = make_proxy(policy, optout_fetch_timeout=1)
    try:
        with client(proxy) as c:
            r = c.get(site.url("/page"))
    finally:
        release.set()
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "unreachable"
    assert proxy.wait_for_log("unreachable")


async def test_burst_causes_one_robots_fetch_and_other_origins_are_not_held(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    release = threading.Event()

    def slow_robots(handler: BaseHTTPRequestHandler) -> None:
        release.wait(20)  # held until the other origin has been served
        body = b"User-agent: *\nDisallow: /private\n"
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    busy = make_site({"/robots.txt": slow_robots, "/page": Reply(200, "page"), "/private/x": Reply(200, "s")})
    other = content_site(make_site)
    proxy = make_proxy(policy, optout_fetch_timeout=15)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(proxy=proxy.url, timeout=30, limits=limits, trust_env=False) as c:
        burst = [asyncio.create_task(c.get(busy.url("/page" if i % 2 else "/private/x"))) for i in range(100)]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in burst)
        # While the busy origin's robots.txt is in flight, another origin is served.
        r = await c.get(other.url("/page"))
        assert r.status_code == 200
        assert not any(t.done() for t in burst)
        release.set()
        results = await asyncio.gather(*burst)
    assert busy.hits["/robots.txt"] == 1
    assert sorted({x.status_code for x in results}) == [200, 451]
    assert sum(x.status_code == 451 for x in results) == 50


def test_invalid_policy_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: ExampleBot\nmode: enforc\n")
    confdir = tmp_path / "conf"
    confdir.mkdir()
    code, output = run_mitmdump_expecting_exit(bad, confdir)
    assert code != 0
    assert f"{bad}:2: mode must be one of enforce | monitor" in output


def test_an_audit_log_that_cannot_be_opened_refuses_to_start(policy: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    code, out = run_mitmdump_expecting_exit(
        policy, tmp_path / "conf", extra=["--set", f"optout_audit={blocker / 'audit.jsonl'}"]
    )
    assert code != 0
    assert "cannot create the audit lock" in out and "not-a-dir" in out


def test_audit_write_failure_answers_503(
    make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess],
    policy: Path,
) -> None:
    site = content_site(make_site)
    # The process may not grow any file past 6 kB: the audit log fills "the disk" after a few records.
    proxy = make_proxy(policy, fsize_limit=6000)
    statuses = []
    with client(proxy) as c:
        for i in range(40):
            statuses.append(c.get(site.url(f"/page?{i}")).status_code)
    assert statuses[0] == 200
    assert 503 in statuses
    first = statuses.index(503)
    assert set(statuses[first:]) == {503}  # once the log cannot grow, nothing is forwarded
    assert site.hits["/page"] == first
    assert proxy.wait_for_log("answering 503")


def test_an_exception_in_our_hook_blocks_the_request(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    site = content_site(make_site)
    proxy = make_proxy(policy, addon=Path(__file__).with_name("exploding_addon.py"))
    with client(proxy) as c:
        r = c.get(site.url("/page"))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "internal-error"
    assert site.hits["/page"] == 0
    rec = proxy.record(r.headers["X-Optout-Id"])
    assert (rec["decision"], rec["signal"], rec["status"]) == ("block", "internal-error", 451)
    assert proxy.wait_for_log("ZeroDivisionError")


def test_optout_proxy_run_on_the_shipped_policy(tmp_path: Path, make_site: Callable[..., Site]) -> None:
    """`optout-proxy run` with defaults: the README's run command, on the shipped policy."""
    import re
    import subprocess
    import sys

    from tests.proxyproc import REPO

    site = content_site(make_site)
    audit = tmp_path / "audit.jsonl"
    script = Path(sys.executable).with_name("optout-proxy")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]
    proc = subprocess.Popen(
        [*cmd, "run", "--listen-port", "0", "--audit", str(audit), "--set", f"confdir={tmp_path}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"listening at .*?:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port is not None, "".join(seen)
        assert f"optout-proxy: policy {REPO / 'policies/default.yaml'} (from the current folder)" in "".join(
            seen
        )
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=20) as c:
            ghibli = c.get("http://www.ghibli.jp/works/")
            private = c.get(site.url("/private/x"))
            ok = c.get(site.url("/page"))
        assert ghibli.status_code == 451 and "Studio Ghibli" in ghibli.text
        # The shipped policy keeps the crawler off loopback and private networks.
        assert private.status_code == 451 and private.headers["X-Optout-Reason"] == "private-address"
        assert ok.status_code == 451 and ok.headers["X-Optout-Reason"] == "private-address"
        assert site.hits == {}  # not even its robots.txt was fetched
        records = [json.loads(x) for x in audit.read_text().splitlines()]
        assert [r["decision"] for r in records] == ["block", "block", "block"]
        assert records[0]["evidence"][0]["entry"]["holder"] == "Studio Ghibli"
    finally:
        proc.terminate()
        proc.wait(10)


def test_flows_can_still_be_saved(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], policy: Path, tmp_path: Path
) -> None:
    """mitmproxy serialises flow.metadata when saving flows; ours must not break that."""
    site = content_site(make_site)
    saved = tmp_path / "flows.mitm"
    proxy = make_proxy(policy, save_stream_file=str(saved))
    with client(proxy) as c:
        assert c.get(site.url("/page")).status_code == 200
        assert c.get(site.url("/private/x")).status_code == 451
    proxy.stop()
    assert "unserializable" not in proxy.log()
    from mitmproxy.io import FlowReader

    with open(saved, "rb") as f:
        flows = list(FlowReader(f).stream())
    assert [fl.metadata["optout"]["decision"] for fl in flows] == ["allow", "block"]


@pytest.mark.parametrize("on_unreachable", ["allow", "block"])
def test_a_registry_entry_for_some_paths_leaves_the_sites_robots_txt_read(
    make_site: Callable[..., Site],
    make_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
    on_unreachable: str,
) -> None:
    """The holder owns /manga/ of a host: the rest of it is fetched and judged as usual, its
    robots.txt included (refused, it read as unreachable: `allow` lifted its Disallow)."""
    site = content_site(make_site)
    host = site.url("/").split("//")[1].split(":")[0]
    policy = write_policy(
        tmp_path, registry=[entry("Paths Inc", host, paths=["/manga/"])], on_unreachable=on_unreachable
    )
    proxy = make_proxy(policy)
    with client(proxy) as c:
        private, page, manga = (
            c.get(site.url("/private/x")),
            c.get(site.url("/page")),
            c.get(site.url("/manga/1")),
        )
    assert (private.status_code, private.headers.get("X-Optout-Reason")) == (451, "robots-txt")
    assert (page.status_code, page.text) == (200, "page")
    assert (manga.status_code, manga.headers.get("X-Optout-Reason")) == (451, "registry")
    assert site.hits["/robots.txt"] == 1
