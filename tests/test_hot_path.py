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
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from proxy.assess import DecisionMemo
from proxy.audit import AuditLog, _dump, log_files, new_id, record_for, seal, verify_chain
from proxy.decide import decide
from proxy.documents import OptionalDoc, OriginDocuments
from proxy.evidence import Decision, Document, Finding, Says, Verdict
from proxy.fields import first, request_url
from proxy.metrics import Metrics
from proxy.origin import Origin, canonical_host
from proxy.outcome import Recorder, refusal
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
    assert len(memo._decisions) <= 4
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


@pytest.mark.parametrize(("max_bytes", "every"), [(0, 100), (0, 1), (0, 7), (1500, 5), (700, 1000)])
def test_the_inline_write_is_what_seal_writes(tmp_path: Path, max_bytes: int, every: int) -> None:
    """AuditLog.write's inline path writes the lines `seal` makes, rotates and checkpoints as before."""
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=max_bytes, checkpoint_every=every)
    written = []
    for i in range(40):
        record = {"v": 1, "id": new_id(), "n": i, "text": "é" * (i % 7), "evidence": orjson.Fragment(b"[]")}
        log.write(record)
        expected, digest = seal({k: v for k, v in record.items() if k != "hash"})
        assert record["hash"] == digest
        written.append(expected)
    log.close()
    report = verify_chain(tmp_path / "a.jsonl")
    assert report.ok and report.records == 40
    lines = b"".join(p.read_bytes() for p in log_files(tmp_path / "a.jsonl")).splitlines()
    assert lines == written
    if max_bytes:
        assert len(log_files(tmp_path / "a.jsonl")) > 1
    assert report.checkpoints >= 40 // every


def _flows() -> list[http.HTTPFlow]:
    out = []
    for scheme, host, port, path, method, headers in [
        ("http", "a.example", 80, "/x?y=1", "GET", [(b"User-Agent", b"Bot/1 \xc3\xa9")]),
        ("https", "a.example", 443, "/", "GET", []),
        ("https", "a.example", 8443, "/p%20q", "POST", [(b"user-agent", b"one"), (b"User-Agent", b"two")]),
        ("http", "::1", 8080, "/v6", "GET", []),
        ("http", "a.example", 80, "*", "OPTIONS", []),
        ("https", "xn--bcher-kva.example", 443, "/b\\udcff", "GET", []),
        ("http", "a.example", 443, "/", "GET", []),
        ("https", "a.example", 80, "/", "HEAD", []),
    ]:
        flow = tflow.tflow()
        flow.request = tutils.treq(
            host=host, port=port, scheme=scheme.encode(), method=method.encode(), headers=http.Headers(headers),
            path=path.encode("utf-8", "surrogateescape"),
        )  # fmt: skip
        out.append(flow)
    connect = tflow.tflow()
    connect.request = tutils.treq(method=b"CONNECT", host="a.example", port=443, path=b"", scheme=b"")
    out.append(connect)
    return out


def test_request_url_is_mitmproxys(tmp_path: Path) -> None:
    for flow in _flows():
        assert request_url(flow.request) == flow.request.url


@pytest.mark.parametrize("with_policy", [True, False])
def test_recorder_record_is_record_for(tmp_path: Path, with_policy: bool) -> None:
    policy = load_policy(write_policy(tmp_path)) if with_policy else None
    recorder = Recorder(Metrics(lambda: None, lambda: 0))
    for flow, decision in itertools.product(_flows(), _decisions(load_policy(write_policy(tmp_path / "p")))):
        got = recorder.record(flow, decision, policy, "r1", phase="response", status=None)
        req = flow.request
        want = record_for(
            decision, record_id="r1", ts=got["ts"], method=req.method, url=req.url,
            host=canonical_host(req.host), agent=policy.agent if policy else "", phase="response", status=None,
            user_agent=first(req.headers.fields, b"user-agent"), policy_path=str(policy.path) if policy else None,
        )  # fmt: skip
        assert _dump(got) == _dump(want)


def test_memo_keeps_no_documents_alive(tmp_path: Path) -> None:
    import gc
    import weakref

    policy = load_policy(write_policy(tmp_path))
    memo = DecisionMemo()
    docs = _docs(ROBOTS[0])
    memo.decision(docs, ORIGIN, "/private", policy, None)
    gone = weakref.ref(docs)
    del docs
    gc.collect()
    assert gone() is None
    fresh = _docs(ROBOTS[0])  # may reuse the id: never answered from the dead one's entry
    off = dataclasses.replace(policy, signals={"robots-txt": "off"})  # type: ignore[arg-type]
    assert memo.decision(fresh, ORIGIN, "/private", off, None).verdict is Verdict.ALLOW
