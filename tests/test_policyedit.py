"""Policy editing through the CLI: comments kept, validation first, atomic replacement, diff."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cli import ExitStatus, main
from proxy.errors import PolicyError
from proxy.policy import load_policy
from proxy.policyedit import atomic_write
from tests.policies import entry, write_policy
from tests.sites import Reply, Site

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    for name in ("default.yaml", "registry.yaml"):
        (tmp_path / name).write_bytes((REPO / "policies" / name).read_bytes())
    return tmp_path / "default.yaml"


def run(*argv: str) -> int:
    return main(list(argv))


def test_add_keeps_comments_and_order(shipped: Path) -> None:
    registry = shipped.with_name("registry.yaml")
    before = registry.read_text()
    assert (
        run(
            "policy",
            "registry",
            "add",
            "--policy",
            str(shipped),
            "--holder",
            "Example Press",
            "--domain",
            "example-press.test",
            "--path",
            "/manga/",
            "--reason",
            "Letter of 2026-11-20",
            "--source",
            "https://example.org/letter",
            "--since",
            "2026-11-20",
        )
        == ExitStatus.OK
    )
    after = registry.read_text()
    assert after.startswith(before.rstrip("\n"))  # every original line, comments included, in place
    assert after.endswith(
        "  - holder: Example Press\n    domains: [example-press.test]\n    paths: [/manga/]\n"
        "    reason: Letter of 2026-11-20\n    source: https://example.org/letter\n    since: 2026-11-20\n"
    )
    policy = load_policy(shipped)
    hit = policy.registry.match("www.example-press.test", "/manga/1")
    assert hit is not None and hit[0].holder == "Example Press"
    # removing it gives the original bytes back
    assert (
        run("policy", "registry", "remove", "--policy", str(shipped), "--holder", "example press")
        == ExitStatus.OK
    )
    assert registry.read_text() == before


def test_invalid_edit_changes_nothing(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = shipped.with_name("registry.yaml")
    before = registry.read_bytes()
    assert (
        run(
            "policy",
            "registry",
            "add",
            "--policy",
            str(shipped),
            "--holder",
            "Bad",
            "--domain",
            "https://bad.test/x",
            "--reason",
            "r",
            "--source",
            "ftp://nope",
            "--since",
            "2026-02-30",
        )
        == ExitStatus.INVALID
    )
    err = capsys.readouterr().err
    assert "is not a bare domain (write 'bad.test')" in err
    assert "source must be an http(s) URL" in err and "since must be a date" in err
    assert "nothing was written" in err
    assert registry.read_bytes() == before
    assert not list(shipped.parent.glob(".*.tmp"))


def holders(policy: Path) -> dict[str, tuple[str, ...]]:
    return {e.holder: e.domains for e in load_policy(policy).registry.entries}


def test_list_and_remove_by_holder(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "registry", "list", "--policy", str(shipped)) == ExitStatus.OK
    assert "Studio Ghibli: ghibli.jp" in capsys.readouterr().out
    before = holders(shipped)
    assert (
        run("policy", "registry", "remove", "--policy", str(shipped), "--holder", "Cygames") == ExitStatus.OK
    )
    after = holders(shipped)
    assert "Cygames" not in after and {k: v for k, v in before.items() if k != "Cygames"} == after
    assert (
        run("policy", "registry", "remove", "--policy", str(shipped), "--holder", "Nobody")
        == ExitStatus.INVALID
    )
    assert "no entry matches holder 'Nobody'" in capsys.readouterr().err


def test_remove_a_domain_keeps_the_holders_other_domains(
    shipped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = holders(shipped)
    assert before["Square Enix"] == ("square-enix.com", "square-enix-games.com")
    text = shipped.with_name("registry.yaml").read_text()
    assert run("policy", "registry", "remove", "--policy", str(shipped), "--domain", "Square-Enix.com.") == 0
    assert (
        "removed square-enix.com from Square Enix (still listed: square-enix-games.com)"
        in capsys.readouterr().out
    )
    after = holders(shipped)
    assert after["Square Enix"] == ("square-enix-games.com",)  # used to delete the whole entry
    assert {k: v for k, v in after.items() if k != "Square Enix"} == {
        k: v for k, v in before.items() if k != "Square Enix"
    }
    # comments survive the edit
    assert text.splitlines()[0] == shipped.with_name("registry.yaml").read_text().splitlines()[0]
    # the last domain takes the entry with it
    assert (
        run("policy", "registry", "remove", "--policy", str(shipped), "--domain", "square-enix-games.com")
        == 0
    )
    assert "Square Enix" not in holders(shipped)


def test_holder_and_domain_together_remove_that_domain_from_that_holder_only(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, registry=[
        entry("Acme", "acme.test", "acme-shop.test"),
        entry("Acme", "acme.test", paths=["/works/"]),  # the same holder again, path-scoped
        entry("Other", "other.test", "acme-shop.test", paths=["/x/"]),
    ])  # fmt: skip
    assert run("policy", "registry", "remove", "--policy", str(policy), "--holder", "Acme", "--domain",
               "acme-shop.test") == 0  # fmt: skip
    entries = [(e.holder, e.domains, e.paths) for e in load_policy(policy).registry.entries]
    # used to remove both Acme entries and Other's (the domain matched, or the holder did)
    assert entries == [
        ("Acme", ("acme.test",), ()),
        ("Acme", ("acme.test",), ("/works/",)),
        ("Other", ("other.test", "acme-shop.test"), ("/x/",)),
    ]
    # a pair that names nothing is an error, and nothing changes
    assert run("policy", "registry", "remove", "--policy", str(policy), "--holder", "Other", "--domain",
               "acme.test") == ExitStatus.INVALID  # fmt: skip
    assert len(load_policy(policy).registry.entries) == 3


def test_a_subdomain_of_a_listed_domain_is_explained_not_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path, registry=[entry("Acme", "acme.test")])
    assert (
        run("policy", "registry", "remove", "--policy", str(policy), "--domain", "www.acme.test")
        == ExitStatus.INVALID
    )
    assert "www.acme.test is not listed; it is covered by acme.test (Acme)" in capsys.readouterr().err
    assert load_policy(policy).registry.entries[0].domains == ("acme.test",)


def test_import_errors_point_at_the_csv_row(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "holders.csv"
    csv_file.write_text(
        "holder,domains,paths,reason,source,since\n"
        "Alpha Studio,alpha.test,,Letter A,https://example.org/a,2026-01-05\n"
        '"Beta Books","media..test",,"Letter B, two lines\nlong",https://example.org/b,2026-02-10\n'
        "Gamma,gamma.test,,Letter C,ftp://example.org/c,2026-13-01\n"
        "Delta,alpha.test,,Letter D,https://example.org/d,2026-03-01\n"
        "Epsilon,square-enix.com,,Letter E,https://example.org/e,2026-03-01\n"
    )
    registry = shipped.with_name("registry.yaml")
    before = registry.read_bytes()
    assert run("policy", "import", "--csv", str(csv_file), "--policy", str(shipped)) == ExitStatus.INVALID
    err = capsys.readouterr().err
    assert f"{csv_file}:3: " in err and "media..test" in err  # row 3 (its reason spans two lines)
    assert f"{csv_file}:5: " in err and "source must be an http(s) URL" in err
    assert "2026-13-01" in err
    assert f"{csv_file}:6: 'alpha.test' is already listed at holders.csv:2 (Alpha Studio)" in err
    assert f"{csv_file}:7: 'square-enix.com' is already listed at registry.yaml:" in err
    assert "registry.yaml:" not in err.replace(
        "listed at registry.yaml:", ""
    )  # nothing blamed on the registry
    assert registry.read_bytes() == before  # nothing written


def test_import_csv(shipped: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "holders.csv"
    csv_file.write_text(
        "holder,domains,paths,reason,source,since\n"
        "Alpha Studio,alpha.test;alpha-games.test,,Letter A,https://example.org/a,2026-01-05\n"
        "Beta Books,beta.test,/comics/ /manga/,Letter B,https://example.org/b,2026-02-10\n"
        "Studio Ghibli,ghibli.jp,,dup,https://example.org/c,2026-01-01\n"
    )
    assert run("policy", "import", "--csv", str(csv_file), "--policy", str(shipped)) == ExitStatus.OK
    policy = load_policy(shipped)
    assert policy.registry.match("alpha-games.test", "/") is not None
    beta = policy.registry.match("beta.test", "/manga/x")
    assert beta is not None and beta[0].paths == ("/comics/", "/manga/")
    assert policy.registry.match("beta.test", "/news") is None
    # importing again adds nothing new
    assert run("policy", "import", "--csv", str(csv_file), "--policy", str(shipped)) == ExitStatus.OK
    assert len(load_policy(shipped).registry) == len(policy.registry)


def test_import_robots_json(shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    robots_json = tmp_path / "robots.json"
    robots_json.write_text(json.dumps({
        "GPTBot": {"operator": "OpenAI", "function": "Scrapes data to train OpenAI's products."},
        "NewTrainerBot": {"operator": "X", "function": "AI model training"},
        "Brightbot 1.0": {"operator": "Bright Data", "function": "AI data scraper"},
        "SomeSearchBot": {"operator": "Y", "function": "Search"},
    }))  # fmt: skip
    text_before = shipped.read_text()
    assert (
        run(
            "policy",
            "import",
            "--robots-json",
            str(robots_json),
            "--match",
            "train",
            "--policy",
            str(shipped),
        )
        == ExitStatus.OK
    )
    out, _ = capsys.readouterr()
    assert "NewTrainerBot" in out and "Brightbot 1.0" not in out
    honor = load_policy(shipped).honor_agents
    assert "NewTrainerBot" in honor and "SomeSearchBot" not in honor
    assert honor.count("GPTBot") == 1
    for comment in [line for line in text_before.splitlines() if line.startswith("#")]:
        assert comment in shipped.read_text()


def test_atomic_write_never_shows_half_a_file(tmp_path: Path) -> None:
    target = tmp_path / "policy.yaml"
    texts = [("a" * 2_000_000) + "\n", ("b" * 3_000_000) + "\n"]
    target.write_text(texts[0])
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = target.read_text()
            seen.add(len(data))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(20):
        atomic_write(target, texts[i % 2])
    stop.set()
    t.join()
    assert seen <= {len(texts[0]), len(texts[1])}


def test_diff_lists_changed_decisions(
    make_site: Callable[..., Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site({"/robots.txt": Reply(200, "User-agent: GPTBot\nDisallow: /a/\n")})
    old = write_policy(tmp_path / "old", honor_agents=["CCBot"])
    new = write_policy(
        tmp_path / "new", honor_agents=["CCBot", "GPTBot"], registry=[entry("H", "holder.test")]
    )
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join([site.url("/a/1"), site.url("/b/1"), "http://holder.test/x", "not a url", ""]))
    assert main(["policy", "diff", str(old), str(new), "--urls", str(urls)]) == ExitStatus.BLOCKED
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == sorted([
        f"{site.url('/a/1')}: allow -> block (robots-txt)",
        "http://holder.test/x: block (unreachable) -> block (registry)",
    ])  # fmt: skip
    assert site.hits["/robots.txt"] == 1  # one fetch serves both policies
    assert main(["policy", "diff", str(old), str(old), "--urls", str(urls)]) == ExitStatus.OK


def _add(policy: Path, holder: str, domain: str, *extra: str) -> int:
    return run("policy", "registry", "add", "--policy", str(policy), "--holder", holder, "--domain", domain,
               "--reason", "r", "--source", "https://example.org/l", "--since", "2026-11-20", *extra)  # fmt: skip


def test_add_refuses_a_registry_the_policy_does_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path / "p")
    elsewhere = tmp_path / "elsewhere.yaml"
    assert _add(policy, "Ghibli", "ghibli.jp", "--registry", str(elsewhere)) == ExitStatus.INVALID
    assert "is not one of the registries this policy reads" in capsys.readouterr().err
    assert not elsewhere.exists()
    # named relative to the policy's folder, the listed file is the one edited
    assert _add(policy, "Ghibli", "ghibli.jp", "--registry", "policy-registry.yaml") == ExitStatus.OK
    assert [e.holder for e in load_policy(policy).registry.entries] == ["Ghibli"]


def test_add_is_checked_with_the_policys_other_registries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path, registry=[entry("Ghibli", "ghibli.jp")])
    (tmp_path / "letters.yaml").write_text("entries: []\n")
    text = policy.read_text().replace("- policy-registry.yaml", "- policy-registry.yaml\n- letters.yaml")
    policy.write_text(text)
    before = (tmp_path / "letters.yaml").read_text()
    assert _add(policy, "Ghibli again", "GHIBLI.jp", "--registry", "letters.yaml") == ExitStatus.INVALID
    assert "'ghibli.jp' is already listed" in capsys.readouterr().err
    assert (tmp_path / "letters.yaml").read_text() == before
    load_policy(policy)  # still valid


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = write_policy(tmp_path, registry=[entry("Seed", "seed.example")])
    argv = ["policy", "registry", "add", "--policy", str(policy), "--reason", "r",
            "--source", "https://example.org/l", "--since", "2026-11-20"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "proxy", *argv, "--holder", f"H{i}", "--domain", f"h{i}.example"]
        )
        for i in range(6)
    ]
    assert [p.wait(60) for p in procs] == [0] * 6
    assert sorted(e.holder for e in load_policy(policy).registry.entries) == [
        "H0",
        "H1",
        "H2",
        "H3",
        "H4",
        "H5",
        "Seed",
    ]


REGISTRY_WITH_COMMENTS = """entries:
  # --- Ghibli ---
  - holder: Ghibli
    domains: &shared [ghibli.jp, shared.example]
    reason: r
    source: https://example.org/l
    since: 2025-10-27
  # --- Square Enix: legal hold, DO NOT REMOVE ---
  - holder: Square Enix
    domains: *shared
    reason: r
    source: https://example.org/l
    since: 2025-10-27
  # --- Bandai ---
  - holder: Bandai
    domains: [bandai.example]
    reason: r
    source: https://example.org/l
    since: 2025-10-27
"""


def test_remove_keeps_the_next_entrys_comment_and_other_holders_aliases(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    registry = tmp_path / "policy-registry.yaml"
    aliased = REGISTRY_WITH_COMMENTS.replace(
        "shared.example]", "shared.example, x.example]\n    paths: [/anime/]"
    )
    registry.write_text(aliased.replace("*shared\n", "*shared\n    paths: [/games/]\n"))
    remove = ("policy", "registry", "remove", "--policy", str(policy))
    assert run(*remove, "--holder", "Ghibli", "--domain", "x.example") == ExitStatus.OK
    by_holder = {e.holder: e.domains for e in load_policy(policy).registry.entries}
    assert by_holder["Square Enix"] == ("ghibli.jp", "shared.example", "x.example")  # its alias kept all
    assert by_holder["Ghibli"] == ("ghibli.jp", "shared.example")
    registry.write_text(
        REGISTRY_WITH_COMMENTS.replace("&shared ", "").replace("*shared", "[square-enix.com]")
    )
    assert run(*remove, "--holder", "Ghibli") == ExitStatus.OK
    text = registry.read_text()
    assert "# --- Ghibli ---" not in text
    assert text.index("# --- Square Enix: legal hold, DO NOT REMOVE ---") < text.index("holder: Square Enix")
    assert text.index("# --- Bandai ---") < text.index("holder: Bandai")


def test_edits_keep_the_mode_refuse_read_only_files_and_write_through_symlinks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path)
    registry = tmp_path / "policy-registry.yaml"
    registry.chmod(0o600)
    assert _add(policy, "A", "a.example") == ExitStatus.OK
    assert registry.stat().st_mode & 0o777 == 0o600
    registry.chmod(0o444)
    before = registry.read_text()
    assert _add(policy, "B", "b.example") == ExitStatus.INVALID
    assert "read-only" in capsys.readouterr().err and registry.read_text() == before
    registry.chmod(0o644)
    shared = tmp_path / "shared" / "registry.yaml"
    shared.parent.mkdir()
    registry.replace(shared)
    registry.symlink_to(shared)
    assert _add(policy, "C", "c.example") == ExitStatus.OK
    assert registry.is_symlink() and "c.example" in shared.read_text()


def test_words_yaml_reads_as_other_types_are_written_quoted(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    assert _add(policy, "NO", "no.example") == ExitStatus.OK
    assert run("policy", "registry", "add", "--policy", str(policy), "--holder", "2025-01-01", "--domain",
               "d.example", "--reason", "yes", "--source", "https://example.org/l", "--since", "2026-11-20") == 0  # fmt: skip
    holders = {e.holder: e.reason for e in load_policy(policy).registry.entries}
    assert holders == {"NO": "r", "2025-01-01": "yes"}


def test_a_broken_registry_is_reported_at_its_line_not_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path)
    registry = tmp_path / "policy-registry.yaml"
    for broken in ("entries: [\n  - holder: x\n", "- a\n- b\n", "entries:\n  holder: x\n"):
        registry.write_text(broken)
        assert _add(policy, "A", "a.example", "--registry", str(registry)) == ExitStatus.INVALID
        err = capsys.readouterr().err
        assert f"{registry}:" in err and "Traceback" not in err, err
        assert registry.read_text() == broken


def test_registry_paths_with_robots_wildcards_are_refused_with_the_prefix_to_write(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, registry=[entry("Ghibli", "ghibli.jp", paths=["/works/*.jpg"])])
    with pytest.raises(PolicyError, match=r"registry paths are prefixes: write '/works/'"):
        load_policy(policy)


def test_import_reads_a_csv_saved_with_a_bom(shipped: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "letters.csv"
    csv_file.write_bytes(
        "holder,domains,reason,source,since\nExample Press,example-press.test,letter,https://example.org/l,2026-11-20\n"
        .encode("utf-8-sig")
    )  # fmt: skip
    assert run("policy", "import", "--csv", str(csv_file), "--policy", str(shipped)) == ExitStatus.OK
    assert "Example Press" in {e.holder for e in load_policy(shipped).registry.entries}


@pytest.mark.parametrize("path", ["/view?id=5", "/works ", "//example.com/works", "/w\u200borks"])
def test_registry_paths_that_would_match_less_than_they_seem_are_refused(tmp_path: Path, path: str) -> None:
    policy = write_policy(tmp_path, registry=[entry("Ghibli", "ghibli.jp", paths=[path])])
    with pytest.raises(PolicyError, match="would match less than it seems"):
        load_policy(policy)


def test_a_registry_that_is_not_a_regular_file_is_refused_not_read(tmp_path: Path) -> None:
    import os

    policy = write_policy(tmp_path)
    registry = tmp_path / "policy-registry.yaml"
    registry.unlink()
    os.mkfifo(registry)  # a FIFO: reading it would wait for a writer for ever
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(policy)
    registry.unlink()
    registry.symlink_to("/dev/zero")  # endless: reading it would fill the memory
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(policy)


def test_a_registry_through_a_symlinked_folder_and_dotdot_is_the_one_open_reads(tmp_path: Path) -> None:
    real = tmp_path / "real" / "policies"
    real.mkdir(parents=True)
    (tmp_path / "real" / "shared").mkdir()
    (tmp_path / "real" / "shared" / "reg.yaml").write_text(
        "entries:\n  - {holder: Real, domains: [real.example], reason: r, source: 'https://e.org/l', since: 2025-10-27}\n"
    )
    (tmp_path / "shared").mkdir()  # the lexical ../shared, which open() does not reach
    (tmp_path / "shared" / "reg.yaml").write_text("entries: []\n")
    (tmp_path / "link").symlink_to(real)
    policy = write_policy(tmp_path / "link", registries=["../shared/reg.yaml"])
    assert [e.holder for e in load_policy(policy).registry.entries] == ["Real"]


def test_concurrent_robots_json_imports_lose_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = write_policy(tmp_path)
    procs = []
    for i in range(6):
        robots = tmp_path / f"robots{i}.json"
        robots.write_text(json.dumps({f"Bot{i}": {"operator": "x"}}))
        argv = ["policy", "import", "--robots-json", str(robots), "--policy", str(policy)]
        procs.append(subprocess.Popen([sys.executable, "-m", "proxy", *argv]))
    assert [p.wait(60) for p in procs] == [0] * 6
    assert {f"Bot{i}" for i in range(6)} <= set(load_policy(policy).honor_agents)
