"""`audit` filters are never silently wrong: times people type are read (offsets converted to UTC),
anything else is an error with an example; an unknown signal is an error with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit import AuditLog
from proxy.cli import ExitStatus, main
from proxy.logview import check_signal, parse_when


@pytest.mark.parametrize(
    ("typed", "utc"),
    [
        ("2026-12-02", "2026-12-02T00:00:00.000Z"),
        ("2026-12-02 16:01", "2026-12-02T16:01:00.000Z"),
        ("2026-12-02T16:01:30Z", "2026-12-02T16:01:30.000Z"),
        ("2026-12-02T17:00:00+02:00", "2026-12-02T15:00:00.000Z"),
        ("2026-12-02T17:00:00.250+0200", "2026-12-02T15:00:00.250Z"),
        ("2026-12-02T01:00:00-05:00", "2026-12-02T06:00:00.000Z"),
    ],
)
def test_times_people_type_are_read_as_utc(typed: str, utc: str) -> None:
    assert parse_when(typed) == utc


@pytest.mark.parametrize("typed", ["yesterday", "2026-13-01", "12/02/2026", "2026-12-02T25:00", ""])
def test_other_times_are_errors_with_an_example(typed: str) -> None:
    with pytest.raises(ValueError, match=r"not a time.*2026-12-02 16:01"):
        parse_when(typed)


def test_an_unknown_signal_is_an_error_with_a_suggestion() -> None:
    assert check_signal("robots-txt") == "robots-txt"
    assert check_signal("body-over-cap") == "body-over-cap"
    with pytest.raises(ValueError, match="did you mean robots-txt"):
        check_signal("robot-txt")


def _log(path: Path) -> None:
    log = AuditLog(path)
    for ts, signal in (("2026-12-02T14:59:59.000Z", "registry"), ("2026-12-02T15:00:00.000Z", "robots-txt"),
                       ("2026-12-02T16:30:00.000Z", "robots-txt")):  # fmt: skip
        log.write({"v": 1, "ts": ts, "id": ts, "phase": "request", "host": "a.example", "agent": "ExampleBot",
                   "decision": "block", "enforced": True, "signal": signal, "evidence": [], "deciding": None})  # fmt: skip
    log.close()


def test_the_cli_applies_offsets_and_refuses_what_would_match_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    # 17:00 at +02:00 is 15:00 UTC: two records, not zero (the offset used to be ignored)
    assert (
        main(
            [
                "audit",
                "export",
                "--log",
                str(path),
                "--format",
                "jsonl",
                "--since",
                "2026-12-02T17:00:00+02:00",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("\n") == 2
    assert (
        main(["audit", "export", "--log", str(path), "--format", "jsonl", "--since", "2026-12-02 16:01"]) == 0
    )
    assert capsys.readouterr().out.count("\n") == 1  # the space form used to keep everything
    assert main(["audit", "export", "--log", str(path), "--since", "yesterday"]) == ExitStatus.INVALID
    assert "not a time" in capsys.readouterr().err
    assert main(["audit", "summary", "--log", str(path), "--signal", "robot-txt"]) == ExitStatus.INVALID
    assert "did you mean robots-txt" in capsys.readouterr().err


def test_an_agent_no_record_has_is_an_error_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    assert main(["audit", "summary", "--log", str(path), "--agent", "ExampleBot"]) == 0
    assert capsys.readouterr().out.startswith("3 requests: 3 blocked")
    for command in (["summary"], ["tail"], ["export", "--format", "jsonl"]):
        assert main(["audit", *command, "--log", str(path), "--agent", "ExampleBt"]) == ExitStatus.INVALID
        err = capsys.readouterr().err
        assert (
            "no record is for agent 'ExampleBt' (agents in the log: ExampleBot); did you mean ExampleBot?"
            in err
        )
