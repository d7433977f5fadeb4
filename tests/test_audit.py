"""The audit log's chain, rotation and checkpoints; verify finds every kind of tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit import AuditLog, log_files, verify_chain
from proxy.errors import AuditError


def write_log(path: Path, n: int, *, max_bytes: int = 0, checkpoint_every: int = 10) -> None:
    log = AuditLog(path, max_bytes=max_bytes, checkpoint_every=checkpoint_every)
    for i in range(n):
        log.write(
            {"ts": f"2026-11-24T00:00:{i % 60:02d}.000Z", "id": f"id{i:06d}", "url": f"http://a.example/{i}"}
        )
    log.close()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_intact_chain_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    write_log(path, 300, max_bytes=5_000)
    files = log_files(path)
    assert len(files) > 3 and files[-1] == path
    assert files[0].name == "decisions.00001.jsonl"
    report = verify_chain(path)
    assert report.ok and report.records == 300 and report.checkpoints >= 30
    seqs = [json.loads(line)["seq"] for f in files for line in f.read_text().splitlines()]
    assert seqs == list(range(1, 301))  # no record lost at any rotation


def test_chain_resumes_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    write_log(path, 5)
    write_log(path, 5)
    report = verify_chain(path)
    assert report.ok and report.records == 10


def test_edit_is_found_at_the_edited_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 20)
    content = lines(path)
    content[6] = content[6].replace("http://a.example/6", "http://b.example/6")
    path.write_text("".join(content))
    report = verify_chain(path)
    assert not report.ok
    assert report.where == f"{path}:7"
    assert "record 7 was edited" in (report.problem or "")


def test_deletion_is_found(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 20)
    content = lines(path)
    del content[9]
    path.write_text("".join(content))
    report = verify_chain(path)
    assert not report.ok and report.where == f"{path}:10"
    assert "records 10..10 are missing" in (report.problem or "")


def test_reordering_is_found(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 20)
    content = lines(path)
    content[4], content[5] = content[5], content[4]
    path.write_text("".join(content))
    report = verify_chain(path)
    assert not report.ok and report.where == f"{path}:5"


def test_truncation_is_found_by_the_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 30, checkpoint_every=10)
    path.write_text("".join(lines(path)[:25]))
    report = verify_chain(path)
    assert not report.ok
    assert "truncated" in (report.problem or "") and "record 30" in (report.problem or "")


def test_deleting_a_whole_rotated_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 200, max_bytes=4_000)
    files = log_files(path)
    files[1].unlink()
    report = verify_chain(path)
    assert not report.ok and "missing" in (report.problem or "")


def test_rewritten_chain_does_not_match_the_checkpoints(tmp_path: Path) -> None:
    # An attacker who recomputes every hash after an edit still contradicts the checkpoints.
    path = tmp_path / "d.jsonl"
    write_log(path, 20, checkpoint_every=5)
    records = [json.loads(line) for line in lines(path)]
    forged = tmp_path / "forged.jsonl"
    log = AuditLog(forged)
    for r in records:
        clean = {k: v for k, v in r.items() if k not in ("seq", "prev", "hash")}
        if clean["id"] == "id000003":
            clean["url"] = "http://elsewhere.example/"
        log.write(clean)
    log.close()
    path.write_text(forged.read_text())
    report = verify_chain(path)
    assert not report.ok and "checkpoint" in (report.problem or "")


@pytest.mark.parametrize(
    "torn",
    [
        b'{"half a rec',  # a write cut short: no newline
        b'{"v":1,"seq":4,"prev":"',  # cut inside the chain fields
        b"\x00\x00\x00\x00",  # zeros after a crash on some filesystems
        b'{"not": "a chained record"}\n',  # a whole line that is not a record
        b"\n\n{",
    ],
)
def test_a_torn_tail_is_cut_and_recorded_as_a_repair(torn: bytes, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 3)
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(torn)
    log = AuditLog(path)
    log.write({"id": "after"})
    log.close()
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert [r.get("phase") for r in records[3:]] == ["repair", None]
    repair = records[3]["repair"]
    cut = torn.lstrip(b"\n") if torn.startswith(b"\n\n") else torn
    assert repair["cut_bytes"] == len(cut) and repair["offset"] == len(intact) + len(torn) - len(cut)
    assert path.read_bytes().startswith(intact)
    report = verify_chain(path)
    assert report.ok and report.records == 5
    line = 4 + torn[: len(torn) - len(cut)].count(b"\n")  # blank lines left before it still count
    assert len(report.repairs) == 1 and f"{path}:{line}: a torn record ({len(cut)} bytes" in report.repairs[0]


def test_a_failed_write_is_rolled_back_before_the_next(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    path = tmp_path / "full.jsonl"
    script = f"""
import resource
from proxy.audit import AuditLog
from proxy.errors import AuditError
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # the disk is full at 3 kB
log = AuditLog({str(path)!r}, checkpoint_every=1000)
ok = failed = 0
for i in range(60):
    try:
        log.write({{"id": "r%d" % i, "pad": "x" * (i % 7) * 10}})
        ok += 1
    except AuditError:
        failed += 1
print(ok, failed)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ok, failed = map(int, done.stdout.split())
    assert ok > 0 and failed > 0
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data) <= 3000  # no torn line left behind
    report = verify_chain(path)
    assert report.ok and report.records == ok and report.repairs == ()
    del resource


def test_a_log_removed_while_open_refuses_every_record(tmp_path: Path) -> None:
    # What would be written goes to no disk: the proxy answers 503 rather than forward.
    path = tmp_path / "decisions.jsonl"
    log = AuditLog(path)
    log.write({"id": "before"})
    path.unlink()
    with pytest.raises(AuditError, match="removed while open"):
        log.write({"id": "after"})


def test_a_checkpoint_that_cannot_be_written_does_not_unwrite_its_record(tmp_path: Path) -> None:
    # The record is in the chain when the checkpoint fails: its decision must stand.
    path = tmp_path / "decisions.jsonl"
    (tmp_path / "decisions.jsonl.checkpoints").mkdir()  # the checkpoint cannot be opened
    log = AuditLog(path, checkpoint_every=2)
    for i in range(5):
        log.write({"id": f"r{i}"})
    assert [json.loads(line)["id"] for line in lines(path)][-5:] == [f"r{i}" for i in range(5)]


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda line: line.replace(b'"decision":"block"', b'"decision": "block"'),  # spacing
        lambda line: line.replace(b'"decision":"block"', b'"decision":"\\u0062lock"'),  # an escape
        lambda line: line.replace(b"\n", b"\r\n"),  # line ends
    ],
    ids=["spacing", "escape", "crlf"],
)
def test_a_line_rewritten_with_the_same_content_is_found(rewrite: object, tmp_path: Path) -> None:
    # A reader of the raw lines (grep, a log shipper) must see the bytes that were hashed.
    path = tmp_path / "decisions.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.write({"id": f"r{i}", "decision": "block"})
    log.close()
    raw = path.read_bytes().splitlines(keepends=True)
    raw[1] = rewrite(raw[1])  # type: ignore[operator]
    path.write_bytes(b"".join(raw))
    report = verify_chain(path)
    assert not report.ok and report.where == f"{path}:2" and "rewritten" in report.problem


def test_no_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit log"):
        verify_chain(tmp_path / "none.jsonl")
