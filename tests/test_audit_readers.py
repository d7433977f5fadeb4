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

from proxy.audit import AuditLog, log_files, logs_at, start_new_chain, worker_log
from proxy.cli import ExitStatus, main
from proxy.fleetlog import fleet_path, write_fleet_checkpoint
from proxy.logview import Tail


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
    # summary, export and report walk the chain afterwards: the torn line breaks it, which they say (exit 1)
    breaks = command[0] in ("summary", "export", "report")
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


def test_a_worker_log_the_fleet_does_not_bind_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "decisions.jsonl"
    for k in (1, 2):
        _written_log(worker_log(audit, k), 5)
    write_fleet_checkpoint(audit, [1, 2])
    assert main(["audit", "verify", str(audit)]) == ExitStatus.OK
    capsys.readouterr()
    _written_log(worker_log(audit, 7), 500)  # invented, chained correctly, put beside the fleet's
    assert main(["audit", "verify", str(audit)]) == ExitStatus.BLOCKED
    assert (
        "decisions.w7.jsonl is a worker log the last fleet checkpoint does not name"
        in capsys.readouterr().out
    )
    assert main(["audit", "summary", "--log", str(audit)]) == ExitStatus.BLOCKED
    capsys.readouterr()
    fleet_path(audit).unlink()  # removed with it: no longer provable, and said
    assert main(["audit", "summary", "--log", str(audit)]) == ExitStatus.OK
    assert (
        "a worker log that no fleet checkpoint binds (the fleet file is missing)" in capsys.readouterr().out
    )
    fleet_path(audit).write_text("[]\n")  # damaged: reported at its line, no traceback
    assert main(["audit", "verify", str(audit)]) == ExitStatus.BLOCKED
    assert f"{fleet_path(audit)}:1: not a fleet checkpoint" in capsys.readouterr().out


def test_a_head_kept_elsewhere_finds_a_cut_and_rechained_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 120, checkpoint_every=1000)
    kept = json.loads((tmp_path / "audit.jsonl.checkpoints").read_text().splitlines()[-1])
    assert (
        main(["audit", "verify", str(path), "--expect-head", f"{kept['seq']}:{kept['head']}"])
        == ExitStatus.OK
    )
    # Cut to 100 records, checkpoints rewritten to match: intact by everything the machine holds.
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:100]))
    (tmp_path / "audit.jsonl.checkpoints").unlink()
    assert main(["audit", "verify", str(path)]) == ExitStatus.OK
    assert "no checkpoints" in capsys.readouterr().err
    assert main(["audit", "summary", "--log", str(path)]) == ExitStatus.OK
    assert "warning" in capsys.readouterr().out  # said where the figures are, too
    assert main(["audit", "report", "--log", str(path), "--out", str(tmp_path / "r.html")]) == ExitStatus.OK
    assert 'id="chain-warning"' in (tmp_path / "r.html").read_text()
    assert main(["audit", "verify", str(path), "--expect-head", f"{kept['seq']}:{kept['head']}"]) == 1
    assert "the log was cut: the head kept elsewhere is record 120" in capsys.readouterr().out


def test_tail_follows_a_new_chain(tmp_path: Path) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 5)
    follower = Tail(path)
    assert len(list(follower.poll())) == 5
    start_new_chain(path, tmp_path / "archive")
    log = AuditLog(path)
    for i in range(3):
        log.write(_record(100 + i))
    log.close()
    seen = [r for _ in range(4) for r in follower.poll()]  # a few polls: the old file moved away
    assert [r["seq"] for r in seen] == [1, 2, 3, 4]  # the chain record, then the three


def test_hostile_log_files_are_refused_not_hung_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    for command in (["verify", str(fifo)], ["summary", "--log", str(fifo)], ["tail", "--log", str(fifo)]):
        assert main(["audit", *command]) == ExitStatus.INVALID
        assert "not a regular file" in capsys.readouterr().err
    fifo.unlink()
    # a rotated file named with more digits is the same log's, read once
    path = _written_log(tmp_path / "audit.jsonl", 4, max_bytes=500)
    rotated = sorted(tmp_path.glob("audit.0*.jsonl"))
    assert rotated
    rotated[0].rename(tmp_path / "audit.000001.jsonl")
    assert logs_at(tmp_path) == [path]


def test_a_torn_checkpoint_is_cut_before_the_next(tmp_path: Path) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 3)
    with open(tmp_path / "audit.jsonl.checkpoints", "ab") as f:
        f.write(b'{"ts":"2026-12-02T15:00:00.000Z","seq":3,"he')  # a full disk cut it, then a crash
    log = AuditLog(path)
    log.write(_record(10))
    log.close()
    assert main(["audit", "verify", str(path)]) == ExitStatus.OK


def test_filters_read_hosts_as_the_proxy_records_them_and_refuse_impossible_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write(_record(1) | {"host": "xn--bcher-kva.example", "url": "http://xn--bcher-kva.example/"})
    log.close()
    assert main(["audit", "summary", "--log", str(tmp_path / "audit.jsonl"), "--host", "BÜCHER.example"]) == 0
    assert capsys.readouterr().out.startswith("1 requests")
    assert (
        main(
            ["audit", "summary", "--log", str(tmp_path / "audit.jsonl"), "--since", "0001-01-01T00:00+01:00"]
        )
        == 2
    )
    assert "not a time" in capsys.readouterr().err


def test_show_says_when_the_record_was_edited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _written_log(tmp_path / "audit.jsonl", 3)
    assert main(["audit", "show", "rec000001", "--log", str(path)]) == ExitStatus.OK
    assert "edited" not in capsys.readouterr().out
    path.write_text(path.read_text().replace('"decision":"block"', '"decision":"allow"', 2))
    assert main(["audit", "show", "rec000001", "--log", str(path)]) == ExitStatus.BLOCKED
    assert "WARNING: this record was edited" in capsys.readouterr().out


def test_verify_warns_when_time_goes_backwards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i, ts in enumerate(("2026-12-02T15:00:05.000Z", "2026-12-02T15:00:01.000Z")):
        log.write(_record(i) | {"ts": ts})
    log.close()
    assert main(["audit", "verify", str(tmp_path / "audit.jsonl")]) == ExitStatus.OK
    assert "time goes backwards at" in capsys.readouterr().err
