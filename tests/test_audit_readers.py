"""The reading commands are never silently wrong about the log: `tail -f` prints every record once
across rotations, and a torn or foreign line is reported with file:line and skipped (verify still
fails on it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from proxy.audit import AuditLog, log_files
from proxy.cli import ExitStatus, main


def _record(i: int, decision: str = "block") -> dict[str, object]:
    return {
        "v": 1, "ts": f"2026-12-02T15:00:{i % 60:02d}.000Z", "id": f"rec{i:06d}", "phase": "request",
        "method": "GET", "url": f"http://a.example/{i}", "host": "a.example", "agent": "ExampleBot",
        "decision": decision, "enforced": True, "signal": "robots-txt" if decision == "block" else None,
        "evidence": [], "deciding": None,
    }  # fmt: skip


def _written_log(path: Path, n: int, **options: int) -> Path:
    """An audit log at `path` holding `n` records, closed (so its checkpoint is written)."""
    log = AuditLog(path, **options)
    for i in range(n):
        log.write(_record(i))
    log.close()
    return path


def _wait_for_lines(out: list[str], n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_tail_follow_prints_every_record_once_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=900, checkpoint_every=5)  # a rotation every few records
    log.write(_record(0))
    tail = subprocess.Popen(
        [sys.executable, "-m", "proxy", "audit", "tail", "-f", "-n", "1", "--interval", "0.02", "--log", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(tail.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _wait_for_lines(out, 1)
        assert len(out) == 1, tail.stderr
        total = 400
        for i in range(1, total):
            log.write(_record(i))
            if i % 7 == 0:
                time.sleep(0.005)  # bursts and pauses, so rotations land between and during polls
        log.close()
        assert len(log_files(path)) > 20  # the writer really rotated, many times
        _wait_for_lines(out, total)
        time.sleep(0.3)  # anything printed twice would show up by now
    finally:
        tail.terminate()
        tail.wait(10)
    ids = [line.split("http://a.example/")[1].split()[0] for line in out]
    assert sorted(ids, key=int) == [str(i) for i in range(total)]  # each once
    assert ids == sorted(ids, key=int)  # in chain order


def _log_with_bad_lines(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(6):
        log.write(_record(i, "block" if i % 2 else "allow"))
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b'{"v":1,"ts":"2026-12-02T15:00:0\n')  # a torn write (a crash, then a later append)
    lines.insert(5, b'{"hello":"not ours"}\n')  # a foreign line
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize(
    "command",
    [["summary"], ["tail", "-n", "50"], ["export", "--format", "jsonl"], ["report", "--out", "REPORT"]],
)
def test_a_torn_or_foreign_line_is_reported_and_skipped(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _log_with_bad_lines(tmp_path)
    argv = ["audit", *[str(tmp_path / "r.html") if a == "REPORT" else a for a in command], "--log", str(path)]
    # summary and export walk the chain afterwards: the torn line breaks it, which they say (exit 1)
    breaks = command[0] in ("summary", "export")
    assert main(argv) == (ExitStatus.BLOCKED if breaks else ExitStatus.OK)
    captured = capsys.readouterr()
    assert f"{path}:3: skipped: not a JSON record" in captured.err
    assert f"{path}:6: skipped: not an audit record" in captured.err
    assert "2 line(s) are not records and were skipped" in captured.err
    if command[0] == "summary":
        assert "6 records" in captured.out and "3 blocked" in captured.out
    if command[0] == "tail":
        assert captured.out.count("a.example/") == 6
    if command[0] == "export":
        assert captured.out.count("\n") == 6
    # verify still fails on the torn line
    assert main(["audit", "verify", str(path)]) == ExitStatus.BLOCKED


def test_each_request_is_counted_once_by_what_happened_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def write(
        i: int, phase: str, decision: str, enforced: bool = True, request_id: str | None = None
    ) -> None:
        r = _record(i, decision)
        r.update(phase=phase, enforced=enforced, signal=None if decision == "allow" else "x-robots-tag")
        if request_id:
            r["request_id"] = request_id
        log.write(r)

    write(1, "request", "allow")  # delivered
    write(2, "request", "allow")
    write(3, "response", "block", request_id="rec000002")  # request 2 withheld after the fetch
    write(4, "request", "block")  # blocked before the fetch
    write(5, "connect", "block")  # a CONNECT refused: blocked too
    write(6, "request", "block", enforced=False)  # monitor: would-block ...
    write(7, "response", "block", enforced=False, request_id="rec000006")  # ... still one request
    write(8, "request", "allow")
    write(9, "response", "allow", request_id="rec000008")  # findings, nothing withheld: still delivered
    write(10, "request", "allow")
    write(11, "response", "block", enforced=False, request_id="rec000010")  # monitor, response: would-block
    log.close()
    assert main(["audit", "summary", "--log", str(path)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert out.startswith(
        "7 requests: 2 blocked before the fetch, 1 withheld after the fetch, 2 delivered, "
        "2 would have been blocked (monitor)"
    ), out
    assert "(11 records," in out and "2 records settled no request" in out


def test_a_broken_chain_is_archived_and_a_new_one_points_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 10, max_bytes=900)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))  # a record deleted: the chain is broken
    assert main(["audit", "verify", "--log", str(path)]) == ExitStatus.BLOCKED
    broken = capsys.readouterr()
    old_files = sorted(f.name for f in log_files(path))

    # refused while a proxy holds the log
    holder = AuditLog(path)
    holder.claim()
    assert main(["audit", "new-chain", "--log", str(path), "--archive", str(tmp_path / "a")]) == 2
    assert "already being written by pid" in capsys.readouterr().err
    holder.release()

    archive = tmp_path / "archive"
    assert main(["audit", "new-chain", "--log", str(path), "--archive", str(archive)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "chain BROKEN at" in out
    assert sorted(f.name for f in log_files(archive / "audit.jsonl")) == old_files  # everything kept
    assert main(["audit", "verify", "--log", str(archive / "audit.jsonl")]) == ExitStatus.BLOCKED
    assert capsys.readouterr().out == broken.out.replace(str(path.parent), str(archive))  # the same break

    assert main(["audit", "verify", "--log", str(path)]) == ExitStatus.OK  # the new chain is intact
    capsys.readouterr()
    first = json.loads(path.read_text().splitlines()[0])
    assert first["seq"] == 1 and first["decision"] == "new-chain"
    old_head = json.loads((archive / "audit.jsonl").read_text().splitlines()[0])  # before the gap
    assert first["previous"]["log"] == str(archive / "audit.jsonl") and not first["previous"]["intact"]
    assert first["previous"]["head"] == old_head["hash"]  # the last record verified before the break
    AuditLog(path).write(_record(99))
    assert main(["audit", "summary", "--log", str(path)]) == ExitStatus.OK
    assert capsys.readouterr().out.startswith("1 requests: 1 blocked")  # the chain record counts no request


def test_a_response_without_its_request_at_hand_is_counted_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    early = _record(1, "allow")
    log.write({**early, "ts": "2026-12-02T10:00:00.000Z"})
    late = _record(2)  # its response, two hours of log time later (a very slow origin)
    log.write({**late, "ts": "2026-12-02T12:00:00.000Z", "phase": "response", "request_id": "rec000001"})
    log.close()
    assert main(["audit", "summary", "--log", str(path)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert out.startswith("2 requests: 0 blocked before the fetch, 1 withheld after the fetch, 1 delivered")
    assert "(1 withholding response record(s) found no request record within 30 min" in out
    # under a filter that leaves the request record out, the same is said
    assert main(["audit", "summary", "--log", str(path), "--signal", "robots-txt"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert out.startswith("1 requests: 0 blocked before the fetch, 1 withheld") and "1 withholding" in out


def test_verify_warns_when_there_are_no_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 3, checkpoint_every=100)
    assert main(["audit", "verify", str(path)]) == ExitStatus.OK
    assert "warning" not in capsys.readouterr().err  # close wrote a checkpoint
    (tmp_path / "audit.jsonl.checkpoints").unlink()  # removed, or never written (a crash)
    assert main(["audit", "verify", str(path)]) == ExitStatus.OK
    assert "no checkpoints, so records removed from the end cannot be found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["summary"], ["export", "--format", "jsonl"], ["export", "--format", "csv"]]
)
def test_summary_and_export_say_whether_the_chain_holds(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 4, checkpoint_every=100)
    assert main(["audit", *command, "--log", str(path)]) == ExitStatus.OK
    said = capsys.readouterr()
    assert f"{path}: chain intact: 4 records, 1 checkpoint(s)" in said.out + said.err
    # A forged "allow" appended after a repeated record: figures and rows would include both.
    lines = path.read_bytes().splitlines(keepends=True)
    forged = json.loads(lines[0]) | {"id": "forged", "decision": "allow", "signal": None}
    path.write_bytes(b"".join(lines) + lines[1] + json.dumps(forged).encode() + b"\n")
    assert main(["audit", *command, "--log", str(path)]) == ExitStatus.BLOCKED
    said = capsys.readouterr()
    assert f"{path}: chain BROKEN at {path}:5: record 2 is out of order or repeated" in said.out + said.err
    if command[0] == "export":
        assert "BROKEN" not in said.out  # the rows on stdout stay data; the verdict is on stderr
    assert main(["audit", *command, "--log", str(path), "--no-verify"]) == ExitStatus.OK
    said = capsys.readouterr()
    assert f"{path}: chain not verified (--no-verify)" in said.out + said.err
