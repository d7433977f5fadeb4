"""Our robots.txt reading against Google's reference parser (PyPI `fast-robotstxt`).

Shared by the differential test (tests/test_robots_differential.py, a bounded
run in CI) and bench/robots_diff.py (100,000+ cases). Files are built from the
pieces real sites use: typo'd keys, wildcard-looking tokens, stray whitespace,
non-breaking spaces, BOMs, CR and CRLF endings, `//` rules, `$` and `*`,
percent-encodings, comments everywhere.

Every disagreement must fall in one of the deliberate classes below (each is
listed in README.md, "Deliberate choices"), or it is a bug.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import robotstxt

from proxy.evidence import Says
from proxy.paths import variants
from proxy.signals import robots

AGENT = "ExampleBot"
AGENT_VALUES = (
    "*", "ExampleBot", "examplebot", "exAMPLEbot", "ExampleBot/1.0", "ExampleBot2", "Example-Bot", "Example_Bot",
    "*WordPress*", "*Bot", "* all", "Other", "GPTBot", " ExampleBot ", "ExampleBot extra", "ExampleBot\u00a0",
)  # fmt: skip
RULE_VALUES = (
    "/", "", "/private", "/private/", "/p", "/*.php", "/*.php$", "/a$", "/fish*", "/*?", "/x?y=1", "/%7Ea", "/~a",
    "/a%2fb", "/a/b", "/caf%C3%A9", "/café", "*", "/Fish", "/search", "/$", "/*/", "//", "//a", "/a//b",
    "/private # note", "/private\u00a0", "/*.jpg", "/a%2Ab", "/a*b",
)  # fmt: skip
PATHS = (
    "/", "/a", "/a/b", "/private", "/private/x", "/p", "/public/x", "/a.jpg", "/a.php", "/x?y=1", "/%7Ea", "/~a",
    "/a%2Fb", "/caf%C3%A9", "/café", "/a$", "/search?q=", "/index.html", "/fish", "/fish.html", "/Fish", "//a",
    "/a//b", "/a*b", "/a%2Ab", "/robots.txt",
)  # fmt: skip
KEYS = (
    "User-agent", "user-agent", "USER-AGENT", "useragent", "user agent", "Disallow", "disallow", "DISALLOW",
    "dissallow", "Disalow", "Allow", "allow", "Crawl-delay", "Sitemap", "Noindex", "Content-Usage",
)  # fmt: skip
SEPARATORS = (": ", ":", " : ", ":\t", ":  ")
NOISE = ("", "# comment", "   ", "\t", "#User-agent: *")


def generate(rng: random.Random) -> tuple[bytes, str]:
    """One robots.txt file and one path to ask about."""
    lines = []
    for _ in range(rng.randint(1, 12)):
        key = rng.choice(KEYS)
        flat = key.lower().replace(" ", "").replace("-", "")
        if flat == "useragent":
            value = rng.choice(AGENT_VALUES)
        elif flat == "crawldelay":
            value = "5"
        elif flat == "sitemap":
            value = "https://x.example/s.xml"
        elif flat == "contentusage":
            value = "train-ai=n"
        else:
            value = rng.choice(RULE_VALUES)
        line = f"{key}{rng.choice(SEPARATORS)}{value}"
        if rng.random() < 0.1:
            line += "  # trailing comment"
        lines.append(line)
        if rng.random() < 0.15:
            lines.append(rng.choice(NOISE))
    if rng.random() < 0.05:  # a huge group
        lines += [f"Disallow: /bulk-{i}/" for i in range(300)]
    ending = rng.choice(("\n", "\n", "\n", "\r\n", "\r"))
    text = ending.join(lines) + ending
    body = text.encode()
    if rng.random() < 0.05:
        body = b"\xef\xbb\xbf" + body
    return body, rng.choice(PATHS)


def ours(body: bytes, path: str, *, forms: bool = True) -> bool:
    """True if we allow `path` for our agent (every form the origin may serve, as the proxy judges)."""
    parsed = robots.parse(body)
    for form in variants(path) if forms else (path,):
        found = robots.findings_for(form, parsed, AGENT, (), None)
        if any(f.says is Says.DISALLOW for f in found):
            return False
    return True


_GOOGLE = robotstxt.RobotsMatcher()


def google(body: bytes, path: str) -> bool:
    """True if Google's parser allows `path` for our agent."""
    return bool(_GOOGLE.is_allowed(body.decode("utf-8", "replace"), AGENT, "http://example.com" + path))


_DISALLOW = re.compile(rb"(?i)\s*d\w*s+a\w*\s*:")  # disallow and its typos
_CONTENT_USAGE = re.compile(rb"(?i)\s*content-usage\s*:")
_UNRESERVED = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|[46][1-9a-fA-F]|[57][0-9aA]|3[0-9])")


def _decode_unreserved(text: str) -> str:
    return _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), text)


@dataclass(frozen=True)
class Outcome:
    ours: bool
    google: bool
    why: str | None  # the deliberate class of a disagreement; None when they agree, "UNEXPLAINED" else


def compare(body: bytes, path: str) -> Outcome:
    """Both verdicts and, when they differ, which deliberate choice explains it."""
    a, b = ours(body, path), google(body, path)
    if a == b:
        return Outcome(a, b, None)
    if a and path == "/robots.txt":
        return Outcome(a, b, "robots-txt-itself")  # RFC 9309 §2.3: always allowed
    lines = re.split(rb"\r\n|\r|\n", body)
    if any(_CONTENT_USAGE.match(line) for line in lines):
        stripped = b"\n".join(line for line in lines if not _CONTENT_USAGE.match(line))
        if ours(stripped, path) == google(stripped, path):
            return Outcome(a, b, "content-usage-is-a-rule")  # AIPREF: it closes a run of User-agent lines
    if not a and b"\xc2\xa0" in body:
        trimmed = b"\n".join(
            line.replace(b"\xc2\xa0", b"") if _DISALLOW.match(line) else line for line in lines
        )
        if google(trimmed, path) == a:
            return Outcome(a, b, "disallow-without-stray-spaces")  # a Disallow's NBSP is trimmed
    if not a and any(ours(body, form, forms=False) == b for form in variants(path)):
        return Outcome(a, b, "strictest-form")  # another form a server may serve is disallowed
    if not a and ("$" in path or "%24" in path) and b"$" in body:
        return Outcome(a, b, "dollar-literal")  # a `$` is also read as a literal character
    text = body.decode("utf-8", "replace")
    if google(_decode_unreserved(text).encode(), _decode_unreserved(path)) == a:
        return Outcome(a, b, "unreserved-equivalence")  # `%7E` and `~` are one character (RFC 3986)
    return Outcome(a, b, "UNEXPLAINED")
