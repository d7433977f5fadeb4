"""Signals read before the fetch: Content-Usage, Content-Signal, ai.txt, TDMRep file,
DisallowAITraining, RSL. Vectors from shared/reference/signals.md, expectations by hand."""

from __future__ import annotations

import pytest

from proxy.evidence import Says
from proxy.signals import aitxt, contentsignal, contentusage, robots, rsl, tdmrep

D, A, U = Says.DISALLOW, Says.ALLOW, Says.UNKNOWN


# -- AIPREF Content-Usage (§7) ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "strict", "legacy"),
    [
        ("train-ai=n", D, D),  # P1
        ("train-ai=y", A, A),  # P2
        ("search=n", U, U),  # P3
        ("train-ai=no", U, D),  # P4
        ("Train-AI=n", U, D),  # P5
        ("train-ai = n", U, D),  # P6
        ('train-ai="n"', U, D),  # P7
        ("train-ai=y, train-ai=n", D, D),  # P8
        ("train-ai;allow=n, train-ai=y", A, A),  # P9
        ("train-ai=n;exp=1", D, D),  # P10
        ("train-ai=n, ", U, D),  # P12
        ("ai=n", U, D),  # P13
        ("\x00\xff garbage", U, U),
    ],
)
def test_content_usage_values(value: str, strict: Says, legacy: Says) -> None:
    assert contentusage.evaluate(value, "ai-train", legacy=False)[0] is strict
    assert contentusage.evaluate(value, "ai-train", legacy=True)[0] is legacy


def test_content_usage_purpose() -> None:
    assert contentusage.evaluate("search=n, train-ai=y", "search", legacy=True)[0] is D
    assert contentusage.evaluate("train-ai=n", "search", legacy=True)[0] is U
    assert contentusage.evaluate("train-ai=n", "ai-input", legacy=True)[0] is U  # no AIPREF label


def test_content_usage_header_lines_combine() -> None:
    # P11: two field lines are one dictionary
    found = contentusage.findings_from_headers(["search=y", "train-ai=n"], "ai-train", None, legacy=False)
    assert [f.says for f in found] == [D]


ATTACH_EXAMPLE = """User-Agent: *
Allow: /
Disallow: /never/
Content-Usage: train-ai=n
Content-Usage: /ai-ok/ train-ai=y

User-Agent: ExampleBot
Allow: /
Content-Usage: train-ai=y
"""


@pytest.mark.parametrize(
    ("text", "agent", "path", "expected", "inherit"),
    [
        (ATTACH_EXAMPLE, "OtherBot", "/test", D, True),  # P14
        (ATTACH_EXAMPLE, "OtherBot", "/ai-ok/test", A, True),  # P16
        (ATTACH_EXAMPLE, "ExampleBot", "/test", A, True),  # P17: own group's y
        (
            "User-agent: *\nContent-Usage: /x/ train-ai=y\nContent-Usage: /x/ train-ai=n",
            "ExampleBot",
            "/x/1",
            D,
            True,
        ),
        (
            "User-agent: *\nContent-Usage: /a train-ai=y\nContent-Usage: /a/b/ train-ai=n",
            "ExampleBot",
            "/a/b/c",
            D,
            True,
        ),
        (
            "User-agent: *\nContent-Usage: /a train-ai=y\nContent-Usage: /a/b/ train-ai=n",
            "ExampleBot",
            "/a/c",
            A,
            True,
        ),
        # P20: the Content-Usage rule ends the * run, so ExampleBot has its own group
        (
            "User-agent: *\nContent-Usage: train-ai=n # no\nUser-agent: ExampleBot\nAllow: /",
            "OtherBot",
            "/x",
            D,
            False,
        ),
        (
            "User-agent: *\nContent-Usage: train-ai=n # no\nUser-agent: ExampleBot\nAllow: /",
            "ExampleBot",
            "/x",
            None,
            False,
        ),
        # ...but under star_group_preferences: inherit the * group's preference still binds us
        (
            "User-agent: *\nContent-Usage: train-ai=n # no\nUser-agent: ExampleBot\nAllow: /",
            "ExampleBot",
            "/x",
            D,
            True,
        ),
    ],
)
def test_content_usage_in_robots(
    text: str, agent: str, path: str, expected: Says | None, inherit: bool
) -> None:
    found = contentusage.findings_for(
        path, robots.parse(text), agent, "ai-train", None, legacy=False, inherit_star=inherit
    )
    assert (found[0].says if found else None) is expected


def test_content_usage_rule_reports_its_line() -> None:
    found = contentusage.findings_for(
        "/t", robots.parse(ATTACH_EXAMPLE), "OtherBot", "ai-train", None, legacy=False, inherit_star=True
    )
    assert found[0].line == 4 and found[0].agent == "*"


# -- Content-Signal (§8) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "agent", "expected", "inherit"),
    [
        ("User-agent: *\nContent-Signal: search=yes,ai-train=no\nAllow: /", "ExampleBot", [D], True),  # C1
        ("User-agent: *\nContent-Signal: search=yes, ai-input=no\nAllow: /", "ExampleBot", [U], True),  # C2
        ("User-agent: *\nContent-Signal: ai-train=yes", "ExampleBot", [A], True),  # C3
        ("User-agent: *\ncontent-signal: AI-TRAIN=NO", "ExampleBot", [D], True),  # C4
        (
            "User-agent: *\nContent-Signal: ai-train=no\nAllow: /\n\nUser-agent: ExampleBot\nAllow: /",
            "ExampleBot",
            [],
            False,
        ),
        (
            "User-agent: *\nContent-Signal: ai-train=no\nAllow: /\n\nUser-agent: ExampleBot\nAllow: /",
            "ExampleBot",
            [D],
            True,
        ),
        (
            "User-agent: *\nContent-Signal: search=yes,ai-train=no,use=reference",
            "ExampleBot",
            [D],
            True,
        ),  # C7
    ],
)
def test_content_signal_in_robots(text: str, agent: str, expected: list[Says], inherit: bool) -> None:
    found = contentsignal.findings_for(robots.parse(text), agent, "ai-train", None, inherit_star=inherit)
    assert [f.says for f in found] == expected


def test_content_signal_does_not_close_the_group() -> None:
    # C9: ExampleBot shares the group with OtherBot, whose Disallow binds it
    parsed = robots.parse(
        "User-agent: ExampleBot\nContent-Signal: ai-train=no\nUser-agent: OtherBot\nDisallow: /"
    )
    assert robots.findings_for("/a", parsed, "ExampleBot", [], None)[0].says is D


def test_content_signal_header_and_purposes() -> None:
    value = "ai-train=no, search=yes, ai-input=no"  # C6
    assert [f.says for f in contentsignal.findings_from_headers([value], "ai-train", None)] == [D]
    assert [f.says for f in contentsignal.findings_from_headers([value], "search", None)] == [A]
    assert [f.says for f in contentsignal.findings_from_headers([value], "ai-input", None)] == [D]


# -- ai.txt (§5) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("User-Agent: *\nDisallow: /\nDisallow: *", "/index.html", D),  # A1
        ("User-Agent: *\nDisallow: /\nDisallow: *", "/a.jpg", D),
        ("User-Agent: *\nDisallow: *.jpg\nDisallow: *.png", "/img/cat.jpg", D),  # A2
        ("User-Agent: *\nDisallow: *.jpg\nDisallow: *.png", "/index.html", A),
        ("User-agent: *\nAllow: *.html\nDisallow: *.jpg\nAllow: /", "/a.jpg", D),  # A3
        ("User-agent: *\nAllow: *.html\nDisallow: *.jpg\nAllow: /", "/a.html", A),
        ("User-Agent: *\nDisallow: *.jpg", "/a.jpg?w=200", D),  # A4
        ("User-Agent: *\nDisallow: *.jpg", "/a.jpgx", D),  # A5: robots semantics, by choice
        ("User-Agent: ExampleBot\nDisallow: /", "/x", D),  # A9
    ],
)
def test_aitxt(text: str, path: str, expected: Says) -> None:
    parsed = aitxt.parse(text.encode())
    assert parsed is not None
    found = aitxt.findings_for(path, parsed, "ExampleBot", [], "ai-train", None)
    assert found[0].says is expected
    assert all(f.signal == "ai-txt" for f in found)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("Agent: *\n  Training: allow\nAgent: ExampleBot/1.0\n  Training: deny\n", "/a"),  # a product token
        ("Training: allow\nAgent: GPTBot/1.1\n  Training: deny\n", "/a"),  # an honored one
        ("Training: conditional\nTraining-Allow: /*\nTraining-Deny: /members/?*\n", "/members/x"),  # globs
        ("Training: conditional\nTraining-Allow: /*\nTraining-Deny: /members/[a-z]*\n", "/members/x"),
        ("User-Agent: *\nDisallow: *.jpg\n\nTraining: deny\n", "/index.html"),  # both forms in one file
        ("Agent: ExampleBot\n  Training: deny\nAgent: ExampleBot\n  Training: allow\n", "/a"),  # said twice
    ],
)
def test_aitxt_key_value_reservations_are_read_every_way(text: str, path: str) -> None:
    parsed = aitxt.parse(text.encode())
    assert parsed is not None
    found = aitxt.findings_for(path, parsed, "ExampleBot", ["GPTBot"], "ai-train", None)
    assert any(f.says is D for f in found), found


def test_aitxt_other_formats_are_no_signal() -> None:
    assert aitxt.parse(b"<html><body>Under maintenance</body></html>") is None  # A7
    assert aitxt.parse(b"# Acme\n\nWe build widgets. Please be accurate.\n") is None  # A8


def test_aitxt_binds_training_only() -> None:
    parsed = aitxt.parse(b"User-Agent: *\nDisallow: /")
    assert parsed is not None
    assert aitxt.findings_for("/a", parsed, "ExampleBot", [], "search", None)[0].says is U


PAPER = """# ai.txt
# Spec-Version: 1.0
Site-Name: Daily Paper
Site-URL: https://paper.example
Training: conditional
Scraping: allow
Training-Allow: /free/*
Training-Deny: /free/premium/*

Agent: *
  Rate-Limit: 30/minute

Agent: GPTBot
  Training: deny
  Scraping: deny

Agent: ExampleBot
  Indexing: deny
"""


def kv_says(text: str, path: str, purpose: str = "ai-train", honor: tuple[str, ...] = ()) -> list[Says]:
    parsed = aitxt.parse(text.encode())
    assert isinstance(parsed, aitxt.KeyValueAiTxt)
    return [f.says for f in aitxt.findings_for(path, parsed, "ExampleBot", honor, purpose, None)]


@pytest.mark.parametrize(
    ("text", "path", "purpose", "expected"),
    [
        (
            "Site-Name: A\nTraining: deny\n",
            "/a",
            "ai-train",
            [D, A],
        ),  # training denied, scraping default allow
        ("Site-Name: A\nTraining: Allow\n", "/a", "ai-train", [A, A]),  # values are case-insensitive
        ("Site-Name: A\nSite-URL: https://a.example\n", "/a", "ai-train", [D, A]),  # Training's default: deny
        ("Site-Name: A\nTraining: allow\nScraping: deny\n", "/a", "ai-train", [A, D]),
        ("Site-Name: A\nTraining: allow\nScraping: deny\n", "/a", "ai-input", [D]),
        ("Site-Name: A\nTraining: deny\n", "/a", "search", [A]),  # Indexing defaults to allow
        ("Site-Name: A\nIndexing: deny\n", "/a", "search", [D]),
        (
            "Training: allow\nAgent: ExampleBot\n  Training: deny\n",
            "/a",
            "ai-train",
            [D, A],
        ),  # own block wins
        ("Training: deny\nAgent: *\n  Training: allow\n", "/a", "ai-train", [A, A]),  # * block over site-wide
        ("Training: maybe\n", "/a", "ai-train", [D, A]),  # an unknown value is unset: the default
        (PAPER, "/free/story", "ai-train", [A, A]),
        (PAPER, "/free/premium/story", "ai-train", [D, A]),  # Training-Deny first
        (PAPER, "/paid/story", "ai-train", [D, A]),  # conditional, no glob matches: denied
        (PAPER, "/free/story", "search", [D]),  # our own block: Indexing deny
    ],
)
def test_aitxt_key_value_form(text: str, path: str, purpose: str, expected: list[Says]) -> None:
    assert kv_says(text, path, purpose) == expected


def test_aitxt_key_value_honored_token_block_binds_us() -> None:
    # GPTBot's block denies training and scraping; we honor GPTBot, so both bind us too.
    parsed = aitxt.parse(PAPER.encode())
    assert parsed is not None
    found = aitxt.findings_for("/free/story", parsed, "ExampleBot", ("GPTBot",), "ai-train", None)
    assert [f.says for f in found if f.agent == "ExampleBot"] == [A, A]
    theirs = [f for f in found if f.agent == "GPTBot"]
    assert [(f.says, f.line) for f in theirs] == [(D, 14), (D, 15)]
    assert all("Agent: GPTBot" in f.detail for f in theirs)


def test_aitxt_forms_are_told_apart() -> None:
    assert isinstance(aitxt.parse(b"User-Agent: *\nDisallow: /\n"), robots.RobotsTxt)
    assert isinstance(aitxt.parse(b"Training: deny\n"), aitxt.KeyValueAiTxt)
    assert aitxt.parse(b"Title: my notes\nAuthor: me\n") is None  # key: value, but none of the draft's keys


# -- TDMRep file (§4.1) -------------------------------------------------------------


def file_says(
    body: bytes,
    path: str,
    purpose: str = "ai-train",
    precedence: str = "reservation-wins",
    *,
    lenient: bool = True,
) -> Says | None:
    rules = tdmrep.parse(body)
    if rules is None:
        return None
    found = tdmrep.prefetch_findings(
        tdmrep.file_channel(path, rules, None, lenient=lenient), purpose, precedence
    )
    return found[0].says if found else None


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        (b'[{"location":"/","tdm-reservation":1}]', "/any", D),  # D1
        (b'[{"location":"/","tdm-reservation":1.0}]', "/any", D),  # JSON's one number type
        (b'[{"location":"/","tdm-reservation":1e0}]', "/any", D),
        (
            b'[{"location":"/","tdm-reservation":1},{"location":"/images/","tdm-reservation":0}]',
            "/images/a.jpg",
            D,
        ),  # D2
        (
            b'[{"location":"/images/","tdm-reservation":0},{"location":"/","tdm-reservation":1}]',
            "/images/a.jpg",
            A,
        ),  # D3
        (b'[{"location":"/images/","tdm-reservation":0},{"location":"/","tdm-reservation":1}]', "/about", D),
        (
            b'[{"location":"/directory-b/images/*.jpg","tdm-reservation":0}]',
            "/directory-b/images/x.png",
            None,
        ),  # D4
        (b'{"location":"/","tdm-reservation":1}', "/a", D),  # D11: not an array, read leniently
        (b'[{"location":"/","tdm-reservation":"1"}]', "/a", D),  # D13: lenient string
        (
            b'[{"location":"/","tdm-reservation":2},{"location":"/","tdm-reservation":1}]',
            "/a",
            D,
        ),  # bad entry skipped
        (b"not json at all", "/a", None),
        (b"\xff\xfe[garbage", "/a", None),
        (b"[" * 100000, "/a", None),  # deep nesting: RecursionError caught
    ],
)
def test_tdmrep_file(body: bytes, path: str, expected: Says | None) -> None:
    assert file_says(body, path) is expected


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        # Near-misses seen in real files: the author's intent is clear.
        (b'{"location":"/","tdm-reservation":1,"tdm-policy":"https://x.example/p"}', "/a", D),
        (b'{"tdm-reservation":1}', "/any/page", D),  # no location: the whole site
        (b'[{"tdm-reservation":1}]', "/a", D),
        (b'[{"location":"/","tdm-reservation":true}]', "/a", D),
        (b'[{"location":"/","tdm-reservation":false}]', "/a", A),
        (b'{"location":"/img/","tdm-reservation":1}', "/text", None),  # the object's location still counts
        (b'{"name":"not tdmrep"}', "/a", None),  # an object that says nothing of TDM
    ],
)
def test_tdmrep_near_misses_are_read_as_meant(body: bytes, path: str, expected: Says | None) -> None:
    assert file_says(body, path) is expected
    if expected is not None:
        rules = tdmrep.parse(body)
        assert rules is not None
        channel = tdmrep.file_channel(path, rules, None)
        assert channel is not None and "lenient" in channel.detail
        # lenient_readings: ignore drops what only a lenient reading found
        assert file_says(body, path, lenient=False) is None


def test_tdmrep_without_lenient_readings_the_next_strict_entry_decides() -> None:
    # A lenient (boolean) entry first, a protocol-conforming one after it: with lenient readings
    # off, the file is matched as if the lenient entry were not there.
    body = b'[{"location":"/","tdm-reservation":false},{"location":"/","tdm-reservation":1}]'
    assert file_says(body, "/a") is A
    assert file_says(body, "/a", lenient=False) is D


def test_tdmrep_file_under_spec_precedence_waits_for_the_response() -> None:
    body = b'[{"location":"/","tdm-reservation":1}]'
    assert file_says(body, "/a", precedence="spec") is U
    assert file_says(body, "/a", purpose="search") is U


# -- DisallowAITraining (§11.3) --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("User-agent: *\nDisallowAITraining: /\nAllow: /", "/a", D),  # O1
        (
            "User-agent: *\nDisallowAITraining: /private/\nAllowAITraining: /private/open/",
            "/private/open/a",
            A,
        ),  # O2
        ("User-agent: *\nDisallowAITraining: /private/\nAllowAITraining: /private/open/", "/private/x", D),
        ("User-agent: *\nDisallowAITraining: /private/", "/public", None),
    ],
)
def test_disallow_ai_training(text: str, path: str, expected: Says | None) -> None:
    parsed = robots.parse(text)
    assert robots.findings_for(path, parsed, "ExampleBot", [], None)[0].says is A  # crawl allowed
    found = robots.ai_training_findings(path, parsed, "ExampleBot", "ai-train", None, inherit_star=True)
    assert (found[0].says if found else None) is expected


# -- RSL (§9) -------------------------------------------------------------------------

NS = 'xmlns="https://rslstandard.org/rsl"'


def lic(inner: str) -> bytes:
    return f"<rsl {NS}>{inner}</rsl>".encode()


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        (
            lic(
                '<content url="/"><license><permits type="usage">search</permits>'
                '<prohibits type="usage">ai-train</prohibits></license></content>'
            ),
            "/a",
            D,
        ),  # L1
        (
            lic(
                '<content url="/"><license><permits type="usage">all</permits><payment type="free"/></license></content>'
            ),
            "/a",
            A,
        ),  # L2
        (
            lic(
                '<content url="/"><license><permits type="usage">ai-train</permits><payment type="training">'
                '<amount currency="USD">10</amount></payment></license></content>'
            ),
            "/a",
            D,
        ),  # L3
        (
            lic(
                '<content url="/" server="https://api.example"><license><permits type="usage">all</permits></license></content>'
            ),
            "/a",
            D,
        ),  # L4
        (
            lic(
                '<content url="/"><license><permits type="usage">search ai-input</permits></license></content>'
            ),
            "/a",
            D,
        ),  # L5
        (
            lic('<content url="/"><license><prohibits type="usage">ai-all</prohibits></license></content>'),
            "/a",
            D,
        ),  # L6
        (
            lic(
                '<content url="/"><license><permits type="usage">ai-train search</permits>'
                '<prohibits type="usage">ai-train</prohibits></license></content>'
            ),
            "/a",
            D,
        ),  # L7
        (
            lic(
                '<content url="/archive/*"><license><prohibits type="usage">ai-all</prohibits></license></content>'
                '<content url="/"><license><permits type="usage">all</permits><payment type="free"/></license></content>'
            ),
            "/archive/x",
            D,
        ),  # L8
        (
            lic(
                '<content url="/archive/*"><license><prohibits type="usage">ai-all</prohibits></license></content>'
                '<content url="/"><license><permits type="usage">all</permits><payment type="free"/></license></content>'
            ),
            "/news/y",
            A,
        ),
        (
            lic(
                '<content url="/"><license><permits type="user">non-commercial</permits></license></content>'
            ),
            "/a",
            D,
        ),  # L9
        (
            lic('<content url="/"><license><permits type="usage">train-ai</permits></license></content>'),
            "/a",
            A,
        ),
        (
            lic(
                '<content url="https://other.example/"><license><prohibits type="usage">all</prohibits></license></content>'
            ),
            "/a",
            U,
        ),
    ],
)
def test_rsl(doc: bytes, path: str, expected: Says) -> None:
    parsed = rsl.parse(doc)
    assert parsed is not None
    found = rsl.findings_for(f"https://ex.example{path}", parsed, "ai-train", "commercial", None, "licence")
    assert found[0].says is expected


@pytest.mark.parametrize(
    "doc",
    [
        b"<html>not rsl</html>",
        b"<rsl><content url='/'>",  # truncated
        b'<!DOCTYPE rsl [<!ENTITY x "y">]><rsl>&x;</rsl>',  # entities refused
        b"\xff\xfe\x00\x01",
    ],
)
def test_rsl_unusable_documents(doc: bytes) -> None:
    assert rsl.parse(doc) is None  # L11: no signal


def test_license_line_is_file_wide_and_never_splits_groups() -> None:
    parsed = robots.parse(
        "User-agent: ExampleBot\nLicense: https://l.example/x.xml\nUser-agent: B\nDisallow: /"
    )
    assert [r.value for r in parsed.file_records("license")] == ["https://l.example/x.xml"]
    assert robots.findings_for("/a", parsed, "ExampleBot", [], None)[0].says is D


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://a.example/l.xml>; rel="license"; type="application/rsl+xml"', ["https://a.example/l.xml"]),
        (
            '<https://a.example/l.xml>; rel="nofollow license"; type="application/rsl+xml"',
            ["https://a.example/l.xml"],
        ),
        (
            "<https://a.example/lic,v1.xml>; rel=license; type=application/rsl+xml",
            ["https://a.example/lic,v1.xml"],
        ),
        (
            '<https://a.example/s.css>; rel=stylesheet, <https://a.example/l.xml>;rel="license";type="application/rsl+xml"',
            ["https://a.example/l.xml"],
        ),
        ('<https://a.example/l.xml>; rel="licensed"; type="application/rsl+xml"', []),
    ],
)
def test_rsl_link_header_is_read_as_rfc_8288_says(header: str, expected: list[str]) -> None:
    assert rsl.license_links([header]) == expected
