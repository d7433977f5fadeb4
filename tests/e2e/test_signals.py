"""End to end, every signal through a real mitmdump: pre-fetch blocks, in-band withholding,
hostile inputs, conflicts, purposes. The crawler must never receive a withheld body."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cli import ExitStatus, main
from tests import media_files as m
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess, mitmdump_command, raw_get
from tests.sites import Reply, Site

SECRET = b"TOP-SECRET-CONTENT-7f3a"
ALLOW_ALL = "User-agent: *\nAllow: /\n"


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def get(proxy: ProxyProcess, url: str, **kw: Any) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=ctx, trust_env=False, timeout=20) as c:
        return c.get(url, **kw)


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> ProxyProcess:
    return make_proxy(write_policy(tmp_path), optout_fetch_timeout=2)


# -- before the fetch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "path", "signal"),
    [
        ({"/ai.txt": Reply(200, "User-Agent: *\nDisallow: *.jpg\n")}, "/photo.jpg", "ai-txt"),
        # the same Spawning file at the draft's location, and the draft's key/value form at both
        ({"/.well-known/ai.txt": Reply(200, "User-Agent: *\nDisallow: *.jpg\n")}, "/photo.jpg", "ai-txt"),
        ({"/.well-known/ai.txt": Reply(200, "Site-Name: S\nTraining: deny\n")}, "/article", "ai-txt"),
        (
            {"/ai.txt": Reply(200, "Site-Name: S\nTraining: allow\nAgent: ExampleBot\n  Scraping: deny\n")},
            "/article",
            "ai-txt",
        ),
        (
            {"/.well-known/tdmrep.json": Reply(200, '[{"location":"/","tdm-reservation":1}]')},
            "/article",
            "tdmrep",
        ),
        (  # one object instead of an array: read as meant (lenient_readings)
            {"/.well-known/tdmrep.json": Reply(200, '{"location":"/","tdm-reservation":1}')},
            "/article",
            "tdmrep",
        ),
        (
            {"/robots.txt": Reply(200, "User-agent: *\nAllow: /\nContent-Usage: train-ai=n\n")},
            "/a",
            "content-usage",
        ),
        (
            {"/robots.txt": Reply(200, "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n")},
            "/a",
            "content-signal",
        ),
        ({"/robots.txt": Reply(200, "User-agent: *\nDisallowAITraining: /\nAllow: /\n")}, "/a", "robots-txt"),
    ],
)
def test_prefetch_signals_block_before_contact(
    make_site: Callable[..., Site], proxy: ProxyProcess, routes: dict[str, Reply], path: str, signal: str
) -> None:
    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), path: Reply(200, SECRET), **routes})
    r = get(proxy, site.url(path))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == signal
    assert SECRET not in r.content
    assert site.hits[path] == 0
    rec = proxy.record(r.headers["X-Optout-Id"])
    assert rec["phase"] == "request" and rec["signal"] == signal


def test_rsl_license_on_another_host(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    licence = make_site({"/license.xml": Reply(200, (
        '<rsl xmlns="https://rslstandard.org/rsl"><content url="/"><license>'
        '<permits type="usage">search</permits><prohibits type="usage">ai-train</prohibits>'
        "</license></content></rsl>"), {"Content-Type": "application/rsl+xml"})})  # fmt: skip
    site = make_site({
        "/robots.txt": Reply(200, f"License: {licence.url('/license.xml')}\nUser-agent: *\nAllow: /\n"),
        "/a": Reply(200, SECRET),
    })  # fmt: skip
    r = get(proxy, site.url("/a"))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "rsl"
    assert licence.hits["/license.xml"] == 1 and site.hits["/a"] == 0
    ev = proxy.record(r.headers["X-Optout-Id"])
    deciding = ev["evidence"][ev["deciding"]]
    assert "usage prohibited" in deciding["detail"]
    assert deciding["document"]["url"] == licence.url("/license.xml")


def test_policy_documents_are_fetched_concurrently_and_once(
    make_site: Callable[..., Site], proxy: ProxyProcess
) -> None:
    arrived = threading.Barrier(4, timeout=5)

    def waits_for_the_others(body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
        def handler(h: BaseHTTPRequestHandler) -> None:
            try:
                arrived.wait()  # only passes if all four requests are in flight at once
                status = 200
            except threading.BrokenBarrierError:
                status, body_ = 500, b"fetched one after another"
            else:
                body_ = body
            h.send_response(status)
            h.send_header("Content-Length", str(len(body_)))
            h.end_headers()
            h.wfile.write(body_)

        return handler

    site = make_site({
        "/robots.txt": waits_for_the_others(ALLOW_ALL.encode()),
        "/ai.txt": waits_for_the_others(b"User-Agent: *\nDisallow: /private/\n"),
        "/.well-known/ai.txt": waits_for_the_others(b"Site-Name: S\nTraining: allow\n"),
        "/.well-known/tdmrep.json": waits_for_the_others(b'[{"location":"/","tdm-reservation":0}]'),
        "/page": Reply(200, "page"),
        "/private/x": Reply(200, SECRET),
    })  # fmt: skip
    assert get(proxy, site.url("/page")).status_code == 200
    r = get(proxy, site.url("/private/x"))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "ai-txt"
    assert get(proxy, site.url("/page")).status_code == 200
    documents = ("/robots.txt", "/ai.txt", "/.well-known/ai.txt", "/.well-known/tdmrep.json")
    assert [site.hits[d] for d in documents] == [1, 1, 1, 1]


# -- in the response -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "signal"),
    [
        ({"X-Robots-Tag": "noai"}, "x-robots-tag"),
        ({"X-Robots-Tag": "ExampleBot: noindex, NoAI"}, "x-robots-tag"),
        ({"X-Robots-Tag": "googlebot: nofollow, ExampleBot: noai"}, "x-robots-tag"),  # combined lines
        ({"tdm-reservation": "1", "tdm-policy": "https://p.example/policy.json"}, "tdmrep"),
        ({"Content-Usage": "train-ai=n"}, "content-usage"),
        ({"Content-Signal": "ai-train=no, search=yes"}, "content-signal"),
    ],
)
def test_header_signals_withhold_every_byte(
    make_site: Callable[..., Site], proxy: ProxyProcess, headers: dict[str, str], signal: str
) -> None:
    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), "/doc": Reply(200, SECRET * 1000, headers)})
    raw = raw_get(proxy, site.url("/doc"))
    assert status_of(raw) == 451
    assert SECRET not in raw
    assert f"x-optout-reason: {signal}".encode() in raw.lower()
    assert site.hits["/doc"] == 1  # the origin was asked; the crawler got nothing of its answer
    record = [r for r in proxy.records() if r["phase"] == "response"][-1]
    assert (record["decision"], record["withheld"], record["signal"], record["status"]) == (
        "block",
        True,
        signal,
        451,
    )
    assert record["inspected"] == "headers"
    request_record = proxy.record(record["request_id"])
    assert request_record["decision"] == "allow"


def chunked(
    body: bytes, headers: dict[str, str], pieces: int = 8
) -> Callable[[BaseHTTPRequestHandler], None]:
    """An origin answer with Transfer-Encoding: chunked, sent in pieces with pauses."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        size = max(1, len(body) // pieces)
        for i in range(0, len(body), size):
            part = body[i : i + size]
            h.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            h.wfile.flush()
            time.sleep(0.01)
        h.wfile.write(b"0\r\n\r\n")

    return handler


HTML_NOAI = b'<html><head><meta name="robots" content="noai"></head><body>' + SECRET + b"</body></html>"


@pytest.mark.parametrize(
    ("route", "signal"),
    [
        (Reply(200, HTML_NOAI, {"Content-Type": "text/html; charset=utf-8"}), "html-meta"),
        (chunked(HTML_NOAI, {"Content-Type": "text/html"}), "html-meta"),  # a streamed body is no way round
        (
            Reply(200, b'<meta name="tdm-reservation" content="1">' + SECRET, {"Content-Type": "text/html"}),
            "tdmrep",
        ),
        (
            Reply(
                200,
                m.jpeg_with_xmp(m.datamining_element("DMI-PROHIBITED")) + SECRET,
                {"Content-Type": "image/jpeg"},
            ),
            "media-metadata",
        ),
        (
            chunked(
                m.png_with_xmp(
                    m.datamining_element("DMI-PROHIBITED-AIMLTRAINING"), compressed=True, after_idat=True
                )
                + SECRET,
                {"Content-Type": "image/png"},
            ),
            "media-metadata",
        ),
        (
            Reply(
                200,
                m.jpeg_with_c2pa(
                    m.manifest_store(
                        "cawg.training-mining", {"cawg.ai_generative_training": {"use": "notAllowed"}}
                    )
                )
                + SECRET,
                {"Content-Type": "image/jpeg"},
            ),
            "media-metadata",
        ),
        (
            Reply(
                200,
                m.epub('<meta property="tdm:reservation">1</meta>') + SECRET,
                {"Content-Type": "application/epub+zip"},
            ),
            "tdmrep",
        ),
        (
            Reply(
                200,
                m.pdf_with_xmp(m.tdm_xmp("1"), compressed=True) + SECRET,
                {"Content-Type": "application/pdf"},
            ),
            "tdmrep",
        ),
        (
            Reply(
                200,
                m.pdf_written(
                    base64.a85encode(zlib.compress(m.tdm_xmp("1")), adobe=True),
                    ["/ASCII85Decode", "/FlateDecode"],
                )
                + SECRET,
                {"Content-Type": "application/pdf"},
            ),
            "tdmrep",
        ),
        (
            Reply(  # a BOM and a blank line before the header, served as text: readers still open it
                200,
                b"\xef\xbb\xbf\n" + m.pdf_written(zlib.compress(m.tdm_xmp("1")), ["/FlateDecode"]) + SECRET,
                {"Content-Type": "text/plain"},
            ),
            "tdmrep",
        ),
    ],
)
def test_body_signals_withhold_every_byte(
    make_site: Callable[..., Site], proxy: ProxyProcess, route: Any, signal: str
) -> None:
    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), "/asset": route})
    raw = raw_get(proxy, site.url("/asset"))
    assert status_of(raw) == 451, raw[:300]
    assert SECRET not in raw
    assert f"x-optout-reason: {signal}".encode() in raw.lower()
    record = [r for r in proxy.records() if r["phase"] == "response"][-1]
    assert record["withheld"] is True and record["signal"] == signal
    assert record["inspected"].startswith("headers+")


def test_clean_bodies_are_delivered_intact(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    jpeg = m.jpeg_with_xmp(m.datamining_element("DMI-ALLOWED"))
    html = b"<html><head><title>ok</title></head><body>" + SECRET + b"</body></html>"
    site = make_site({
        "/robots.txt": Reply(200, ALLOW_ALL),
        "/a.jpg": Reply(200, jpeg, {"Content-Type": "image/jpeg"}),
        "/a.html": chunked(html, {"Content-Type": "text/html"}),
    })  # fmt: skip
    r1 = get(proxy, site.url("/a.jpg"))
    r2 = get(proxy, site.url("/a.html"))
    assert (r1.status_code, r1.content) == (200, jpeg)
    assert (r2.status_code, r2.content) == (200, html)


def test_over_cap_body_is_withheld_by_default(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    big = b"<html><body>" + SECRET * 2000 + b"</body></html>"
    huge = big * 4
    site = make_site({
        "/robots.txt": Reply(200, ALLOW_ALL),
        "/known": Reply(200, big, {"Content-Type": "text/html"}),
        "/chunked": chunked(big, {"Content-Type": "text/html"}),
        "/huge-chunked": chunked(huge, {"Content-Type": "text/html"}),
        "/small": Reply(200, b"<html>ok</html>", {"Content-Type": "text/html"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path / "w"), optout_body_cap=30_000)  # big is 46 kB
    for path in ("/known", "/chunked", "/huge-chunked"):
        # mitmproxy stops buffering at the cap (body_size_limit, set to it) and answers 502:
        # at once when the Content-Length says so, else as soon as the body outgrows it.
        raw = raw_get(proxy, site.url(path))
        assert status_of(raw) == 502 and SECRET not in raw
    assert get(proxy, site.url("/small")).status_code == 200
    records = [r for r in proxy.records() if r["phase"] == "response" and r["inspected"] == "over-cap"]
    assert len(records) == 3 and all(r["withheld"] for r in records)
    assert [r["status"] for r in records] == [502, 502, 502]
    # With a body_size_limit of the user's own above the cap, the cap is ours to enforce: 451.
    roomy = make_proxy(write_policy(tmp_path / "r"), optout_body_cap=30_000, body_size_limit="10m")
    for path in ("/known", "/chunked"):
        raw = raw_get(roomy, site.url(path))
        assert status_of(raw) == 451 and SECRET not in raw
        assert b"x-optout-reason: body-over-cap" in raw.lower()
    forwarding = make_proxy(write_policy(tmp_path / "f", over_cap="forward"), optout_body_cap=10_000)
    r = get(forwarding, site.url("/known"))
    assert r.status_code == 200 and r.content == big
    rec = [x for x in forwarding.records() if x["phase"] == "response"][-1]
    assert rec["inspected"] == "over-cap" and rec["withheld"] is False
    assert "forwarded" in rec["evidence"][-1]["detail"]


@pytest.mark.parametrize("body_signals", ["enforce", "off"])
def test_stream_large_bodies_is_refused(body_signals: str, tmp_path: Path) -> None:
    # Even with no body read: a request body over it would reach the origin before the request
    # is judged (mitmproxy streams it right after the headers).
    confdir = tmp_path / "conf"
    confdir.mkdir()
    signals = {s: body_signals for s in ("html-meta", "tdmrep", "rsl", "media-metadata")}
    policy = write_policy(tmp_path, signals={"robots-txt": "enforce", "registry": "enforce", **signals})
    cmd = [*mitmdump_command(policy, confdir), "--set", "stream_large_bodies=1k"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert (
        "stream_large_bodies would send large request bodies to the origin before"
        in done.stdout + done.stderr
    )


# -- hostile inputs, conflicts, purposes, monitor ----------------------------------------------


def test_hostile_policy_documents_are_no_signal(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    site = make_site({
        "/robots.txt": Reply(200, ALLOW_ALL),
        "/.well-known/tdmrep.json": Reply(200, b'[{"location": "/", "tdm-reservation": 1'),  # invalid JSON
        "/ai.txt": Reply(200, b"# " + b"A" * (3 * 1024 * 1024)),  # 3 MiB of nothing
        "/page": Reply(200, "page"),
    })  # fmt: skip
    r = get(proxy, site.url("/page"))
    assert r.status_code == 200
    rec = proxy.record(r.headers["X-Optout-Id"])
    assert rec["decision"] == "allow"


def test_huge_ai_txt_is_read_up_to_the_cap(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    body = b"User-Agent: *\nDisallow: *.jpg\n" + b"# filler\n" * 300_000 + b"Disallow: /late/\n"
    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), "/ai.txt": Reply(200, body),
                      "/a.jpg": Reply(200, SECRET), "/late/x": Reply(200, "late")})  # fmt: skip
    assert get(proxy, site.url("/a.jpg")).status_code == 451
    assert get(proxy, site.url("/late/x")).status_code == 200


def test_wrongly_encoded_html_still_read(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    html = '<html><head><meta name="robots" content="noai"><title>Café ü</title></head></html>'.encode(
        "latin-1"
    )
    site = make_site(
        {
            "/robots.txt": Reply(200, ALLOW_ALL),
            "/p": Reply(200, html + SECRET, {"Content-Type": "text/html; charset=utf-8"}),
        }
    )
    raw = raw_get(proxy, site.url("/p"))
    assert status_of(raw) == 451 and SECRET not in raw


def test_header_repeated_100_times(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    def many(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        for _ in range(99):
            h.send_header("X-Robots-Tag", "noindex")
        h.send_header("X-Robots-Tag", "noai")
        h.send_header("Content-Length", str(len(SECRET)))
        h.end_headers()
        h.wfile.write(SECRET)

    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), "/p": many})
    raw = raw_get(proxy, site.url("/p"))
    assert status_of(raw) == 451 and SECRET not in raw


def test_a_grant_never_lifts_another_sources_reservation(
    make_site: Callable[..., Site], proxy: ProxyProcess
) -> None:
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nContent-Usage: train-ai=y\nContent-Signal: ai-train=no\nAllow: /\n"),
        "/ai.txt": Reply(200, "User-Agent: *\nAllow: /\n"),
        "/a": Reply(200, SECRET),
    })  # fmt: skip
    r = get(proxy, site.url("/a"))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "content-signal"
    rec = proxy.record(r.headers["X-Optout-Id"])
    says = {(e["signal"], e["says"]) for e in rec["evidence"]}
    assert {("content-usage", "allow"), ("ai-txt", "allow"), ("content-signal", "disallow")} <= says


def test_purpose_search(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n"),
        "/a": Reply(200, "for search", {"X-Robots-Tag": "noai"}),
        "/b": Reply(200, SECRET, {"X-Robots-Tag": "noindex"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path, purpose="search"))
    assert get(proxy, site.url("/a")).status_code == 200
    r = get(proxy, site.url("/b"))
    assert r.status_code == 451 and r.headers["X-Optout-Reason"] == "x-robots-tag"


def test_monitor_mode_forwards_in_band_blocks_and_records_them(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = make_site(
        {"/robots.txt": Reply(200, ALLOW_ALL), "/a": Reply(200, HTML_NOAI, {"Content-Type": "text/html"})}
    )
    proxy = make_proxy(write_policy(tmp_path, mode="monitor"))
    r = get(proxy, site.url("/a"))
    assert r.status_code == 200 and r.content == HTML_NOAI
    rec = proxy.record(r.headers["X-Optout-Id"])
    assert (rec["phase"], rec["decision"], rec["enforced"], rec["withheld"]) == (
        "response",
        "block",
        False,
        False,
    )


def test_signal_set_to_off_is_ignored(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = make_site({"/robots.txt": Reply(200, ALLOW_ALL), "/a": Reply(200, "ok", {"X-Robots-Tag": "noai"})})
    proxy = make_proxy(write_policy(tmp_path, signals={"x-robots-tag": "off"}))
    assert get(proxy, site.url("/a")).status_code == 200


def test_https_in_band(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    site = make_site(
        {"/robots.txt": Reply(200, ALLOW_ALL), "/a": Reply(200, SECRET, {"X-Robots-Tag": "noai"})}, tls=True
    )
    r = get(proxy, site.url("/a", host="localhost"))
    assert r.status_code == 451 and SECRET not in r.content


def test_check_shows_response_findings(
    make_site: Callable[..., Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nContent-Usage: train-ai=y\nAllow: /\n"),
        "/a": Reply(200, HTML_NOAI, {"Content-Type": "text/html", "tdm-reservation": "0"}),
    })  # fmt: skip
    policy = write_policy(tmp_path)
    assert main(["check", site.url("/a"), "--policy", str(policy)]) == ExitStatus.BLOCKED
    out = capsys.readouterr().out
    assert "signal: html-meta" in out
    assert "content-usage" in out and "tdmrep" in out
    assert main(["check", site.url("/a"), "--policy", str(policy), "--json"]) == ExitStatus.BLOCKED
    record = json.loads(capsys.readouterr().out)
    assert record["signal"] == "html-meta"
    assert {e["signal"] for e in record["evidence"]} >= {"robots-txt", "content-usage", "tdmrep", "html-meta"}


async def test_many_concurrent_withheld_responses(
    make_site: Callable[..., Site], proxy: ProxyProcess
) -> None:
    site = make_site(
        {
            "/robots.txt": Reply(200, ALLOW_ALL),
            "/a": Reply(200, HTML_NOAI, {"Content-Type": "text/html"}),
            "/b": Reply(200, b"<html>fine</html>", {"Content-Type": "text/html"}),
        }
    )
    async with httpx.AsyncClient(proxy=proxy.url, trust_env=False, timeout=30) as c:
        results = await asyncio.gather(*(c.get(site.url("/a" if i % 2 else "/b")) for i in range(40)))
    assert sorted({r.status_code for r in results}) == [200, 451]
    assert all(SECRET not in r.content for r in results)


LICENCE_NO_AI = (
    '<rsl xmlns="https://rslstandard.org/rsl"><content url="/"><license>'
    '<permits type="usage">search</permits><prohibits type="usage">ai-all</prohibits>'
    "</license></content></rsl>"
)


def test_rsl_from_link_header_and_html_link(make_site: Callable[..., Site], proxy: ProxyProcess) -> None:
    licence = make_site({"/l.xml": Reply(200, LICENCE_NO_AI)})
    link = f'<{licence.url("/l.xml")}>; rel="license"; type="application/rsl+xml"'
    html = (
        f'<html><head><link rel="license" type="application/rsl+xml" href="{licence.url("/l.xml")}"></head>'
    )
    site = make_site({
        "/robots.txt": Reply(200, ALLOW_ALL),
        "/linked": Reply(200, SECRET, {"Link": link}),
        "/page": Reply(200, html.encode() + SECRET, {"Content-Type": "text/html"}),
        "/inline": Reply(200, b'<script type="application/rsl+xml">' + LICENCE_NO_AI.encode() + b"</script>" + SECRET,
                         {"Content-Type": "text/html"}),
    })  # fmt: skip
    for path in ("/linked", "/page", "/inline"):
        raw = raw_get(proxy, site.url(path))
        assert status_of(raw) == 451, path
        assert SECRET not in raw and b"x-optout-reason: rsl" in raw.lower()
    assert licence.hits["/l.xml"] == 1  # fetched once, then cached


def test_tdmrep_spec_precedence_reads_the_file_in_the_response(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """Under `tdmrep_precedence: spec` the file's 1 waits for the response: a header 0 lifts it."""
    site = make_site({
        "/robots.txt": Reply(200, ALLOW_ALL),
        "/.well-known/tdmrep.json": Reply(200, '[{"location":"/","tdm-reservation":1}]'),
        "/lifted": Reply(200, "free to mine", {"tdm-reservation": "0"}),
        "/kept": Reply(200, SECRET),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path, tdmrep_precedence="spec"))
    lifted = get(proxy, site.url("/lifted"))
    assert (lifted.status_code, lifted.text) == (200, "free to mine")
    raw = raw_get(proxy, site.url("/kept"))
    assert status_of(raw) == 451 and SECRET not in raw and b"x-optout-reason: tdmrep" in raw.lower()
    assert site.hits["/kept"] == 1  # fetched, then withheld: the file alone decides only in the response
