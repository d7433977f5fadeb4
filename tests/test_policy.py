"""Policy loading: every problem named with path:line, defaults, digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import PolicyError
from proxy.policy import load_policy
from tests.policies import write_policy

REPO = Path(__file__).resolve().parent.parent


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [f"{p.line}: {p.message}" for p in info.value.problems]


def test_shipped_default_policy_is_valid() -> None:
    policy = load_policy(REPO / "policies" / "default.yaml")
    assert policy.agent == "ExampleBot"
    assert {"GPTBot", "CCBot", "Google-Extended", "ClaudeBot", "anthropic-ai"} <= set(policy.honor_agents)
    assert policy.mode == "enforce"
    assert policy.on_unreachable == "block"
    assert policy.audit.path == (REPO / "audit" / "decisions.jsonl").resolve()
    assert len(policy.digest) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agent: A\nuser_agnet: x\n", "2: unknown key 'user_agnet' in the policy"),
        ("agent: A\nagent: B\n", "2: duplicate key 'agent' (first at line 1)"),
        (
            "agent: A\nmode: enforc\n",
            "2: mode must be one of enforce | monitor, not 'enforc' (did you mean 'enforce'?)",
        ),
        ("agent: A\non_unreachable: maybe\n", "2: on_unreachable must be one of block | allow"),
        ("agent: Example Bot\n", "1: agent 'Example Bot' must be a robots.txt product token"),
        ("agent: A\nhonor_agents: GPTBot\n", "2: honor_agents must be a list, not a string"),
        (
            "agent: A\nhonor_agents: [GPTBot, 'Brightbot 1.0']\n",
            "2: honor_agents: 'Brightbot 1.0' is not a product token",
        ),
        (
            "agent: A\nsignals:\n  robots-txt: enforce\n  robot-txt: off\n",
            "4: unknown key 'robot-txt' in signals (did you mean 'robots-txt'?)",
        ),
        (
            "agent: A\nsignals: {registry: on}\n",
            "2: signals.registry must be one of enforce | monitor | off, not 'on'",
        ),
        (
            "agent: A\naudit: {path: x.jsonl, log_allowed: maybe}\n",
            "2: audit.log_allowed must be true or false, not a string",
        ),
        ("agent: A\nregistries: [missing.yaml]\n", "2: registry file 'missing.yaml' not found"),
        (
            "agent: A\npoliteness:\n  max_concurrency: 2.5\n",
            "3: politeness.max_concurrency must be a whole number, not 2.5",
        ),
        (
            "agent: A\npoliteness:\n  max_concurrency: -1\n",
            "3: politeness.max_concurrency must be at least 0",
        ),
        ("mode: enforce\n", "1: the policy: missing required key 'agent'"),
        ("- a\n- b\n", "1: the policy must be a mapping, not a list"),
        ("agent: [ExampleBot\nmode: enforce\n", "YAML syntax error"),
    ],
)
def test_problems_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_unclosed_bracket_reports_where_it_opened(tmp_path: Path) -> None:
    found = problems(tmp_path, "agent: ExampleBot\nhonor_agents: [GPTBot, CCBot\nmode: enforce\n")
    assert len(found) == 1
    assert "at line 2" in found[0], found


def test_all_problems_are_listed_not_just_the_first(tmp_path: Path) -> None:
    found = problems(tmp_path, "agent: A\nmode: x\non_unreachable: y\nfoo: 1\n")
    assert [p.split(":")[0] for p in found] == ["2", "3", "4"]


def test_off_written_bare_means_off(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    path.write_text(path.read_text().replace("registry: enforce", "registry: off"))
    assert load_policy(path).signal_mode("registry") == "off"


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(PolicyError, match="empty"):
        load_policy(tmp_path / "empty.yaml")


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"agent: A\nmode: \xff\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.line == 2


def test_digest_covers_registries(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    before = load_policy(path).digest
    reg = tmp_path / "policy-registry.yaml"
    reg.write_text(reg.read_text() + "# a comment changes the bytes\n")
    assert load_policy(path).digest != before


def test_relative_paths_resolve_against_the_policy_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path / "conf", audit={"path": "../logs/a.jsonl", "log_allowed": False})
    policy = load_policy(path)
    assert policy.audit.path == (tmp_path / "logs" / "a.jsonl").resolve()
    assert policy.audit.log_allowed is False
    assert policy.registries == ((tmp_path / "conf" / "policy-registry.yaml").resolve(),)


def test_lenient_readings_and_its_former_name(tmp_path: Path) -> None:
    base = "agent: ExampleBot\nregistries: []\n"
    (tmp_path / "new.yaml").write_text(base + "lenient_readings: ignore\n")
    (tmp_path / "old.yaml").write_text(base + "aipref_legacy: ignore\n")
    (tmp_path / "both.yaml").write_text(base + "lenient_readings: block\naipref_legacy: ignore\n")
    assert load_policy(tmp_path / "new.yaml").reading("lenient_readings") == "ignore"
    assert load_policy(tmp_path / "old.yaml").reading("lenient_readings") == "ignore"
    with pytest.raises(PolicyError, match=r"both\.yaml:4.*former name of lenient_readings"):
        load_policy(tmp_path / "both.yaml")
