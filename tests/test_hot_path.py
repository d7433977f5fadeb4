"""The request hot path's shortcuts give exactly what the long way gives.

* `assess.DecisionMemo` keeps decisions per (documents, policy, mode, matched
  rules): for many robots.txt files, paths, policies and modes it must return
  what `decide(prefetch_findings(...))` returns, and must not be used where
  other documents make the findings depend on the path;
* `audit.record_for(serialised=True)` puts the evidence in pre-serialised:
  the line written must be the same bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import orjson
import pytest

from proxy.assess import DecisionMemo
from proxy.audit import _dump, new_id, record_for
from proxy.decide import decide
from proxy.documents import OptionalDoc, OriginDocuments
from proxy.evidence import Decision, Document, Finding, Says, Verdict
from proxy.origin import Origin
from proxy.outcome import refusal
from proxy.policy import Policy, load_policy
from proxy.signals import aitxt, robots, tdmrep
from tests.policies import write_policy

ORIGIN = Origin("https", "a.example", 443)
DOC = Document("https://a.example/robots.txt", 200, "0" * 64, "2026-01-01T00:00:00.000Z")
ROBOTS = [
    b"User-agent: *\nDisallow: /private\nAllow: /private/ok\n\nUser-agent: GPTBot\nDisallow: /no-ai/\n",
    b"User-agent: ExampleBot\nDisallow: /\nAllow: /$\n\nUser-agent: CCBot\nDisallow: /x\n",
    b"User-agent: *\nDisallow: /*.php$\nDisallow: /a/*/b\nContent-Signal: ai-train=no\n",
    b"User-agent: *\nDisallow: /tmp\nDisallowAITraining: /articles/\n",  # path-scoped: no memo
    b"User-agent: *\nContent-Usage: /blog train-ai=n\n",  # path-scoped: no memo
    b"User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nAllow: /\n",
    b"",
]
PATHS = [
    "/", "/robots.txt", "/robots.txt?x=1", "/private", "/private/ok", "/private/ok/deeper", "/no-ai/",
    "/no-ai/x", "/x", "/xyz", "/index.php", "/index.php?a", "/a/1/b", "/articles/1", "/blog/2", "/tmp/a",
    "/%70rivate", "/a/../private",
]  # fmt: skip


def _docs(body: bytes | None, *, status: int = 200, **optional: object) -> OriginDocuments:
    if body is None:
        outcome = "unavailable" if status == 404 else "unreachable"
        doc = Document(DOC.url, status, None, DOC.fetched_at, error=None if status == 404 else "timeout")
        return OriginDocuments(ORIGIN, outcome, doc, None, **optional)  # type: ignore[arg-type]
    parsed = robots.parse(body).warm(("ExampleBot", "GPTBot", "CCBot"))
    return OriginDocuments(ORIGIN, "ok", DOC, parsed, **optional)  # type: ignore[arg-type]


def _policies(tmp_path: Path) -> list[Policy]:
    base = load_policy(write_policy(tmp_path))
    return [
        base,
        dataclasses.replace(base, honor_agents=("GPTBot", "CCBot")),
        dataclasses.replace(base, signals={"robots-txt": "monitor"}),  # type: ignore[arg-type]
        dataclasses.replace(base, signals={"robots-txt": "off"}),  # type: ignore[arg-type]
        dataclasses.replace(base, on_unreachable="allow"),
        dataclasses.replace(base, mode="monitor"),
    ]


def test_memo_gives_what_decide_gives(tmp_path: Path) -> None:
    memo = DecisionMemo()
    documents = [_docs(body) for body in ROBOTS] + [_docs(None, status=404), _docs(None, status=503)]
    for _ in range(2):  # the second round is answered from the memo
        for docs, policy, mode, path in itertools.product(
            documents, _policies(tmp_path), (None, "monitor", "enforce"), PATHS
        ):
            got = memo.decision(docs, ORIGIN, path, policy, mode)
            want = decide(docs.prefetch_findings(ORIGIN.url(path), path, policy), policy, mode=mode)
            assert got == want, (path, mode)


def test_memo_is_not_used_where_other_documents_read_the_path(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    doc = Document("https://a.example/x", 200, None, DOC.fetched_at)
    ai = OptionalDoc("ok", doc, aitxt.parse(b"User-agent: *\nDisallow: /secret\n"))
    tdm = OptionalDoc("ok", doc, tdmrep.parse(b'[{"location": "/books/*", "tdm-reservation": 1}]'))
    lic = OptionalDoc("unreachable", doc, None)
    for optional in ({"ai_txt": ai}, {"tdm_json": tdm}, {"licenses": (("https://l.example/x", lic),)}):
        docs = _docs(ROBOTS[0], **optional)
        assert docs.rule_matchers(policy) is None
        memo = DecisionMemo()
        for path in ("/secret", "/books/1", "/open"):
            want = decide(docs.prefetch_findings(ORIGIN.url(path), path, policy), policy)
            assert memo.decision(docs, ORIGIN, path, policy, None) == want
    assert _docs(ROBOTS[0]).rule_matchers(policy) is not None


def test_memo_is_bounded_and_keyed_by_the_objects(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    memo = DecisionMemo(size=4)
    for body in ROBOTS:
        docs = _docs(body)
        for path in PATHS:
            memo.decision(docs, ORIGIN, path, policy, None)
    assert len(memo._decisions) <= 4 and len(memo._plans) <= 4
    # A policy reloaded with other readings is never answered from an older policy's entries.
    docs = _docs(ROBOTS[0])
    assert memo.decision(docs, ORIGIN, "/private", policy, None).verdict is Verdict.BLOCK
    off = dataclasses.replace(policy, signals={"robots-txt": "off"})  # type: ignore[arg-type]
    assert memo.decision(docs, ORIGIN, "/private", off, None).verdict is Verdict.ALLOW


def _decisions(policy: Policy) -> list[Decision]:
    registry = Finding(
        "registry", Says.DISALLOW, "H: h.example", entry={"holder": "H", "reason": "letter ü", "paths": ["/a"]},
        line=3,
    )  # fmt: skip
    rule = Finding("robots-txt", Says.DISALLOW, "Disallow: /é", DOC, line=2, agent="ExampleBot")
    other = Finding("rsl", Says.UNKNOWN, 'licence "x"\n', Document("u", None, None, "t", error="e\x00"))
    return [
        decide([], policy),
        decide([rule, other], policy),
        decide([registry, rule], policy, mode="monitor"),
        refusal("private-address", "a sentence", policy),
        Decision(Verdict.BLOCK, True, "x", "r", deciding=other, findings=(rule,), policy_sha256="s"),
        Decision(Verdict.BLOCK, True, "internal-error", "r", deciding=None, findings=()),
    ]


@pytest.mark.parametrize("user_agent", [None, "Bot/1.0 (é)"])
def test_serialised_evidence_writes_the_same_line(tmp_path: Path, user_agent: str | None) -> None:
    policy = load_policy(write_policy(tmp_path))
    for decision in _decisions(policy):
        for _ in range(2):  # the second time from the decision's cached evidence
            common = {
                "record_id": new_id(), "ts": "2026-01-01T00:00:00.000Z", "method": "GET",
                "url": "https://a.example/é?q", "host": "a.example", "agent": "ExampleBot",
                "phase": "request", "status": 451, "user_agent": user_agent, "policy_path": "/p.yaml",
            }  # fmt: skip
            plain = record_for(decision, **common)  # type: ignore[arg-type]
            fast = record_for(decision, serialised=True, **common)  # type: ignore[arg-type]
            for record in (plain, fast):
                record.update({"seq": 7, "prev": "0" * 64})
            assert _dump(fast) == _dump(plain)
            assert orjson.loads(_dump(fast)) == orjson.loads(_dump(plain))


def test_record_ids_are_unique_uuid4() -> None:
    import uuid

    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for value in ids[::97]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


def test_judge_response_copies_every_field() -> None:
    """proxy.judge_response builds a hashed Document and its Findings field by field (not with
    dataclasses.replace, which costs several µs each): a new field must be copied there too."""
    assert [f.name for f in dataclasses.fields(Document)] == [
        "url", "status", "sha256", "fetched_at", "final_url", "error", "truncated",
    ]  # fmt: skip
    assert [f.name for f in dataclasses.fields(Finding)] == [
        "signal", "says", "detail", "document", "line", "agent", "entry",
    ]  # fmt: skip
