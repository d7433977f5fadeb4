"""The HTML report, opened in a real headless Chromium: it renders, the chart is drawn,
and the numbers on it equal the log's (counted here independently, line by line)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.audit import AuditLog
from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium(*args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def attr_counts(dom: str, element_id: str) -> int:
    m = re.search(rf'id="{element_id}" data-count="(\d+)"', dom)
    assert m, element_id
    return int(m.group(1))


ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts")
)
OLD_SIGNALS = [("2026-11-20", "registry", 2), ("2026-11-21", "robots-txt", 4), ("2026-11-21", "ai-txt", 1),
               ("2026-11-22", "tdmrep", 1), ("2026-11-22", "content-usage", 2), ("2026-11-22", "c2pa", 1)]  # fmt: skip


@pytest.fixture
def log(make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> Path:
    long_path = "/page/" + "deep-" * 40 + "end"
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nDisallow: /private/\n"), "/page": Reply(200, "p"),
                      "/private/a": Reply(200, "s"), "/noai": Reply(200, "n", {"X-Robots-Tag": "noai"}),
                      long_path: Reply(200, "l", {"X-Robots-Tag": "noai"})})  # fmt: skip
    policy = write_policy(
        tmp_path, registry=[entry("Holder One", "holder.test")], signals={"robots-txt": "monitor"}
    )
    proxy = make_proxy(policy)

    async def traffic(agent: str) -> None:
        headers = {"User-Agent": agent}
        async with httpx.AsyncClient(proxy=proxy.url, trust_env=False, timeout=20, headers=headers) as c:
            for _ in range(3):
                await c.get(site.url("/page"))
                await c.get(site.url("/private/a"))  # monitor: would-block
            await c.get(site.url("/noai"))  # fetched, then withheld
            await c.get(site.url(long_path))
            await c.get("http://holder.test:9/x")  # registry: blocked before the fetch

    asyncio.run(traffic("ExampleBot/1.0 (+https://crawler.example/bot)"))
    # A policy change on disk: the rest of the log is decided under another sha256.
    policy.write_text(policy.read_text() + "\n# reviewed 2026-12-03\n")
    assert proxy.wait_for_log("policy reloaded")
    asyncio.run(traffic("OtherCrawler/2.0"))
    proxy.stop()
    assert proxy.audit is not None
    # Earlier days, appended to the same chain, so the chart has several bars and many signals.
    older = AuditLog(proxy.audit)
    for day, signal, n in OLD_SIGNALS:
        for i in range(n):
            older.write({"v": 1, "ts": f"{day}T10:00:0{i}.000Z", "id": f"old{day}{signal}{i}", "phase": "request",
                         "method": "GET", "url": f"http://old.example/{signal}/{i}", "host": "old.example",
                         "agent": "ExampleBot", "decision": "block", "enforced": True, "signal": signal,
                         "reason": f"old {signal}", "status": 451, "evidence": [], "deciding": None,
                         "policy_sha256": "0" * 64})  # fmt: skip
    older.close()
    return proxy.audit


def outcomes_from_the_log(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each request's outcome, worked out here from the records (not with proxy.counting)."""
    out: dict[str, str] = {}
    for r in records:
        if r["phase"] == "response":
            if r["decision"] == "block" and out.get(r["request_id"]) != "would-block":
                out[r["request_id"]] = "withheld" if r["enforced"] else "would-block"
        elif r["decision"] == "block":
            out[r["id"]] = "blocked" if r["enforced"] else "would-block"
        elif r["decision"] == "allow":
            out[r["id"]] = "delivered"
    return out


def test_report_in_chromium(log: Path, tmp_path: Path) -> None:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    outcome = outcomes_from_the_log(records)
    counts = Counter(outcome.values())
    assert all(counts[o] for o in ("blocked", "withheld", "delivered", "would-block")), counts
    refused = [r for r in records if r["decision"] == "block" and r["enforced"]]
    per_bar = Counter((r["ts"][:10], r["signal"]) for r in refused)
    assert len(per_bar) >= 3

    out = tmp_path / "report.html"
    from tests.e2e.test_audit_live import cli

    cli("audit", "report", "--log", str(log), "--out", str(out), check=True)
    html = out.read_text()
    assert 'src="http' not in html and "<link" not in html  # nothing to load from the network

    dom = chromium("--dump-dom", out.as_uri())
    assert 'data-ready="1"' in dom  # the page's script ran
    assert 'id="filter"' not in dom  # not filtered, no banner
    assert attr_counts(dom, "total") == len(outcome)
    for ident, o in (("blocked", "blocked"), ("withheld", "withheld"), ("delivered", "delivered"),
                     ("would", "would-block")):  # fmt: skip
        assert attr_counts(dom, ident) == counts[o], ident
    bars = {
        (d, s): int(n)
        for d, s, n in re.findall(
            r'class="bar"[^>]*data-day="([^"]+)" data-signal="([^"]+)" data-count="(\d+)"', dom
        )
    }
    assert bars == dict(per_bar)  # every bar equals the log's count for its day and signal
    legend = re.findall(r'<li data-signal="([^"]+)">', dom)
    assert sorted(legend) == sorted({s for _, s in per_bar})  # every signal in the legend
    assert 'id="chain" data-ok="true"' in dom
    assert dom.count('class="block"') == len(refused)
    would = [r for r in records if r["decision"] == "block" and not r["enforced"]]
    m = re.search(
        r'<table id="monitor"><tbody><tr><td class="n" data-count="(\d+)">\d+</td><td>robots-txt</td>', dom
    )
    assert m and int(m.group(1)) == len(would)

    # per crawler user agent, each outcome as counted from the log
    by_agent: dict[str, Counter[str]] = {}
    for r in records:  # a request counts under its request record's agent, by its final outcome
        if r["id"] in outcome:
            by_agent.setdefault(r.get("user_agent") or "-", Counter())[outcome[r["id"]]] += 1
    for agent in ("ExampleBot/1.0 (+https://crawler.example/bot)", "OtherCrawler/2.0"):
        row = re.search(rf'<tr data-agent="{re.escape(agent)}">(.*?)</tr>', dom.replace("&amp;", "&"))
        assert row, agent
        for o in ("blocked", "withheld", "delivered", "would-block"):
            cell = re.search(rf'data-{o}="(\d+)"', row.group(1))
            assert cell and int(cell.group(1)) == by_agent[agent][o], (agent, o)

    # the policy in force over time: one row per stretch, with the records each decided
    runs: list[list[Any]] = []
    for r in records:
        if r.get("policy_sha256") and (not runs or runs[-1][0] != r["policy_sha256"]):
            runs.append([r["policy_sha256"], 0])
        if r.get("policy_sha256"):
            runs[-1][1] += 1
    assert len(runs) == 3  # the first policy, the reloaded one, the appended old records
    shown = re.findall(r'<tr class="policy" data-sha256="([0-9a-f]{64})" data-records="(\d+)">', dom)
    assert [(sha, int(n)) for sha, n in shown] == [tuple(run) for run in runs]

    # the registry's letter is a link; long URLs are cut, the whole URL on hover
    assert '<a class="source" href="https://example.org/letter"' in dom
    long_url = next(r["url"] for r in records if "deep-deep" in r["url"])
    assert f'<td class="url" title="{long_url}">' in dom

    filtered = chromium("--dump-dom", out.as_uri() + "#q=old.example/robots-txt")
    assert 'data-shown="4"' in filtered

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000

    # a filtered report says so, and counts only what the filter kept
    cli("audit", "report", "--log", str(log), "--out", str(out), "--host", "holder.test", check=True)
    dom = chromium("--dump-dom", out.as_uri())
    assert 'data-filter="host=holder.test"' in dom and "Filtered report" in dom
    assert attr_counts(dom, "total") == sum(1 for r in records if r["host"] == "holder.test")
    chromium(f"--screenshot={ARTIFACTS / 'report-filtered.png'}", "--window-size=1280,1400", out.as_uri())


def test_report_shows_a_broken_chain(log: Path, tmp_path: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    del lines[2]
    log.write_text("".join(lines))
    out = tmp_path / "report.html"
    from tests.e2e.test_audit_live import cli

    done = cli("audit", "report", "--log", str(log), "--out", str(out))
    assert done.returncode == 1 and "chain BROKEN at" in done.stderr  # written, and said: exit 1
    dom = chromium("--dump-dom", out.as_uri())
    assert 'id="chain" data-ok="false"' in dom and "BROKEN" in dom
