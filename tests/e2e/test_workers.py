"""`optout-proxy run --workers N`: real worker processes sharing one address (SO_REUSEPORT), each
a full enforcer with its own audit chain; a worker killed with kill -9 is restarted and continues
its chain while the others keep serving; a worker that cannot start stops the run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from proxy.audit import verify_chain, worker_log
from tests.bursts import burst
from tests.policies import entry, write_policy
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private/\n"


class Fleet:
    """`optout-proxy run --workers N` as a subprocess; its output (the workers' too) collected by line."""

    def __init__(self, policy: Path, workers: int, tmp_path: Path, *extra: str) -> None:
        self.audit = tmp_path / "audit" / "decisions.jsonl"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--policy", str(policy), "--listen-port", "0", "--workers",
             str(workers), "--audit", str(self.audit), "--set", f"confdir={tmp_path / 'ca'}", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # As a terminal user runs it: no inherited PYTHONUNBUFFERED to hide a worker's buffered log.
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(r"workers on 127\.0\.0\.1:(\d+)").group(1))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None and not found:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not seen:\n{''.join(self.lines)[-4000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> dict[int, int]:
        found = subprocess.run(
            ["pgrep", "-a", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return {
            int(m.group(2)): int(m.group(1)) for m in re.finditer(r"^(\d+) .*--worker-id (\d+)", found, re.M)
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(policy: Path, workers: int, *extra: str) -> Fleet:
        f = Fleet(policy, workers, tmp_path, *extra)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


async def many(url: str, targets: list[str], concurrency: int = 30) -> list[int]:
    """Status of each request; each on a new connection, so the kernel spreads them over the workers."""
    gate = asyncio.Semaphore(concurrency)
    # No connection kept alive: one client (a client each would build an SSL context each).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(proxy=url, trust_env=False, timeout=30, limits=limits) as c:

        async def one(target: str) -> int:
            async with gate:
                try:
                    return (await c.get(target)).status_code
                except httpx.TransportError:
                    return 0  # a connection the killed worker held

        return await asyncio.gather(*(one(t) for t in targets))


async def pooled(url: str, targets: list[str], connections: int) -> list[int]:
    """Status of each request, all at once over `connections` kept-alive connections (which the
    kernel spread over the workers as they opened)."""
    return [r.status_code for r in await burst(url, targets, connections)]


def records_of(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.strip()) if log.exists() else 0


def test_three_workers_share_the_address_and_keep_their_own_chains(
    fleet: Callable[..., Fleet], make_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = make_site(
        {"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok"), "/private/x": Reply(200, "s")}
    )
    policy = write_policy(tmp_path, registry=[entry("Holder One", "holder.test")])
    f = fleet(policy, 3)
    f.wait_for(r"listening at", count=3)
    # Each worker line arrives whole and says whose it is (three workers start at once: unrelayed,
    # their log lines splice into one another).
    listening = [line for line in f.lines if "listening at" in line]
    assert sorted(line[:5] for line in listening) == ["[w1] ", "[w2] ", "[w3] "], listening
    stamped = [line for line in f.lines if re.search(r"\[\d\d:\d\d:\d\d\.\d{3}\]", line)]
    assert stamped and all(len(re.findall(r"\[\d\d:\d\d:\d\d\.\d{3}\]", x)) == 1 for x in stamped), stamped
    targets = [site.url("/page"), site.url("/private/x"), "http://holder.test:9/x"] * 60
    statuses = asyncio.run(many(f.url, targets))
    assert statuses == [200, 451, 451] * 60  # every worker a full enforcer
    counts = {k: records_of(worker_log(f.audit, k)) for k in (1, 2, 3)}
    assert sum(counts.values()) == len(targets)  # every decision on the record, once
    assert all(n > 0 for n in counts.values()), counts  # the kernel spread the connections over all three
    for k in (1, 2, 3):
        assert verify_chain(worker_log(f.audit, k)).ok
    f.stop()

    # every audit command reads the workers' logs together: by the policy's path or by the folder
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy", "audit", *argv], capture_output=True, text=True)

    for where in (f.audit, f.audit.parent):
        summary = cli("summary", "--log", str(where))
        assert summary.stdout.startswith("180 requests: 120 blocked before the fetch, 0 withheld after the fetch, "
                                         "60 delivered"), summary.stdout + summary.stderr  # fmt: skip
    verified = cli("verify", "--log", str(f.audit))
    assert verified.returncode == 0 and "3 chains, 3 intact, 0 broken" in verified.stdout
    page = tmp_path / "report.html"
    assert cli("report", "--log", str(f.audit.parent), "--out", str(page)).returncode == 0
    assert 'id="chain" data-ok="true"' in page.read_text() and "3 chains intact" in page.read_text()
    assert "fleet checkpoint(s) bind the workers' chains" in verified.stdout  # written as the fleet stopped
    # a whole worker's log removed: each remaining chain is intact, but the fleet line misses it
    gone = tmp_path / "gone"
    gone.mkdir()
    for file in f.audit.parent.glob("decisions.w3.*"):
        file.rename(gone / file.name)
    verified = cli("verify", "--log", str(f.audit))
    assert verified.returncode == 1 and "2 chains, 2 intact, 0 broken" in verified.stdout
    assert "worker 3's record" in verified.stdout and "is missing" in verified.stdout
    for file in gone.iterdir():
        file.rename(f.audit.parent / file.name)
    times = [
        line.split()[0]
        for line in cli("tail", "-n", "1000", "--log", str(f.audit.parent)).stdout.splitlines()
    ]
    assert len(times) == 180 and times == sorted(times)  # merged by time
    # a break in one worker's chain is named by that worker's file and line
    log = worker_log(f.audit, 2)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:1] + lines[2:]))
    verified = cli("verify", "--log", str(f.audit.parent))
    assert verified.returncode == 1 and "3 chains, 2 intact, 1 broken" in verified.stdout
    assert f"{log}:2: " in verified.stdout or f"{log}.checkpoints" in verified.stdout, verified.stdout


def test_a_killed_worker_is_restarted_and_continues_its_chain(
    fleet: Callable[..., Fleet], make_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok")})
    policy = write_policy(tmp_path)
    f = fleet(policy, 2)
    f.wait_for(r"listening at", count=2)
    asyncio.run(many(f.url, [site.url("/page")] * 40))
    before = records_of(worker_log(f.audit, 2))
    victim = f.worker_pids()[2]

    async def load_while_killing() -> list[int]:
        task = asyncio.create_task(many(f.url, [site.url("/page")] * 200, concurrency=10))
        await asyncio.sleep(0.3)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        return await task

    statuses = asyncio.run(load_while_killing())
    f.wait_for(r"worker 2 died \(signal 9\); restarting it")
    f.wait_for(r"worker 2 restarted")
    f.wait_for(r"listening at", count=3)
    assert (
        statuses.count(200) >= len(statuses) - 10
    )  # the other worker kept serving; at most the killed one's
    assert set(statuses) <= {200, 0}  # nothing forwarded undecided, nothing refused for it
    assert asyncio.run(many(f.url, [site.url("/page")] * 60)) == [200] * 60  # and the fleet is whole again
    f.stop()
    log = worker_log(f.audit, 2)
    report = verify_chain(log)
    assert report.ok, report.problem  # the restarted worker continued its chain (a repair at most)
    assert report.records > before
    assert f.worker_pids() == {}  # stopping the supervisor stopped every worker


def test_workers_stop_when_the_supervisor_is_killed(
    fleet: Callable[..., Fleet], make_site: Callable[..., Site], tmp_path: Path
) -> None:
    """kill -9 of the supervisor leaves no unsupervised worker serving on the address."""
    site = make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok")})
    f = fleet(write_policy(tmp_path), 2)
    f.wait_for(r"listening at", count=2)
    assert asyncio.run(many(f.url, [site.url("/page")] * 10)) == [200] * 10
    pids = list(f.worker_pids().values())
    assert len(pids) == 2
    f.proc.kill()
    f.proc.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    for k in (1, 2):
        report = verify_chain(worker_log(f.audit, k))
        assert report.ok, report.problem  # they stopped cleanly


def test_a_worker_that_cannot_start_stops_the_run(fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    f = fleet(write_policy(tmp_path), 2, "--set", "optout_body_cap=abc")
    assert f.proc.wait(60) == 1
    f.wait_for(r"could not start")


def test_one_metrics_endpoint_covers_every_worker(
    fleet: Callable[..., Fleet], make_site: Callable[..., Site], tmp_path: Path
) -> None:
    from tests.engines import free_port

    site = make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok")})
    port = free_port()
    f = fleet(write_policy(tmp_path), 2, "--set", f"optout_metrics={port}")
    f.wait_for(r"listening at", count=2)
    assert asyncio.run(many(f.url, [site.url("/page")] * 60)) == [200] * 60
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=10).text
    delivered = {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(r'optout_requests_total\{worker="(\d)",outcome="delivered"\} (\S+)', text)
    }
    assert set(delivered) == {1, 2}  # both workers, one endpoint
    assert sum(delivered.values()) == 60  # and together they count every request once
    assert text.count("# TYPE optout_requests_total counter") == 1


def test_three_workers_on_redis_fetch_once_and_all_take_a_reload(
    fleet: Callable[..., Fleet], make_site: Callable[..., Site], tmp_path: Path
) -> None:
    from tests.engines import RedisServer

    redis_server = RedisServer(tmp_path / "redis")
    try:
        sites = [make_site({"/robots.txt": Reply(200, ROBOTS), "/page": Reply(200, "ok"),
                            "/private/x": Reply(200, "s")}) for _ in range(50)]  # fmt: skip
        policy = write_policy(tmp_path, shared_state=redis_server.url)
        f = fleet(policy, 3)
        f.wait_for(r"listening at", count=3)
        targets = [s.url(p) for s in sites for p in ("/page", "/private/x")] * 10
        statuses = asyncio.run(pooled(f.url, targets, connections=60))
        assert statuses == [451 if "/private/" in t else 200 for t in targets]
        hits = [s.hits["/robots.txt"] for s in sites]
        said = "".join(line for line in f.lines if "optout:" in line and "loaded" not in line)[-4000:]
        assert hits == [1] * len(sites), said  # once per origin, three workers
        assert all(records_of(worker_log(f.audit, k)) for k in (1, 2, 3))

        # a policy change reaches every worker: the registry now names 127.0.0.1's holder
        registry = policy.with_name("policy-registry.yaml")
        registry.write_text(
            "entries:\n  - holder: Loopback Holder\n    domains: [127.0.0.1]\n    reason: a test letter\n"
            "    source: https://example.org/letter\n    since: 2026-12-03\n"
        )
        f.wait_for(r"policy reloaded", count=3, timeout=30)
        statuses = asyncio.run(many(f.url, [sites[0].url("/page")] * 60))
        assert statuses == [451] * 60  # whichever worker took it
        for k in (1, 2, 3):
            records = [json.loads(line) for line in worker_log(f.audit, k).read_text().splitlines()]
            assert records[-1]["signal"] == "registry", k  # each worker enforces the new policy
    finally:
        redis_server.kill()
