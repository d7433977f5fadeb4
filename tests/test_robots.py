"""robots.txt parsing and matching: RFC 9309 vectors with hand-written expectations.

Vectors are from shared/reference/signals.md §2.9 (R*) and peers.md §1b.
"""

from __future__ import annotations

import pytest
from protego import Protego

from proxy.evidence import Says
from proxy.signals import robots

ALLOW, BLOCK = "allow", "block"


def verdict(text: str | bytes, path: str, agent: str = "ExampleBot", honor: tuple[str, ...] = ()) -> str:
    findings = robots.findings_for(path, robots.parse(text), agent, honor, None)
    return BLOCK if any(f.says is Says.DISALLOW for f in findings) else ALLOW


@pytest.mark.parametrize(
    ("name", "text", "path", "expected"),
    [
        ("R1", "User-agent: *\nDisallow: /", "/x", BLOCK),
        (
            "R2",
            "User-agent: ExampleBot\nDisallow: /private/\n\nUser-agent: *\nDisallow: /",
            "/public",
            ALLOW,
        ),
        ("R3", "User-agent: examplebot\nDISALLOW: /", "/", BLOCK),
        ("R4", "User-agent: ExampleBot/2.1\nDisallow: /", "/", BLOCK),
        ("R5", "User-agent: ExampleBotExtra\nDisallow: /", "/", ALLOW),
        ("R6", "User-agent: ExampleBot\nDisallow: /p\nAllow: /p", "/page", ALLOW),
        ("R7", "User-agent: ExampleBot\nAllow: /page\nDisallow: /*.html", "/page.html", BLOCK),
        ("R8", "User-agent: ExampleBot\nAllow: /x/page.\nDisallow: /*.html", "/x/page.html", ALLOW),
        ("R9a", "User-agent: ExampleBot\nDisallow: /foo/bar$", "/foo/bar", BLOCK),
        ("R9b", "User-agent: ExampleBot\nDisallow: /foo/bar$", "/foo/bar/", ALLOW),
        ("R9c", "User-agent: ExampleBot\nDisallow: /foo/bar$", "/foo/bar?x=1", ALLOW),
        ("R10a", "User-agent: ExampleBot\nDisallow: /*.gif$", "/dir/a.gif", BLOCK),
        ("R10b", "User-agent: ExampleBot\nDisallow: /*.gif$", "/a.gif?x", ALLOW),
        ("R11", "User-agent: ExampleBot\nDisallow: /search?q=", "/search?q=cats", BLOCK),
        ("R12", "User-agent: ExampleBot\nDisallow: /X/", "/x/y", ALLOW),
        (
            "R13",
            "User-agent: ExampleBot\nCrawl-delay: 5\nUser-agent: OtherBot\nDisallow: /",
            "/",
            BLOCK,
        ),
        ("R14", "User-agent: ExampleBot\n\nUser-agent: *\nDisallow: /", "/b", BLOCK),
        ("R15", "User-agent: ExampleBot\nDisallow:\n\nUser-agent: *\nDisallow: /", "/b", ALLOW),
        ("R16", "Disallow: /\nUser-agent: ExampleBot\nAllow: /a", "/b", ALLOW),
        (
            "R19",
            "User-agent: ExampleBot\nDisallow: /\nAllow: /foo/bar/%62%61%7A",
            "/foo/bar/baz",
            ALLOW,
        ),
        (
            "R20",
            "User-agent: ExampleBot\nDisallow: /\nAllow: /foo/bar/ツ",
            "/foo/bar/%E3%83%84",
            ALLOW,
        ),
        (
            "R21",
            "User-agent: ExampleBot\nDisallow: /path/file-with-a-%2A.html",
            "/path/file-with-a-*.html",
            BLOCK,
        ),
        # R22 says ALLOW (%2F stays encoded). A server that decodes %2F serves /a%2Fb as /a/b,
        # and Google's parser blocks it: we do too (README, "Deliberate choices").
        ("R22", "User-agent: ExampleBot\nDisallow: /a%2fb", "/a/b", BLOCK),
        ("R23", "User-agent: *\nDisallow: /", "/robots.txt", ALLOW),
        ("R24", "User-agent: ExampleBot\nDisallow: /x # Disallow: /", "/y", ALLOW),
        ("R25", "User-agent: ExampleBot\nDisallow: private/", "/private/a", ALLOW),
        # peers.md §1b: the product-token cases Protego gets wrong
        (
            "Foo-vs-FooBot",
            "User-agent: Example\nDisallow: /\n\nUser-agent: *\nAllow: /",
            "/a",
            ALLOW,
        ),
        ("two-words", "User-agent: ExampleBot crawler\nDisallow: /", "/a", BLOCK),
        ("star-suffix", "User-agent: Example*\nDisallow: /", "/a", ALLOW),
        ("BOM", "\ufeffUser-agent: *\nDisallow: /", "/a", BLOCK),
        ("CRLF", "User-agent: *\r\nDisallow: /a\r\n", "/a/b", BLOCK),
        ("CR-only", "User-agent: *\rDisallow: /a\r", "/a/b", BLOCK),
        ("typo", "User-agent: *\nDisalow: /a", "/a", BLOCK),
        ("no-colon", "User-agent: *\nDisallow /a", "/a", BLOCK),
        (
            "star-only-if-unnamed",
            "User-agent: ExampleBot\nAllow: /\n\nUser-agent: *\nDisallow: /",
            "/a",
            ALLOW,
        ),
        ("html-body", "<html><body>Not found</body></html>", "/a", ALLOW),
        (
            "sitemap-no-split",
            "User-agent: ExampleBot\nSitemap: /s.xml\nUser-agent: X\nDisallow: /",
            "/a",
            BLOCK,
        ),
        ("dollar-mid-literal", "User-agent: *\nDisallow: /a$b", "/a$b", BLOCK),
    ],
)
def test_rfc9309_vectors(name: str, text: str, path: str, expected: str) -> None:
    assert verdict(text, path) == expected, name


@pytest.mark.parametrize(
    ("value", "path", "expected"),
    [
        # Real sites: a value that merely starts with `*` names no crawler (Google's parser agrees).
        ("*WordPress*", "/a", ALLOW),
        ("*Bot", "/a", ALLOW),
        ("**", "/a", ALLOW),
        ("*/1.0", "/a", ALLOW),
        # The wildcard itself, and `*` followed by a space and more words, is every crawler.
        ("*", "/a", BLOCK),
        ("* crawlers", "/a", BLOCK),
        ("*\t# all", "/a", BLOCK),
    ],
)
def test_only_an_exact_star_is_the_wildcard(value: str, path: str, expected: str) -> None:
    assert verdict(f"User-agent: {value}\nDisallow: /\n", path) == expected


def test_a_star_prefixed_group_does_not_swallow_the_next_rules() -> None:
    text = "User-agent: *\nDisallow: /private\n\nUser-agent: *WordPress*\nDisallow: /\n"
    assert verdict(text, "/public") == ALLOW
    assert verdict(text, "/private/x") == BLOCK


def test_bom_bytes_do_not_hide_the_first_group() -> None:
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /private\n"
    assert verdict(body, "/private/x") == BLOCK


def test_merged_groups_equal_length_allow_wins() -> None:
    # R17: Cloudflare-managed block plus the site's own group for GPTBot.
    text = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: GPTBot\nAllow: /"
    assert verdict(text, "/x", agent="GPTBot") == ALLOW


def test_merged_star_groups() -> None:
    # R18: two * groups merge; /api/ is longer than /.
    text = "User-agent: *\nContent-Signal: search=yes,ai-train=no\nAllow: /\n\nUser-agent: *\nDisallow: /api/"
    assert verdict(text, "/api/v1") == BLOCK
    assert verdict(text, "/home") == ALLOW


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("User-agent: GPTBot\nDisallow: /", "/a", BLOCK),  # T1 (honored)
        ("User-agent: Google-Extended\nDisallow: /", "/a", BLOCK),  # T2
        ("User-agent: OAI-SearchBot\nDisallow: /", "/a", ALLOW),  # T3: not honored
        ("User-agent: GPTBot/1.2\nDisallow: /img/", "/img/a.png", BLOCK),
        ("User-agent: GPTBot\nDisallow: /img/", "/text", ALLOW),
        # a * group never binds through an honored token, only through our own
        ("User-agent: ExampleBot\nAllow: /\n\nUser-agent: *\nDisallow: /", "/a", ALLOW),
    ],
)
def test_honor_agents(text: str, path: str, expected: str) -> None:
    assert verdict(text, path, honor=("GPTBot", "Google-Extended")) == expected


def test_deciding_rule_and_line_are_reported() -> None:
    text = "# comment\nUser-agent: *\nAllow: /public\n\nUser-agent: GPTBot\nDisallow: /private\n"
    findings = robots.findings_for("/private/x", robots.parse(text), "ExampleBot", ["GPTBot"], None)
    own, gpt = findings
    assert (own.says, own.agent) == (Says.ALLOW, "ExampleBot")
    assert (gpt.says, gpt.detail, gpt.line, gpt.agent) == (
        Says.DISALLOW,
        "Disallow: /private",
        6,
        "GPTBot",
    )
    allow = robots.findings_for("/public/a", robots.parse(text), "ExampleBot", [], None)[0]
    assert (allow.detail, allow.line, allow.agent) == ("Allow: /public", 3, "*")


def test_size_cap_drops_rules_past_500_kib() -> None:
    filler = b"# " + b"x" * 1000 + b"\n"
    early = b"User-agent: ExampleBot\nDisallow: /early\n"
    late = b"User-agent: OtherBot\nDisallow: /\nUser-agent: ExampleBot\nDisallow: /late\n"
    body = early + filler * 540 + late  # `late` starts past 540 KB
    assert len(body) > robots.MAX_BYTES
    _, truncated = robots.decode(body)
    assert truncated
    parsed = robots.parse(body)
    assert verdict(body, "/early") == BLOCK  # R26: inside the first 500 KiB
    assert verdict(body, "/late") == ALLOW  # R27: we ignore what lies past 500 KiB
    assert all(r.pattern != "/late" for g in parsed.groups for r in g.rules)


def test_cut_line_is_dropped() -> None:
    body = b"User-agent: *\n" + b"#" * (robots.MAX_BYTES - 30) + b"\nDisallow: /abcdefghijklmnopqrstuvwxyz"
    text, truncated = robots.decode(body)
    assert truncated
    assert "Disallow" not in text


def test_hostile_input_never_raises() -> None:
    for body in [
        b"\xff\xfe\x00garbage",
        bytes(range(256)) * 100,
        b"User-agent:\n" * 1000,
        b":" * 20000,
    ]:
        parsed = robots.parse(body)
        assert isinstance(parsed, robots.RobotsTxt)


def test_overlong_line_is_cut_not_fatal() -> None:
    text = "User-agent: *\nDisallow: /" + "a" * 100_000 + "\nDisallow: /b\n"
    assert verdict(text, "/b") == BLOCK


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("User-agent: *\nDisallow: /a\nAllow: /a/b", "/a/b/c"),
        ("User-agent: *\nDisallow: /*.php$\nAllow: /x", "/x/index.php"),
        ("User-agent: *\nDisallow: /search?q=*&page", "/search?q=a&page=2"),
        ("User-agent: *\nDisallow: /%7Euser", "/~user/a"),
        ("User-agent: *\nAllow: /$\nDisallow: /", "/"),
        ("User-agent: *\nAllow: /$\nDisallow: /", "/a"),
    ],
)
def test_matching_agrees_with_protego_where_protego_is_right(text: str, path: str) -> None:
    """Cross-check: for files with only a * group, Protego's public API is an oracle."""
    ours = verdict(text, path)
    theirs = ALLOW if Protego.parse(text).can_fetch(url=path, user_agent="ExampleBot") else BLOCK
    assert ours == theirs
