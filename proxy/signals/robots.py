"""robots.txt: Allow/Disallow rules per RFC 9309, read for our agent and `honor_agents`.

Implements RFC 9309 §2.1–2.5 (see shared/reference/signals.md §2). Grouping and
user-agent matching are ours, because Protego 0.7 gets them wrong in ways that
under-block (peers.md §1b); Protego's path normalisation and pattern matcher do
the matching of a path against each rule.

Deliberate choices, each marked where it is made:

* The body is cut at 500 KiB before parsing (§2.5), the cut line dropped; a
  line is cut at 16,664 characters (Google's guard). A BOM is stripped.
* Only Allow/Disallow close a run of User-agent lines (§2.2.1); Crawl-delay,
  Sitemap and unknown lines never split a group.
* A group's product token is its User-agent value up to the first whitespace,
  `/` or `*`, compared case-insensitively and for equality: `FooBot/1.0` names
  `FooBot`; `Foo` does not name `FooBot`.
* Our own agent uses its groups if any group names it, else the `*` groups
  (merged either way, §2.2.1). An `honor_agents` token binds us only through
  groups that name it: the `*` group is already ours.
* Longest match wins; Allow wins a tie (§2.2.2). Google's `index.html` rule is
  not applied: the RFC does not have it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from protego._urlpattern import _URLPattern
from protego._utils import _hexescape, _quote_pattern

from proxy.evidence import Document, Finding, Says
from proxy.paths import normalize

NAME = "robots-txt"
PATH = "/robots.txt"

# RFC 9309 §2.5: the parsing limit MUST be at least 500 KiB.
MAX_BYTES = 500 * 1024
# Google caps a line at 8 x 2083 octets; anything longer is a DoS, not a rule.
MAX_LINE = 16_664

# Google and Protego accept these spellings of the core keys (signals.md §2.4);
# accepting them can only add rules, never remove one.
_KEY_ALIASES = {
    "user-agent": "user-agent",
    "useragent": "user-agent",
    "user agent": "user-agent",
    "allow": "allow",
    "disallow": "disallow",
    "dissallow": "disallow",
    "dissalow": "disallow",
    "disalow": "disallow",
    "diasllow": "disallow",
    "disallaw": "disallow",
    "sitemap": "sitemap",
    "site-map": "sitemap",
}
_RULE_KEYS = frozenset({"allow", "disallow"})
# AIPREF attach-05 §3: Content-Usage is a rule too, so it also closes a run of
# User-agent lines (signals.md §2.5); it is kept as a group record.
_CLOSING_RECORDS = frozenset({"content-usage"})
# RSL's License line is not tied to a group (signals.md §9.1).
_FILE_WIDE_KEYS = frozenset({"sitemap", "host", "license"})
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")
_TOKEN_END = re.compile(r"[\s/*]")
_ASCII_SPACE = " \t\n\v\f\r"  # what robots.txt parsers trim (Python's strip() also trims Unicode spaces)
_IDENTIFIER = re.compile(r"[a-z_-]+")  # RFC 9309 §2.2.1 identifier (the token is lower-cased first)


@dataclass(frozen=True, slots=True)
class Rule:
    """One Allow or Disallow line."""

    allow: bool
    pattern: str  # the value as written (comment removed, whitespace trimmed)
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{'Allow' if self.allow else 'Disallow'}: {self.pattern}"


@dataclass(frozen=True, slots=True)
class Record:
    """A line that is not a rule: Crawl-delay, Content-Signal, unknown keys."""

    key: str  # lower-case
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Group:
    """A run of User-agent lines and the records that follow it."""

    agents: tuple[str, ...]  # product tokens, lower-case; "*" for the wildcard
    line: int  # line of the first User-agent
    rules: tuple[Rule, ...]
    records: tuple[Record, ...]


class RuleMatcher:
    """Longest-match evaluation of a merged rule list, returning the deciding rule.

    Built once per (file, token). A match costs about the same for 5 rules as
    for 5,000 (shared/reference/performance.md): plain rules are looked up by
    length in dictionaries (one slice and one dict look-up per distinct rule
    length), and wildcard rules are first rejected together by one compiled
    pattern, so most allowed paths never try them one by one.
    """

    __slots__ = ("_lengths", "_plain", "_reject", "_special")

    def __init__(self, rules: Iterable[Rule]) -> None:
        plain: dict[int, dict[str, Rule]] = {}
        special: list[tuple[_URLPattern, Rule]] = []
        for rule in rules:
            # A `$` is also read as a literal only where that is the stricter reading.
            for pattern in _patterns_of(rule.pattern, literal_dollar=not rule.allow):
                if (
                    pattern._contains_asterisk
                    or pattern._contains_dollar
                    or pattern.priority != len(pattern._pattern)
                ):
                    special.append((pattern, rule))
                    continue
                table = plain.setdefault(len(pattern._pattern), {})
                seen = table.get(pattern._pattern)
                # RFC 9309 §2.2.2: on a tie the Allow wins.
                if seen is None or (rule.allow and not seen.allow):
                    table[pattern._pattern] = rule
        # The most specific (longest) first; Allow first among equals.
        special.sort(key=lambda e: (e[0].priority, e[1].allow), reverse=True)
        self._special = tuple(special)
        self._plain = plain
        self._lengths = tuple(sorted(plain, reverse=True))
        self._reject = (
            re.compile(_trie_regex([_atoms(p._pattern) for p, _ in special])).match if special else None
        )

    def match(self, path: str) -> Rule | None:
        """Return the deciding rule for `path` (path plus ?query), or None if none matches."""
        quoted = normalize(path)
        best: Rule | None = None
        best_len = -1
        for length in self._lengths:
            if length <= len(quoted):
                hit = self._plain[length].get(quoted[:length])
                if hit is not None:
                    best, best_len = hit, length
                    break
        if self._reject is None or self._reject(quoted) is None:
            return best
        for pattern, rule in self._special:
            if pattern.priority < best_len or (
                pattern.priority == best_len and best is not None and best.allow
            ):
                break  # nothing further down can beat the plain rule found
            if pattern.match(quoted):
                return rule
        return best


def _atoms(pattern: str) -> list[str]:
    """A robots.txt pattern (already normalised) as regular-expression atoms, anchored at the start."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    atoms = [".*" if c == "*" else re.escape(c) for c in body]
    return [*atoms, r"\Z"] if anchored else atoms


def _trie_regex(patterns: list[list[str]]) -> str:
    """One regular expression matching any of `patterns`, their common prefixes merged.

    Thousands of rules that share a beginning (`/*/tmp-1/`, `/*/tmp-2/`, ...)
    become one branch per distinct atom, so a path is rejected in a few steps,
    not one attempt per rule.
    """
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    end = ""  # the key that marks where a pattern ends
    for atoms in patterns:
        node = trie
        for atom in atoms:
            node = node.setdefault(atom, {})
        node[end] = {}

    def emit(node: dict) -> str:  # type: ignore[type-arg]
        if end in node:
            return ""  # a pattern ends here: it matches as a prefix, whatever follows
        branches = [atom + emit(child) for atom, child in node.items()]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return emit(trie)


def _patterns_of(value: str, *, literal_dollar: bool = True) -> list[_URLPattern]:
    """The URL patterns a rule value stands for (none for an empty or dead value).

    `literal_dollar`: also read each `$` as a literal character (an Allow is not
    widened that way: the second reading may only ever block more).
    """
    if not value:
        return []  # RFC 9309 §2.2.2: an empty Disallow matches nothing
    if not value.startswith(("/", "*")):
        # signals.md §2.6: a pattern that starts with neither can never match.
        return []
    values = [value]
    if literal_dollar and "$" in value:
        # A "$" not at the end is a literal; the URL side encodes a literal "$"
        # as %24 (signals.md §2.6 step 4), so also match the literal reading.
        values.append(value.replace("$", _hexescape("$")))
    out = []
    for v in values:
        quoted = _quote_pattern(v)
        if not quoted:
            continue
        out.append(_URLPattern(quoted))
        if "%2F" in quoted:
            # A server that decodes %2F serves `/a%2Fb` as `/a/b` (Google's parser reads it so):
            # the rule stands for both, as the path side judges both forms (proxy.paths.variants),
            # with the priority of the rule as written.
            decoded = _URLPattern(quoted.replace("%2F", "/"))
            decoded.priority = len(quoted)
            out.append(decoded)
    return out


class ScopedValues:
    """Path-scoped values (Content-Usage, DisallowAITraining): longest matching path wins.

    A value with no path is scoped to the empty path, the shortest of all
    (AIPREF attach-05 §3). Ties are returned together for the caller to combine.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[str, Record]]) -> None:
        compiled: list[tuple[list[_URLPattern] | None, Record]] = []
        for path, record in entries:
            compiled.append((None if not path else _patterns_of(path), record))
        self._entries = compiled

    def best(self, path: str) -> list[Record]:
        """The records whose path matches `path` with the greatest length."""
        quoted = normalize(path)
        best_len = -1
        best: list[Record] = []
        for patterns, record in self._entries:
            if patterns is None:
                length = 0
            else:
                lengths = [p.priority for p in patterns if p.match(quoted)]
                if not lengths:
                    continue
                length = max(lengths)
            if length > best_len:
                best_len, best = length, [record]
            elif length == best_len:
                best.append(record)
        return best


class PathPattern:
    """A robots-style pattern (`*`, `$`, RFC 9309 §2.2.2 percent rules), compiled once.

    Other files reuse robots.txt's matching (tdmrep.json locations, RSL content URLs);
    they compile their patterns when the file is parsed, not on every request.
    """

    __slots__ = ("_patterns", "value")

    def __init__(self, value: str) -> None:
        self.value = value
        self._patterns = tuple(_patterns_of(value))

    def matches(self, path: str) -> bool:
        """True if the pattern matches `path` (path plus ?query)."""
        quoted = normalize(path)
        return any(p.match(quoted) for p in self._patterns)


def product_token(value: str) -> str:
    """The product token a User-agent value names, lower-case ("*" for the wildcard)."""
    v = value.strip()
    # The wildcard only when the first word is exactly `*` (`* crawlers` too, as Google reads it):
    # `*WordPress*` or `*Bot` name no crawler, not every crawler.
    if v.split(None, 1)[:1] == ["*"]:
        return "*"
    return _TOKEN_END.split(v, maxsplit=1)[0].lower()


@dataclass(slots=True)
class RobotsTxt:
    """A parsed robots.txt: its groups and file-wide records."""

    groups: tuple[Group, ...]
    records: tuple[Record, ...]  # file-wide: Sitemap, Host, and lines before any group
    skipped: int  # lines that could not be read as `key: value`
    _matchers: dict[tuple[str, bool], RuleMatcher | None] = field(default_factory=dict, repr=False)
    _named: frozenset[str] | None = field(default=None, repr=False)
    _records: dict[tuple[str, str, bool], tuple[tuple[Record, str], ...]] = field(
        default_factory=dict, repr=False
    )

    def named_tokens(self) -> frozenset[str]:
        """Every token some group names, lower-case (computed once)."""
        if self._named is None:
            self._named = frozenset(a for g in self.groups for a in g.agents)
        return self._named

    def names(self, token: str) -> bool:
        """True if some group names `token` (case-insensitive)."""
        return token.lower() in self.named_tokens()

    def groups_for(self, token: str, *, star_fallback: bool) -> tuple[Group, ...]:
        """The groups that apply to `token`: those naming it, else (if asked) the `*` groups."""
        t = token.lower()
        named = tuple(g for g in self.groups if t in g.agents)
        if named or not star_fallback:
            return named
        return tuple(g for g in self.groups if "*" in g.agents)

    def records_for(self, token: str, key: str, *, inherit_star: bool) -> tuple[tuple[Record, str], ...]:
        """Group records named `key` that apply to `token`, each with the group's agent.

        The token's own groups apply, else the `*` groups. With `inherit_star`,
        the `*` groups' records also apply when the token's groups have none of
        `key` (signals.md §13.7, read to protect the rights holder).
        """
        cache_key = (token.lower(), key, inherit_star)
        hit = self._records.get(cache_key)
        if hit is not None:
            return hit
        own = self.groups_for(token, star_fallback=False)
        found = tuple((r, token) for g in own for r in g.records if r.key == key)
        if not found and (inherit_star or not own):
            found = tuple((r, "*") for g in self.groups if "*" in g.agents for r in g.records if r.key == key)
        self._records[cache_key] = found
        return found

    def file_records(self, key: str) -> tuple[Record, ...]:
        """File-wide records named `key` (e.g. RSL License lines)."""
        return tuple(r for r in self.records if r.key == key)

    def warm(self, tokens: Iterable[str]) -> RobotsTxt:
        """Build the matchers the first token (our agent) and the others (honored) will ask for."""
        for i, token in enumerate(tokens):
            if i == 0 or self.names(token):
                self.matcher_for(token, star_fallback=i == 0)
        return self

    def matcher_for(self, token: str, *, star_fallback: bool) -> RuleMatcher | None:
        """The merged rules for `token`, or None when no group applies to it (cached)."""
        key = (token.lower(), star_fallback)
        if key not in self._matchers:
            groups = self.groups_for(token, star_fallback=star_fallback)
            self._matchers[key] = RuleMatcher(r for g in groups for r in g.rules) if groups else None
        return self._matchers[key]


def decode(body: bytes) -> tuple[str, bool]:
    """Cut `body` at MAX_BYTES (dropping a cut line) and decode it; returns (text, truncated)."""
    truncated = len(body) > MAX_BYTES
    if truncated:
        ends_a_line = body[MAX_BYTES : MAX_BYTES + 1] in (b"\n", b"\r")
        body = body[:MAX_BYTES]
        if not ends_a_line:
            # signals.md §2.3: drop the line cut by the limit (the fetch keeps a byte past it,
            # so a line that ends exactly at the limit is whole).
            last_nl = max(body.rfind(b"\n"), body.rfind(b"\r"))
            body = body[: last_nl + 1] if last_nl >= 0 else b""
    # utf-8-sig strips a BOM, which would otherwise hide the first group
    # (peers.md §1b); undecodable bytes become U+FFFD rather than an error.
    return body.decode("utf-8-sig", errors="replace"), truncated


def _split_line(line: str) -> tuple[str, str] | None:
    """`key: value` (typo-tolerant), or None for a line that is neither."""
    key, sep, value = line.partition(":")
    if not sep:
        # Google's leniency: "Disallow /x" with exactly two tokens.
        parts = line.split()
        if len(parts) != 2:
            return None
        key, value = parts
    key = " ".join(key.split()).lower()
    return _KEY_ALIASES.get(key, key), value.strip(_ASCII_SPACE)


def parse(body: bytes | str) -> RobotsTxt:
    """Parse a robots.txt body; never raises on content (hostile input yields fewer rules)."""
    text = decode(body)[0] if isinstance(body, bytes) else body.removeprefix("\ufeff")
    groups: list[Group] = []
    file_records: list[Record] = []
    skipped = 0
    agents: list[str] = []
    rules: list[Rule] = []
    records: list[Record] = []
    group_line = 0
    seen_rule = False

    def close() -> None:
        if agents:
            groups.append(Group(tuple(agents), group_line, tuple(rules), tuple(records)))

    for number, raw in enumerate(_LINE_SPLIT.split(text), start=1):
        line = raw[:MAX_LINE].split("#", 1)[0].strip(_ASCII_SPACE)
        if not line:
            continue  # RFC 9309 §2.2.1: blank lines and comments do not end a group
        kv = _split_line(line)
        if kv is None:
            skipped += 1
            continue
        key, value = kv
        if key == "user-agent":
            if seen_rule:  # a User-agent after a rule starts a new group
                close()
                agents, rules, records, seen_rule = [], [], [], False
            token = product_token(value)
            if not token:
                skipped += 1
                continue
            if not agents:
                group_line = number
            agents.append(token)
            # RFC 9309's product token is letters, "-" and "_" only, and Google's parser
            # reads the run of those the value starts with: `ExampleBot2` names ExampleBot too.
            identifier = _IDENTIFIER.match(token)
            if identifier and identifier.group() != token:
                agents.append(identifier.group())
        elif key in _FILE_WIDE_KEYS:
            file_records.append(Record(key, value, number))
        elif key in _RULE_KEYS:
            if not agents:
                continue  # RFC 9309 §2.2.2: rules before the first group are ignored
            # A Disallow is read without a stray non-breaking (or other Unicode) space at
            # its ends, as its author meant it; an Allow is read as written (Google's reading),
            # so neither reading can let more through than the other.
            allow = key == "allow"
            rules.append(Rule(allow, value if allow else value.strip(), number))
            seen_rule = True
        elif agents:
            # RFC 9309 §2.2.4: other records never interfere with grouping.
            records.append(Record(key, value, number))
            if key in _CLOSING_RECORDS:
                seen_rule = True
        else:
            file_records.append(Record(key, value, number))
    close()
    return RobotsTxt(tuple(groups), tuple(file_records), skipped)


def is_self(path: str) -> bool:
    """True for a request of /robots.txt itself (path plus ?query)."""
    return path == PATH or path.startswith(PATH + "?")


def self_allowed(document: Document | None, agent: str | None = None) -> Finding:
    """RFC 9309 §2.3: /robots.txt itself is implicitly allowed, whatever the file says or whether
    it answered at all."""
    return Finding(NAME, Says.ALLOW, "/robots.txt is always allowed", document, agent=agent)


def findings_for(
    path: str,
    robots: RobotsTxt,
    agent: str,
    honor_agents: Iterable[str],
    document: Document | None,
    *,
    signal: str = NAME,
) -> list[Finding]:
    """Findings for `path` (path plus ?query): one for our agent, one per honored token that disallows.

    Our agent's finding is always there, so the audit record names the
    robots.txt that was in force even when it allowed the request. `signal`
    names the source when the same engine reads another file (ai.txt).
    """
    if signal == NAME and is_self(path):
        return [self_allowed(document, agent)]
    findings: list[Finding] = []
    matcher = robots.matcher_for(agent, star_fallback=True)
    rule = matcher.match(path) if matcher is not None else None
    if rule is None:
        groups = "no group applies" if matcher is None else "no rule matches"
        findings.append(Finding(signal, Says.ALLOW, groups, document, agent=agent))
    else:
        own_group = robots.names(agent)
        findings.append(
            Finding(
                signal,
                Says.ALLOW if rule.allow else Says.DISALLOW,
                str(rule),
                document,
                line=rule.line,
                agent=agent if own_group else "*",
            )
        )
    seen = {agent.lower()}
    named = robots.named_tokens()
    for token in honor_agents:
        lowered = token.lower()
        if lowered not in named or lowered in seen:
            continue  # most files name few of the honored tokens: skip the rest cheaply
        seen.add(lowered)
        m = robots.matcher_for(token, star_fallback=False)
        r = m.match(path) if m is not None else None
        if r is not None and not r.allow:
            findings.append(Finding(signal, Says.DISALLOW, str(r), document, line=r.line, agent=token))
    return findings


# draft-canel-robots-ai-control (signals.md §11.3): group-scoped path rules.
AI_TRAINING_KEYS = ("disallowaitraining", "allowaitraining")


def ai_training_findings(
    path: str, robots: RobotsTxt, agent: str, purpose: str, document: Document | None, *, inherit_star: bool
) -> list[Finding]:
    """A finding from DisallowAITraining / AllowAITraining lines: longest match, Allow wins a tie."""
    records = [
        (r, who)
        for key in AI_TRAINING_KEYS
        for r, who in robots.records_for(agent, key, inherit_star=inherit_star)
    ]
    if not records:
        return []
    scoped = ScopedValues((r.value, r) for r, _ in records if r.value)
    best = scoped.best(path)
    if not best:
        return []
    allow = [r for r in best if r.key == "allowaitraining"]
    rule = allow[0] if allow else best[0]
    who = next(w for r, w in records if r is rule)
    label = "AllowAITraining" if rule.key == "allowaitraining" else "DisallowAITraining"
    detail = f"{label}: {rule.value}"
    if purpose != "ai-train":
        return [Finding(NAME, Says.UNKNOWN, f"{detail} (addresses training only)", document, rule.line, who)]
    says = Says.ALLOW if allow else Says.DISALLOW
    return [Finding(NAME, says, detail, document, line=rule.line, agent=who)]
