"""`optout-proxy run --workers N`: N full enforcers behind one listening address, supervised.

mitmproxy uses one core. Each worker is a complete `optout-proxy run` process
(its own enforcer, cache and audit chain) listening on the same address with
SO_REUSEPORT, so the kernel spreads connections over the workers; no process
sits in the data path. The supervisor starts them, restarts one that dies
(and says so), and stops them all on SIGINT or SIGTERM. It relays each worker's
output line by line, each line whole and marked with the worker (`[w2] ...`):
workers writing to one inherited terminal or pipe would splice their lines.
Workers write unbuffered (a pipe would otherwise hold mitmproxy's log back in
8 KiB blocks) and are sent SIGTERM if the supervisor dies, even by kill -9
(Linux's parent-death signal): no worker outlives it unsupervised on the port.

mitmproxy 11.0 has no option for SO_REUSEPORT. It binds its listeners with
`asyncio.start_server` in `mitmproxy.proxy.mode_servers`; `share_port` hands
that module an `asyncio` whose `start_server` asks for `reuse_port=True`.
That is the one thing this relies on: pyproject pins mitmproxy <11.1, and
tests/e2e/test_workers.py fails if the workers stop sharing the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

SUPERVISOR_ENV = "OPTOUT_SUPERVISOR_PID"  # set for its workers: they stop when it dies
RELAY_LINE_MAX = 64 * 1024  # a longer "line" (no newline) is relayed in pieces of this size
DRAIN_WAIT = 1.0  # seconds, at most, to wait for dead workers' last lines (all of them together)
QUICK_DEATH = 5.0  # a worker that exits with an error this soon after its first start cannot start
RESTART_BACKOFF_MAX = 30.0
STOP_GRACE = 10.0


def worker_count(text: str) -> int:
    """`--workers`: a positive number, or `auto` for one per core this process may use."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, not {text!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be at least 1, not {n}")
    return n


class _SharedPortAsyncio(ModuleType):
    """`asyncio`, except that `start_server` binds with SO_REUSEPORT."""

    def __init__(self) -> None:
        super().__init__("asyncio")
        self.start_server = functools.partial(asyncio.start_server, reuse_port=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def share_port() -> None:
    """Make mitmproxy's listeners in this process bind with SO_REUSEPORT (see the module doc)."""
    from mitmproxy.proxy import mode_servers

    if not isinstance(getattr(mode_servers, "asyncio", None), _SharedPortAsyncio):
        setattr(mode_servers, "asyncio", _SharedPortAsyncio())  # noqa: B010 (not an exported name)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket on `host:port` and its port: holds a port
    chosen by the system (port 0) for the workers, who bind it too. Close it once they listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s, int(s.getsockname()[1])


def free_local_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for a worker's own metrics)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_ca(confdir: Path) -> None:
    """Create mitmproxy's CA before the workers start: N workers creating it at once would each
    write their own, and crawlers would trust only one of them."""
    from mitmproxy import certs

    confdir = confdir.expanduser()
    confdir.mkdir(parents=True, exist_ok=True)
    certs.CertStore.from_store(confdir, "mitmproxy", 2048)


@dataclass
class Worker:
    """One supervised worker process."""

    ident: int
    proc: subprocess.Popen[bytes] | None = None
    relays: list[threading.Thread] = field(default_factory=list)
    started: float = 0.0
    starts: int = 0
    deaths: list[float] = field(default_factory=list)


class Supervisor:
    """Starts N workers, restarts the dead, stops them all on a signal."""

    def __init__(
        self, command: Callable[[int], Sequence[str]], n: int, *, say: Callable[[str], None] | None = None,
        tick: Callable[[], None] | None = None, tick_every: float = 60.0,
    ) -> None:  # fmt: skip
        self.tick, self.tick_every = tick, tick_every  # e.g. the fleet checkpoint, and once more at the end
        self.command = command
        self.workers = [Worker(i) for i in range(1, n + 1)]
        self.say = say or (lambda text: print(f"optout-proxy: {text}", file=sys.stderr, flush=True))
        self.stopping = False

    def start(self, w: Worker) -> None:
        w.proc = subprocess.Popen(
            list(self.command(w.ident)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", SUPERVISOR_ENV: str(os.getpid())},
        )  # fmt: skip
        w.started, w.starts = time.monotonic(), w.starts + 1
        tag = f"[w{w.ident}] ".encode()
        w.relays = [
            threading.Thread(target=relay_lines, args=(pipe, fd, tag), daemon=True, name=f"w{w.ident}-{fd}")
            for pipe, fd in ((w.proc.stdout, 1), (w.proc.stderr, 2))
        ]
        for t in w.relays:
            t.start()

    def run(self, *, poll: float = 0.2) -> int:
        """Supervise until a signal; the exit status is 0, or 1 if a worker could not start."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for w in self.workers:
                self.start(w)
            pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc)
            self.say(f"{len(self.workers)} workers started (pids {pids})")
            ticked = time.monotonic()
            while not self.stopping:
                time.sleep(poll)
                if self.tick is not None and time.monotonic() - ticked >= self.tick_every:
                    ticked = time.monotonic()
                    self._tick()
                for w in self.workers:
                    status = self._reap(w)
                    if status is not None and not self.stopping:
                        # Its own error exit right after the first start is a configuration it
                        # cannot run with; a signal (kill -9, the OOM killer) is not.
                        if w.starts == 1 and time.monotonic() - w.started < QUICK_DEATH and status > 0:
                            self.say(f"worker {w.ident} could not start (exit status {status}); stopping all")
                            self.stopping = True
                            self._stop_all()
                            return 1
                        self._restart(w, status)
            self._stop_all()
            self._tick()  # after the workers' final checkpoints
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _tick(self) -> None:
        if self.tick is None:
            return
        try:
            self.tick()
        except Exception as e:  # a full disk, say: the workers keep their own chains regardless
            self.say(f"fleet checkpoint not written: {e}")

    def _reap(self, w: Worker) -> int | None:
        if w.proc is None or w.proc.poll() is None:
            return None
        status = w.proc.returncode
        w.proc = None
        self._drain([w], DRAIN_WAIT / 4)
        return status

    @staticmethod
    def _drain(workers: Sequence[Worker], wait: float) -> None:
        """Wait, `wait` seconds at most for all of them, for dead workers' last lines (they often say
        why it died); a sink that does not take them (a paused pager) delays nothing longer."""
        deadline = time.monotonic() + wait
        for t in (t for w in workers for t in w.relays):
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _restart(self, w: Worker, status: int) -> None:
        now = time.monotonic()
        w.deaths = [t for t in w.deaths if now - t < 60] + [now]
        wait = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (len(w.deaths) - 1)) if len(w.deaths) > 1 else 0.0
        how = f"signal {-status}" if status < 0 else f"exit status {status}"
        self.say(f"worker {w.ident} died ({how}); restarting it" + (f" in {wait:.1f} s" if wait else ""))
        deadline = now + wait
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.stopping:
            self.start(w)
            self.say(f"worker {w.ident} restarted (pid {w.proc.pid if w.proc else '?'})")

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._drain(self.workers, DRAIN_WAIT)
        self.say("all workers stopped")


def die_with_supervisor() -> None:
    """In a worker: be sent SIGTERM when the supervisor dies (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing), and exit now if it already has (this process was started by it, then re-parented)."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if not supervisor.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(supervisor):
        raise SystemExit("optout-proxy worker: the supervisor is gone; not starting")


def relay_lines(pipe: Any, fd: int, tag: bytes) -> None:
    """Copy `pipe` to file descriptor `fd` a line at a time, each line `tag`-prefixed and written
    with one write(2) (whole up to PIPE_BUF on a pipe, whatever else writes to it)."""
    with pipe:
        for line in iter(lambda: pipe.readline(RELAY_LINE_MAX), b""):
            data = tag + (line if line.endswith(b"\n") else line + b"\n")
            while data:
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:
                    select.select([], [fd], [], 1.0)  # a full non-blocking output: the rest waits
                except OSError:
                    break  # our output is gone (a closed terminal): keep reading, or the worker blocks


def merge_metrics(texts: dict[int, str]) -> str:
    """One exposition from the workers' (Prometheus text format): every sample gains a
    `worker` label; each metric's HELP and TYPE lines appear once."""
    seen_meta: set[str] = set()
    out: list[str] = []
    for worker, text in sorted(texts.items()):
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                if line not in seen_meta:
                    seen_meta.add(line)
                    out.append(line)
                continue
            name, brace, rest = line.partition("{")
            if brace:
                out.append(f'{name}{{worker="{worker}",{rest}')
            else:
                metric, _, value = line.partition(" ")
                out.append(f'{metric}{{worker="{worker}"}} {value}')
    return "\n".join(out) + "\n"


def serve_merged_metrics(address: str, worker_ports: dict[int, int]) -> Any:
    """Serve /metrics on `address` (PORT or HOST:PORT; host 127.0.0.1 by default): the workers'
    metrics (each on 127.0.0.1 at its own port) merged, so a machine has one endpoint."""
    import http.server
    import urllib.request

    host, _, port = address.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            texts: dict[int, str] = {}
            for worker, wport in worker_ports.items():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{wport}/metrics", timeout=2) as r:
                        texts[worker] = r.read().decode()
                except OSError:
                    continue  # a worker restarting: its samples are missing from this scrape
            body = merge_metrics(texts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
