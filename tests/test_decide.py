"""decide(): the combination rule, modes and the reason codes, written out by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.decide import decide
from proxy.evidence import Document, Finding, Says, Verdict
from proxy.policy import Policy, load_policy
from tests.policies import write_policy

DOC = Document("http://a.example/robots.txt", 200, "0" * 64, "2026-01-01T00:00:00.000Z")
DISALLOW = Finding("robots-txt", Says.DISALLOW, "Disallow: /", DOC, line=2, agent="ExampleBot")
ALLOW = Finding("robots-txt", Says.ALLOW, "Allow: /", DOC, line=3, agent="ExampleBot")
REGISTRY = Finding(
    "registry", Says.DISALLOW, "Ghibli: ghibli.jp", entry={"holder": "Ghibli", "reason": "letter"}
)
UNREACHABLE = Finding(
    "robots-txt",
    Says.UNREACHABLE,
    "HTTP 503",
    Document("http://a.example/robots.txt", 503, None, "2026-01-01T00:00:00Z", error="HTTP 503"),
)
FORBIDDEN = Finding(
    "robots-txt",
    Says.UNAVAILABLE,
    "HTTP 403",
    Document("http://a.example/robots.txt", 403, None, "2026-01-01T00:00:00Z"),
)
NOT_FOUND = Finding(
    "robots-txt",
    Says.UNAVAILABLE,
    "HTTP 404",
    Document("http://a.example/robots.txt", 404, None, "2026-01-01T00:00:00Z"),
)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write_policy(tmp_path))


def with_(policy: Policy, **changes: object) -> Policy:
    return dataclasses.replace(policy, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("findings", "verdict", "signal"),
    [
        ([], Verdict.ALLOW, None),
        ([ALLOW], Verdict.ALLOW, None),
        ([DISALLOW], Verdict.BLOCK, "robots-txt"),
        ([ALLOW, DISALLOW], Verdict.BLOCK, "robots-txt"),  # a grant never cancels a reservation
        ([REGISTRY, ALLOW], Verdict.BLOCK, "registry"),
        ([UNREACHABLE], Verdict.BLOCK, "unreachable"),
        ([NOT_FOUND], Verdict.ALLOW, None),
        ([FORBIDDEN], Verdict.ALLOW, None),  # RFC 9309 §2.3.1.3 by default
    ],
)
def test_combination(policy: Policy, findings: list[Finding], verdict: Verdict, signal: str | None) -> None:
    d = decide(findings, policy)
    assert (d.verdict, d.signal, d.enforced) == (verdict, signal, True)
    assert d.policy_sha256 == policy.digest
    if verdict is Verdict.BLOCK:
        assert d.deciding is not None and d.deciding in d.findings


def test_unreachable_allow_policy(policy: Policy) -> None:
    assert decide([UNREACHABLE], with_(policy, on_unreachable="allow")).verdict is Verdict.ALLOW


def test_forbidden_block_policy(policy: Policy) -> None:
    d = decide([FORBIDDEN], with_(policy, on_robots_forbidden="block"))
    assert (d.verdict, d.signal) == (Verdict.BLOCK, "robots-txt")
    assert decide([NOT_FOUND], with_(policy, on_robots_forbidden="block")).verdict is Verdict.ALLOW


def test_monitor_mode_decides_but_does_not_enforce(policy: Policy) -> None:
    d = decide([DISALLOW], with_(policy, mode="monitor"))
    assert (d.verdict, d.enforced, d.blocks) == (Verdict.BLOCK, False, False)
    assert d.reason.startswith("Would block")
    # the mode override beats the policy
    assert decide([DISALLOW], policy, mode="monitor").blocks is False
    assert decide([DISALLOW], with_(policy, mode="monitor"), mode="enforce").blocks is True


def test_per_signal_modes(policy: Policy) -> None:
    monitored = with_(policy, signals={"robots-txt": "monitor", "registry": "enforce"})
    d = decide([DISALLOW], monitored)
    assert (d.verdict, d.enforced) == (Verdict.BLOCK, False)
    # an enforced signal decides over an earlier monitored one
    d = decide([DISALLOW, REGISTRY], monitored)
    assert (d.signal, d.enforced) == ("registry", True)
    off = with_(policy, signals={"robots-txt": "off"})
    d = decide([DISALLOW], off)
    assert d.verdict is Verdict.ALLOW and d.findings == ()


def test_reason_names_rule_line_and_document(policy: Policy) -> None:
    d = decide([DISALLOW], policy)
    assert "http://a.example/robots.txt" in d.reason
    assert "Disallow: /" in d.reason and "line 2" in d.reason
    assert "letter" in decide([REGISTRY], policy).reason
