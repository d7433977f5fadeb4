"""Real engine servers for tests: redis-server and haproxy (Debian packages; .ci/run installs them)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A real redis-server on 127.0.0.1, no persistence; stop() and start() again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> str:
        import redis

        client = redis.Redis(port=self.port)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()


REPO = Path(__file__).resolve().parent.parent
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"


class HAProxy:
    """A real haproxy running the shipped deploy/haproxy.cfg in front of three workers."""

    def __init__(self, workers: list[str]) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            pytest.skip("haproxy is not installed (.ci/run installs Debian's haproxy)")
        assert len(workers) == 3, "deploy/haproxy.cfg names three workers"
        self.port = free_port()
        env = {
            "OPTOUT_LISTEN": f"127.0.0.1:{self.port}",
            **{f"OPTOUT_W{i}": w for i, w in enumerate(workers, 1)},
        }
        self.proc = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CFG)], env={**env, "PATH": "/usr/bin:/bin"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
