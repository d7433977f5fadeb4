"""`audit export --format warc`: the evidence behind real decisions of a real proxy, written as
WARC 1.1 and read back with warcio (its digest check and its index), digests matched with the
evidence store."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

from proxy.store import store_dir
from tests.e2e.test_audit_live import cli, load
from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

ROBOTS = "User-agent: *\nDisallow: /private/\n"


def warcio(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from warcio.cli import main; main()", *argv],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_warc_export_reads_back_with_digests_equal_to_the_store(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    robots_headers = {"Content-Type": "text/plain; charset=utf-8", "X-Served-By": "origin-7"}
    site = make_site({
        "/robots.txt": Reply(200, ROBOTS, robots_headers),
        "/page": Reply(200, "ok"),
        "/private/a": Reply(200, "secret"),
        "/noai": Reply(200, "fetched, then withheld", {"X-Robots-Tag": "noai"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path, registry=[entry("Holder One", "holder.test")]))
    urls = [site.url("/page"), site.url("/private/a"), site.url("/private/b"), site.url("/noai"),
            "http://holder.test:9/x"]  # fmt: skip
    statuses = [r.status_code for r in asyncio.run(load(proxy, urls, concurrency=1))]
    assert statuses == [200, 451, 451, 451, 451]
    proxy.stop()
    assert proxy.audit is not None
    records = [json.loads(line) for line in proxy.audit.read_text().splitlines()]
    store = store_dir(proxy.audit)

    out = tmp_path / "evidence.warc.gz"
    done = cli(
        "audit", "export", "--log", str(proxy.audit), "--format", "warc", "--out", str(out), check=True
    )
    assert f"wrote {out}: {len(records)} decision(s)" in done.stderr
    with gzip.open(out) as raw:
        assert raw.read(8) == b"WARC/1.1"

    # warcio's own tools read it: digests verified, every record indexed
    checked = warcio("check", "-v", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "digest pass" in checked.stdout and "digest fail" not in checked.stdout
    index = [json.loads(line) for line in warcio("index", str(out)).stdout.splitlines()]
    assert [i["warc-type"] for i in index].count("metadata") == len(records)

    by_id: dict[str, dict[str, object]] = {}
    decisions: dict[str, dict[str, str | None]] = {}
    with open(out, "rb") as f:
        for rec in ArchiveIterator(f, check_digests="raise"):
            h = rec.rec_headers
            payload = rec.content_stream().read()
            kind = h.get_header("WARC-Type")
            by_id[h.get_header("WARC-Record-ID")] = {"type": kind, "uri": h.get_header("WARC-Target-URI"),
                                                     "http": rec.http_headers}  # fmt: skip
            if kind in ("response", "resource"):
                sha = h.get_header("WARC-Optout-SHA256")
                algo, _, b32 = h.get_header("WARC-Payload-Digest").partition(":")
                assert algo == "sha256" and base64.b32decode(b32).hex() == sha
                assert hashlib.sha256(payload).hexdigest() == sha  # what the file holds ...
                assert (store / "objects" / sha[:2] / sha).read_bytes() == payload  # ... is the store's
            if kind == "metadata":
                record = json.loads(payload)
                decisions[record["id"]] = {
                    "refers": h.get_header("WARC-Refers-To"),
                    "signal": record["signal"],
                }
    assert set(decisions) == {r["id"] for r in records}  # one metadata record per decision

    robots_records = [v for v in by_id.values() if v["type"] == "response"]
    assert [v["uri"] for v in robots_records] == [site.url("/robots.txt")]  # cited often, written once
    http = robots_records[0]["http"]
    assert http.get_statuscode() == "200"  # type: ignore[attr-defined]
    assert http.get_header("X-Served-By") == "origin-7"  # type: ignore[attr-defined]  # the headers as fetched

    for r in records:
        refers = decisions[r["id"]]["refers"]
        if r["signal"] == "robots-txt":
            assert refers and by_id[refers]["uri"] == site.url("/robots.txt")
        if r["signal"] == "x-robots-tag":  # the response headers that decided it
            assert (
                refers and by_id[refers]["type"] == "resource" and by_id[refers]["uri"] == site.url("/noai")
            )
        if r["signal"] == "registry":
            assert refers is None  # a letter, not a fetched document: the record itself is the evidence

    # a filter selects the records, and their evidence only
    only = tmp_path / "registry.warc"
    cli("audit", "export", "--log", str(proxy.audit), "--format", "warc", "--out", str(only), "--signal",
        "registry", check=True)  # fmt: skip
    with open(only, "rb") as f:
        kinds = [rec.rec_headers.get_header("WARC-Type") for rec in ArchiveIterator(f)]
    assert kinds == ["warcinfo", "metadata"]
    assert (
        cli("audit", "export", "--log", str(proxy.audit), "--format", "warc").returncode == 2
    )  # needs --out
