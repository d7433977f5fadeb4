"""A real mitmdump process with our addon, for end-to-end tests."""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ADDON = REPO / "proxy" / "addon.py"
_LISTENING = re.compile(r"proxy listening at .*?:(\d+)")


def mitmdump_command(policy: Path, confdir: Path, addon: Path = ADDON) -> list[str]:
    """mitmdump with our addon on 127.0.0.1, the port chosen by the OS."""
    return [
        sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
        "-s", str(addon), "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--set", f"confdir={confdir}", "--set", f"optout_policy={policy}",
    ]  # fmt: skip


class ProxyProcess:
    """mitmdump -s proxy/addon.py on 127.0.0.1, port chosen by the OS."""

    def __init__(
        self,
        policy: Path,
        *,
        confdir: Path,
        audit: Path | None = None,
        options: dict[str, Any] | None = None,
        timeout: float = 30.0,
        addon: Path = ADDON,
        fsize_limit: int | None = None,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.confdir = confdir
        args = [*mitmdump_command(policy, confdir, addon), "--set", "flow_detail=0"]
        if audit is not None:
            args += ["--set", f"optout_audit={audit}"]
        for key, value in (options or {}).items():
            args += ["--set", f"{key}={value}"]

        def limit() -> None:
            if fsize_limit is not None:
                # A full disk, for this process only (Python ignores SIGXFSZ: writes fail with EFBIG).
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            preexec_fn=limit if fsize_limit is not None else None,
        )  # fmt: skip
        self.output: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self._port is None:
            self.stop()
            raise RuntimeError("mitmdump did not start:\n" + "".join(self.output))
        self.port: int = self._port

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            m = _LISTENING.search(line)
            if m and self._port is None:
                self._port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def log(self) -> str:
        return "".join(self.output)

    def records(self) -> list[dict[str, Any]]:
        assert self.audit is not None
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def record(self, record_id: str) -> dict[str, Any]:
        matches = [r for r in self.records() if r["id"] == record_id]
        assert len(matches) == 1, f"expected one record {record_id}, found {len(matches)}"
        return matches[0]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_mitmdump_expecting_exit(
    policy: Path, confdir: Path, timeout: float = 30.0, extra: list[str] | None = None
) -> tuple[int, str]:
    """Start mitmdump on a policy that should make it refuse to start; returns (code, output)."""
    args = [*mitmdump_command(policy, confdir), *(extra or [])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout + proc.stderr


def raw_get(proxy: ProxyProcess, url: str, timeout: float = 20) -> bytes:
    """Every byte the proxy sends for one absolute-form GET (no client library in between)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as s:
        s.sendall(
            f"GET {url} HTTP/1.1\r\nHost: x\r\nUser-Agent: ExampleBot/1.0\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)
