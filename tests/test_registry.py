"""Registry matching: subdomains, spelling evasions, paths, scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.errors import PolicyError
from proxy.origin import canonical_host
from proxy.policy import load_policy
from proxy.registry import Entry, Registry
from tests.policies import entry, write_policy

REPO = Path(__file__).resolve().parent.parent


def make(*entries: Entry) -> Registry:
    return Registry(entries)


def E(holder: str, *domains: str, paths: tuple[str, ...] = ()) -> Entry:
    return Entry(
        holder,
        tuple(canonical_host(d) for d in domains),
        paths,
        "r",
        "https://s",
        "2025-10-27",
        "f",
        1,
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("ghibli.jp", "Ghibli"),
        ("www.ghibli.jp", "Ghibli"),
        ("a.b.c.ghibli.jp", "Ghibli"),
        ("GHIBLI.JP", "Ghibli"),
        ("ghibli.jp.", "Ghibli"),
        ("Www.Ghibli.Jp..", "Ghibli"),
        ("notghibli.jp", None),
        ("ghibli.jp.evil.com", None),
        ("jp", None),
        ("bücher.example", "Buecher"),
        ("xn--bcher-kva.example", "Buecher"),
        ("XN--BCHER-KVA.EXAMPLE", "Buecher"),
        ("shop.BÜCHER.example", "Buecher"),
        ("ｇｈｉｂｌｉ．ｊｐ", "Ghibli"),  # full-width letters and dot (UTS #46 maps them)
    ],
)
def test_host_spellings(host: str, expected: str | None) -> None:
    reg = make(E("Ghibli", "ghibli.jp"), E("Buecher", "bücher.example"))
    hit = reg.match(host, "/")
    assert (hit[0].holder if hit else None) == expected


def test_punycode_entry_matches_unicode_host() -> None:
    reg = make(E("Buecher", "xn--bcher-kva.example"))
    assert reg.match("bücher.example", "/") is not None


def test_paths_limit_an_entry() -> None:
    reg = make(E("Mag", "news.example", paths=("/manga/", "/anime")))
    assert reg.match("news.example", "/manga/1") is not None
    assert reg.match("news.example", "/animes") is not None
    assert reg.match("news.example", "/sports") is None
    assert reg.match("news.example", "/MANGA/1") is None  # paths are case-sensitive


def test_findings_check_every_host_name() -> None:
    reg = make(E("Ghibli", "ghibli.jp"))
    # Target is an IP, but the Host header names the holder: still covered.
    findings = reg.findings_for(["127.0.0.1", "www.ghibli.jp"], "/")
    assert len(findings) == 1
    assert findings[0].entry is not None and findings[0].entry["holder"] == "Ghibli"
    assert reg.findings_for(["127.0.0.1", "example.org"], "/") == []


def test_large_registry_still_matches_exactly() -> None:
    entries = [E(f"H{i}", f"site{i}.example") for i in range(200_000)]
    reg = Registry(entries)
    assert reg.domain_count == 200_000
    hit = reg.match("cdn.site123456.example", "/")
    assert hit is not None and hit[0].holder == "H123456"
    assert reg.match("site200001.example", "/") is None


def test_shipped_registry_has_the_coda_members() -> None:
    policy = load_policy(REPO / "policies" / "default.yaml")
    holders = {e.holder for e in policy.registry.entries}
    assert holders == {
        "Studio Ghibli",
        "Square Enix",
        "Bandai Namco",
        "Aniplex",
        "Kadokawa",
        "Shueisha",
        "Toei Animation",
        "Cygames",
    }
    domains = {
        "ghibli.jp": "Studio Ghibli",
        "square-enix.com": "Square Enix",
        "square-enix-games.com": "Square Enix",
        "bandainamco.co.jp": "Bandai Namco",
        "bandainamcoent.co.jp": "Bandai Namco",
        "bandainamcoent.com": "Bandai Namco",
        "aniplex.co.jp": "Aniplex",
        "kadokawa.co.jp": "Kadokawa",
        "shueisha.co.jp": "Shueisha",
        "toei-anim.co.jp": "Toei Animation",
        "cygames.co.jp": "Cygames",
    }
    for domain, holder in domains.items():
        hit = policy.registry.match(f"www.{domain}", "/")
        assert hit is not None and hit[0].holder == holder
    for e in policy.registry.entries:
        assert e.reason.startswith("CODA written request to OpenAI of 2025-10-27")
        assert e.source.startswith("https://www.gamesradar.com/games/studio-ghibli-square-enix")
        assert e.since == "2025-10-27"


def test_registry_file_problems_name_their_line(tmp_path: Path) -> None:
    from proxy.errors import PolicyError

    path = write_policy(tmp_path, registry=[entry("A", "a.example")])
    reg = tmp_path / "policy-registry.yaml"
    reg.write_text(
        "entries:\n"
        "  - holder: A\n"
        "    domains: [https://a.example/path]\n"
        "    reason: r\n"
        "    source: ftp://x\n"
        "    since: 2025-13-40\n"
        "    colour: red\n"
        "  - holder: B\n"
        "    domains: [b.example]\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    text = [str(p) for p in info.value.problems]
    assert any(
        t.endswith(
            "policy-registry.yaml:3: 'https://a.example/path' is not a bare domain (write 'a.example')"
        )
        for t in text
    ), text
    assert any(":5: source must be an http(s) URL" in t for t in text), text
    assert any(":6: since must be a date" in t for t in text), text
    assert any(":7: unknown key 'colour'" in t for t in text), text
    assert any(":8: a registry entry: missing required key 'reason'" in t for t in text), text


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("media..test", "empty label (two dots in a row); write 'media.test'"),
        ("bad_domain.com", "has no '_'"),
        ("acme.test:8080", "has a port; a registry domain covers every port: write 'acme.test'"),
        ("-acme.test", "is not a host name label"),
        ("acme!.test", "is not a host name label"),
    ],
)
def test_malformed_domains_are_problems_with_the_fix(tmp_path: Path, domain: str, message: str) -> None:
    path = write_policy(tmp_path, registry=[entry("A", domain)])
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert any(message in str(p) and ":4:" in str(p) for p in info.value.problems), info.value.problems


def test_a_domain_listed_twice_is_a_problem_across_entries_and_files(tmp_path: Path) -> None:
    path = write_policy(tmp_path, registry=[entry("A", "acme.test"), entry("B", "acme.test")])
    with pytest.raises(PolicyError, match=r"'acme.test' is already listed for A at policy-registry.yaml:2"):
        load_policy(path)
    # the same domain under other paths is a different scope, not a duplicate
    scoped = entry("B", "acme.test", paths=["/works/"])
    assert load_policy(write_policy(tmp_path / "ok", registry=[entry("A", "acme.test"), scoped])) is not None
    # a second file that repeats the first one's domain, and the same file listed twice
    other = tmp_path / "two" / "other.yaml"
    first = write_policy(tmp_path / "two", registry=[entry("A", "acme.test")])
    other.write_text(yaml.safe_dump({"entries": [entry("C", "acme.test")]}))
    text = first.read_text().replace(
        "registries:\n- policy-registry.yaml",
        "registries:\n- policy-registry.yaml\n- other.yaml\n- other.yaml",
    )
    first.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(first)
    problems = [str(p) for p in info.value.problems]
    assert any("registry file 'other.yaml' is listed twice" in p for p in problems), problems
    assert any("other.yaml:" in p and "already listed for A" in p for p in problems), problems
