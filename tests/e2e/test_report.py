"""The HTML report, opened in a real headless Chromium: it renders, the chart is drawn,
and the numbers on it equal the log's (counted here independently, line by line)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

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


@pytest.fixture
def log(make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> Path:
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nDisallow: /private/\n"), "/page": Reply(200, "p"),
                      "/private/a": Reply(200, "s")})  # fmt: skip
    policy = write_policy(
        tmp_path, registry=[entry("Holder One", "holder.test")], signals={"robots-txt": "monitor"}
    )
    proxy = make_proxy(policy)

    async def traffic() -> None:
        async with httpx.AsyncClient(proxy=proxy.url, trust_env=False, timeout=20) as c:
            for _ in range(3):
                await c.get(site.url("/page"))
                await c.get(site.url("/private/a"))
            await c.get("http://holder.test:9/x")  # registry: blocked

    asyncio.run(traffic())
    proxy.stop()
    assert proxy.audit is not None
    # Earlier days, appended to the same chain, so the chart has several bars.
    older = AuditLog(proxy.audit)
    for day, signal, n in [
        ("2026-11-20", "registry", 2),
        ("2026-11-21", "robots-txt", 4),
        ("2026-11-21", "ai-txt", 1),
    ]:
        for i in range(n):
            older.write({"v": 1, "ts": f"{day}T10:00:0{i}.000Z", "id": f"old{day}{signal}{i}", "phase": "request",
                         "method": "GET", "url": f"http://old.example/{signal}/{i}", "host": "old.example",
                         "agent": "ExampleBot", "decision": "block", "enforced": True, "signal": signal,
                         "reason": f"old {signal}", "status": 451, "evidence": [], "deciding": None,
                         "policy_sha256": "0" * 64})  # fmt: skip
    older.close()
    return proxy.audit


def test_report_in_chromium(log: Path, tmp_path: Path) -> None:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    blocks = [r for r in records if r["decision"] == "block" and r["enforced"]]
    would = [r for r in records if r["decision"] == "block" and not r["enforced"]]
    per_bar = Counter((r["ts"][:10], r["signal"]) for r in blocks)
    assert len(per_bar) >= 3 and would

    out = tmp_path / "report.html"
    from tests.e2e.test_audit_live import cli

    cli("audit", "report", "--log", str(log), "--out", str(out), check=True)
    html = out.read_text()
    assert (
        "http://" not in re.sub(r"<(td|p|code|a|details|pre|span|title)[^>]*>.*?</\1>", "", html, flags=re.S)
        or 'src="http' not in html
    )  # nothing to load from the network
    assert 'src="http' not in html and "<link" not in html

    dom = chromium("--dump-dom", out.as_uri())
    assert 'data-ready="1"' in dom  # the page's script ran
    assert attr_counts(dom, "total") == len(records)
    assert attr_counts(dom, "blocked") == len(blocks)
    assert attr_counts(dom, "would") == len(would)
    assert attr_counts(dom, "allowed") == len(records) - len(blocks) - len(would)
    bars = {
        (d, s): int(n)
        for d, s, n in re.findall(
            r'class="bar"[^>]*data-day="([^"]+)" data-signal="([^"]+)" data-count="(\d+)"', dom
        )
    }
    assert bars == dict(per_bar)  # every bar equals the log's count for its day and signal
    assert 'id="chain" data-ok="true"' in dom
    assert dom.count('class="block"') == len(blocks)
    m = re.search(
        r'<table id="monitor"><tbody><tr><td class="n" data-count="(\d+)">\d+</td><td>robots-txt</td>', dom
    )
    assert m and int(m.group(1)) == len(would)

    filtered = chromium("--dump-dom", out.as_uri() + "#q=old.example/robots-txt")
    assert 'data-shown="4"' in filtered

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1800", out.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000


def test_report_shows_a_broken_chain(log: Path, tmp_path: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    del lines[2]
    log.write_text("".join(lines))
    out = tmp_path / "report.html"
    from tests.e2e.test_audit_live import cli

    cli("audit", "report", "--log", str(log), "--out", str(out), check=True)
    dom = chromium("--dump-dom", out.as_uri())
    assert 'id="chain" data-ok="false"' in dom and "BROKEN" in dom
