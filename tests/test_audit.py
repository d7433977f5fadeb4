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


def test_damaged_tail_refuses_to_write(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_log(path, 3)
    with open(path, "a") as f:
        f.write('{"half a rec')
    with pytest.raises(AuditError, match="damaged"):
        AuditLog(path).write({"id": "x"})


def test_no_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit log"):
        verify_chain(tmp_path / "none.jsonl")
