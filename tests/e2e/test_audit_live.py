"""A real proxy writing its audit log under concurrent load, while the tests rotate,
reload and tamper; the CLI run as a subprocess; metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from proxy.audit import log_files
from tests.bursts import burst
from tests.engines import free_port
from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private/\n"


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("optout-proxy")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of a subprocess's output, or "" after `timeout` seconds (never hangs the suite)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


async def load(proxy: ProxyProcess, urls: list[str], concurrency: int = 20) -> list[httpx.Response]:
    return await burst(proxy.url, urls, concurrency, timeout=30)


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site({
        "/robots.txt": Reply(200, ROBOTS),
        **{f"/page/{i}": Reply(200, f"page {i}") for i in range(50)},
        **{f"/private/{i}": Reply(200, "secret") for i in range(50)},
        "/noai": Reply(200, "fetched, then withheld", {"X-Robots-Tag": "noai"}),
    })  # fmt: skip


def test_rotation_under_load_loses_nothing_and_verifies(
    site: Site, make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path)
    proxy = make_proxy(policy, optout_audit_max_bytes=30_000, optout_audit_checkpoint_every=25)
    urls = [site.url(f"/page/{i % 50}") if i % 3 else site.url(f"/private/{i % 50}") for i in range(600)]

    async def load_while_reloading() -> list[httpx.Response]:
        first = asyncio.create_task(load(proxy, urls[:300]))
        await asyncio.sleep(0.3)
        # A policy change lands in the middle of the load (it changes no decision here).
        text = policy.read_text().replace("honor_agents:", "# edited under load\nhonor_agents:")
        await asyncio.to_thread(policy.write_text, text)
        done = await first
        await asyncio.sleep(1.5)  # past the reload interval
        return done + await load(proxy, urls[300:])

    responses = asyncio.run(load_while_reloading())
    assert proxy.audit is not None
    assert proxy.wait_for_log("policy reloaded")
    files = log_files(proxy.audit)
    assert len(files) > 3, "the load should have rotated the log several times"
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    ids = {r["id"] for r in records}
    assert all(r.headers["X-Optout-Id"] in ids for r in responses)  # every answer has its record
    assert (
        sum(r.status_code == 451 for r in responses) == sum(r["decision"] == "block" for r in records) == 200
    )
    digests = [r["policy_sha256"] for r in records]
    assert (
        len(set(digests)) == 2 and digests[-1] != digests[0]
    )  # records after the reload name the new policy
    done = cli("audit", "verify", str(proxy.audit), check=True)
    assert f"chain intact: {len(records)} records in {len(files)} file(s)" in done.stdout

    # tamper with a rotated file: verify names the file and line, and fails
    victim = files[1]
    lines = victim.read_text().splitlines(keepends=True)
    lines[3] = (
        lines[3]
        .replace('"decision":"block"', '"decision":"allow"')
        .replace(
            '"decision":"allow","enforced":true,"signal":null',
            '"decision":"block","enforced":true,"signal":null',
        )
    )
    victim.write_text("".join(lines))
    done = cli("audit", "verify", str(proxy.audit))
    assert done.returncode == 1
    assert done.stdout.startswith(f"{victim}:4: record ")
    assert "was edited" in done.stdout


def test_show_summary_export_and_tail(
    site: Site, make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, registry=[entry("Holder One", "holder.test")])
    proxy = make_proxy(policy)
    responses = asyncio.run(load(proxy, [
        site.url("/page/1"), site.url("/private/1"), site.url("/private/2"), "http://www.holder.test/a",
    ]))  # fmt: skip
    assert [r.status_code for r in responses] == [200, 451, 451, 451]
    log = str(proxy.audit)
    shown = cli("audit", "show", responses[1].headers["X-Optout-Id"], "--log", log, check=True).stdout
    assert "=> [0] robots-txt disallow: Disallow: /private/ (line 2) [group *]" in shown
    assert ">>     2 | Disallow: /private/" in shown  # the stored robots.txt, deciding line marked
    assert "       1 | User-agent: *" in shown
    holder = cli("audit", "show", responses[3].headers["X-Optout-Id"][:12], "--log", log, check=True).stdout
    assert "holder Holder One" in holder

    summary = cli("audit", "summary", "--log", log, "--by", "signal", check=True).stdout
    assert summary.startswith(
        "4 requests: 3 blocked before the fetch, 0 withheld after the fetch, 1 delivered, "
        "0 would have been blocked (monitor)"
    )
    assert "        2         0         0         0  robots-txt" in summary
    assert "        1         0         0         0  registry" in summary
    assert "        0         0         0         1  -" in summary
    by_host = cli(
        "audit", "summary", "--log", log, "--by", "holder", "--decision", "block", check=True
    ).stdout
    assert "Holder One" in by_host and by_host.startswith("3 requests: 3 blocked")

    exported = cli(
        "audit", "export", "--log", log, "--format", "csv", "--signal", "robots-txt", check=True
    ).stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert sorted(r["url"] for r in rows) == [site.url("/private/1"), site.url("/private/2")]  # concurrent
    assert all(r["deciding_detail"] == "Disallow: /private/" for r in rows)
    jsonl = cli(
        "audit", "export", "--log", log, "--format", "jsonl", "--host", "holder.test", check=True
    ).stdout
    assert [json.loads(x)["signal"] for x in jsonl.splitlines()] == ["registry"]

    tail = cli("audit", "tail", "-n", "2", "--log", log, check=True).stdout.splitlines()
    last_two = [json.loads(x) for x in Path(log).read_text().splitlines()[-2:]]
    assert len(tail) == 2
    for line, record in zip(tail, last_two, strict=True):
        assert line.startswith(record["ts"]) and record["url"] in line


def test_tail_follow_sees_new_records(
    site: Site, make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    proxy = make_proxy(write_policy(tmp_path))
    asyncio.run(load(proxy, [site.url("/page/1")]))
    script = Path(sys.executable).with_name("optout-proxy")
    follower = subprocess.Popen([str(script), "audit", "tail", "-f", "-n", "1", "--log", str(proxy.audit)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follower.stdout is not None
        first = read_line(follower, 20)
        assert "/page/1" in first
        asyncio.run(load(proxy, [site.url("/private/9")]))
        second = read_line(follower, 20)
        assert "BLOCK" in second and "/private/9" in second
    finally:
        follower.terminate()
        follower.wait(10)


def test_hot_reload(site: Site, make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    registry = tmp_path / "policy-registry.yaml"
    release = threading.Event()

    def slow(h: BaseHTTPRequestHandler) -> None:
        release.wait(15)
        h.send_response(200)
        h.send_header("Content-Length", "4")
        h.end_headers()
        h.wfile.write(b"slow")

    site.routes["/slow"] = slow
    proxy = make_proxy(policy)
    first = asyncio.run(load(proxy, [site.url("/page/1")]))[0]
    old_digest = proxy.record(first.headers["X-Optout-Id"])["policy_sha256"]

    async def scenario() -> tuple[httpx.Response, float, httpx.Response]:
        async with httpx.AsyncClient(proxy=proxy.url, trust_env=False, timeout=30) as c:
            in_flight = asyncio.create_task(c.get(site.url("/slow")))
            await asyncio.sleep(0.5)
            # The operator adds a rights holder while a request is in flight.
            done = await asyncio.to_thread(cli, "policy", "registry", "add", "--policy", str(policy),
                                           "--holder", "Late Letter", "--domain", "127.0.0.1", "--path", "/page/",
                                           "--reason", "letter", "--source", "https://example.org/l",
                                           "--since", "2026-11-24")  # fmt: skip
            assert done.returncode == 0, done.stderr
            changed_at = time.monotonic()
            while True:
                r = await c.get(site.url("/page/2"))
                if r.status_code == 451 or time.monotonic() - changed_at > 5:
                    break
                await asyncio.sleep(0.1)
            took = time.monotonic() - changed_at
            release.set()
            return r, took, await in_flight

    blocked, took, slow_response = asyncio.run(scenario())
    assert blocked.status_code == 451 and blocked.headers["X-Optout-Reason"] == "registry", (
        f"after {took:.1f}s"
    )
    assert slow_response.status_code == 200 and slow_response.text == "slow"  # not dropped by the reload
    new_digest = proxy.record(blocked.headers["X-Optout-Id"])["policy_sha256"]
    assert new_digest != old_digest
    assert proxy.wait_for_log("policy reloaded")

    # An invalid change is refused with its file:line, and the last good policy keeps running.
    registry.write_text(registry.read_text() + "  - holder: Broken\n    domains: [bad domain]\n")
    assert proxy.wait_for_log(f"{registry}:")
    assert "policy change refused" in proxy.log()
    again = asyncio.run(load(proxy, [site.url("/page/3"), site.url("/private/3")]))
    assert [r.status_code for r in again] == [451, 451]
    assert proxy.record(again[0].headers["X-Optout-Id"])["policy_sha256"] == new_digest


def test_metrics_endpoint(site: Site, make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    port = free_port()
    proxy = make_proxy(write_policy(tmp_path), optout_metrics=str(port))
    asyncio.run(
        load(proxy, [site.url("/page/1"), site.url("/page/2"), site.url("/private/1"), site.url("/noai")])
    )
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    # each request once, by what happened to it (the noai page is not also a delivery)
    for outcome, n in (("blocked", 1), ("withheld", 1), ("delivered", 2), ("would-block", 0)):
        assert f'optout_requests_total{{outcome="{outcome}"}} {n}.0' in text, text
    summary = cli("audit", "summary", "--log", str(proxy.audit), check=True).stdout
    assert summary.startswith(  # the log counts the same requests the same way
        "4 requests: 1 blocked before the fetch, 1 withheld after the fetch, 2 delivered, "
        "0 would have been blocked (monitor)"
    ), summary
    assert (
        'optout_decisions_total{decision="block",enforced="true",phase="request",signal="robots-txt"} 1.0'
        in text
    )
    assert 'optout_decisions_total{decision="allow",enforced="true",phase="request",signal="-"} 3.0' in text
    assert 'optout_documents_fetched_total{document="robots.txt",outcome="ok"} 1.0' in text
    assert 'optout_documents_fetched_total{document="ai.txt",outcome="unavailable"} 1.0' in text
    assert 'optout_cache_events_total{event="miss"} 1.0' in text
    assert 'optout_cache_events_total{event="hit"} 3.0' in text
    assert "optout_fetch_seconds_count 1.0" in text
    assert "optout_audit_write_failures_total 0.0" in text
    # a policy change on disk is picked up and counted
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy.read_text().replace("log_allowed: true", "log_allowed: false"))
    assert proxy.wait_for_log("policy reloaded")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    assert 'optout_policy_reloads_total{result="accepted"} 1.0' in text
