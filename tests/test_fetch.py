"""RFC 9309 §2.3–2.5 against real origin servers: status table, redirects, size, caching."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from proxy.documents import OriginDocuments, load_origin
from proxy.evidence import Says
from proxy.fetch import MAX_TTL, MIN_TTL, make_client, ttl_from_cache_control
from proxy.origin import Origin
from tests.sites import Reply, Site

DISALLOW_ALL = "User-agent: *\nDisallow: /\n"


async def documents(
    site: Site,
    previous: OriginDocuments | None = None,
    *,
    timeout: float = 1.0,
    ca_file: str | None = None,
) -> tuple[OriginDocuments, float]:
    origin = Origin.from_url(site.url("/"))
    async with make_client(timeout=timeout, ca_file=ca_file) as client:
        return await load_origin(client, origin, previous, total_timeout=2 * timeout, unreachable_retry=300)


def says(docs: OriginDocuments, path: str = "/page") -> Says:
    findings = docs.robots_findings(path, "ExampleBot", ["GPTBot"])
    if any(f.says is Says.DISALLOW for f in findings):
        return Says.DISALLOW
    return findings[0].says


@pytest.mark.parametrize(
    ("status", "outcome", "expected"),
    [
        (200, "ok", Says.DISALLOW),
        (404, "unavailable", Says.UNAVAILABLE),  # S1: allow all
        (401, "unavailable", Says.UNAVAILABLE),  # S2: allow per RFC (policy may say block)
        (403, "unavailable", Says.UNAVAILABLE),
        (410, "unavailable", Says.UNAVAILABLE),
        (429, "unreachable", Says.UNREACHABLE),  # S4
        (500, "unreachable", Says.UNREACHABLE),
        (503, "unreachable", Says.UNREACHABLE),  # S3
    ],
)
async def test_status_table(
    make_site: Callable[..., Site], status: int, outcome: str, expected: Says
) -> None:
    site = make_site({"/robots.txt": Reply(status, DISALLOW_ALL)})
    docs, ttl = await documents(site)
    assert docs.robots_outcome == outcome
    assert docs.robots_document.status == status
    assert says(docs) == expected
    if outcome == "unreachable":
        assert ttl == 300  # retried after minutes, not hours


async def test_server_error_body_is_never_parsed(make_site: Callable[..., Site]) -> None:
    # A 5xx HTML page must not become "no rules" (peers.md §3 A4).
    site = make_site({"/robots.txt": Reply(500, "<html>User-agent: *\nAllow: /</html>")})
    docs, _ = await documents(site)
    assert docs.robots is None and says(docs) == Says.UNREACHABLE


async def test_redirect_chain_applies_to_the_original_origin(
    make_site: Callable[..., Site],
) -> None:
    # S6: a 301 chain across hosts; the file reached governs the origin we asked about.
    final = make_site({"/robots.txt": Reply(200, DISALLOW_ALL)})
    hop = make_site(
        {"/robots.txt": Reply(301, headers={"Location": final.url("/robots.txt", host="localhost")})}
    )
    start = make_site({"/robots.txt": Reply(302, headers={"Location": hop.url("/robots.txt")})})
    docs, _ = await documents(start)
    assert docs.origin == Origin.from_url(start.url("/"))
    assert docs.robots_document.final_url == final.url("/robots.txt", host="localhost")
    assert says(docs) == Says.DISALLOW


async def test_five_redirects_are_followed_six_are_not(make_site: Callable[..., Site]) -> None:
    def chain(hops: int) -> Site:
        routes: dict[str, Reply] = {
            f"/r{i}": Reply(301, headers={"Location": f"/r{i + 1}"}) for i in range(1, hops)
        }
        routes["/robots.txt"] = Reply(301, headers={"Location": "/r1"})
        routes[f"/r{hops}"] = Reply(200, DISALLOW_ALL)
        return make_site(routes)

    five, _ = await documents(chain(5))
    assert five.robots_outcome == "ok"
    six, _ = await documents(chain(6))
    # S7: more than five redirects is unreachable here (block), by our choice
    assert six.robots_outcome == "unreachable"
    assert "redirects" in (six.robots_document.error or "")


async def test_hang_past_the_timeout_is_unreachable(make_site: Callable[..., Site]) -> None:
    release = threading.Event()

    def hang(handler: BaseHTTPRequestHandler) -> None:
        release.wait(10)

    site = make_site({"/robots.txt": hang})
    started = time.monotonic()
    docs, _ = await documents(site, timeout=1.0)
    release.set()
    assert docs.robots_outcome == "unreachable"
    assert time.monotonic() - started < 8
    assert says(docs) == Says.UNREACHABLE


async def test_slow_drip_body_is_cut_by_the_total_timeout(make_site: Callable[..., Site]) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"# ....\n")
                handler.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    site = make_site({"/robots.txt": drip})
    docs, _ = await documents(site, timeout=1.0)
    assert docs.robots_outcome == "unreachable"


async def test_connection_refused_is_unreachable(make_site: Callable[..., Site]) -> None:
    site = make_site({})
    site.close()
    docs, _ = await documents(site)
    assert docs.robots_outcome == "unreachable"
    assert docs.robots_document.status is None and docs.robots_document.error


async def test_two_mib_file_is_read_only_to_the_cap(make_site: Callable[..., Site]) -> None:
    body = ("User-agent: *\nDisallow: /early\n" + "# filler line\n" * 160_000 + "Disallow: /late\n").encode()
    assert len(body) > 2 * 1024 * 1024
    site = make_site({"/robots.txt": Reply(200, body)})
    docs, _ = await documents(site, timeout=5.0)
    assert docs.robots_outcome == "ok"
    assert docs.robots_document.truncated
    assert says(docs, "/early/x") == Says.DISALLOW
    assert says(docs, "/late/x") == Says.ALLOW


async def test_bom_and_crlf(make_site: Callable[..., Site]) -> None:
    site = make_site({"/robots.txt": Reply(200, b"\xef\xbb\xbfUser-agent: ExampleBot\r\nDisallow: /x\r\n")})
    docs, _ = await documents(site)
    assert says(docs, "/x/1") == Says.DISALLOW
    assert says(docs, "/y") == Says.ALLOW


async def test_invalid_utf8_does_not_break_parsing(make_site: Callable[..., Site]) -> None:
    site = make_site({"/robots.txt": Reply(200, b"User-agent: *\nDisallow: /\xff\xfe\nDisallow: /x\n")})
    docs, _ = await documents(site)
    assert docs.robots_outcome == "ok"
    assert says(docs, "/x") == Says.DISALLOW


async def test_evidence_hash_is_of_the_bytes_served(make_site: Callable[..., Site]) -> None:
    import hashlib

    site = make_site({"/robots.txt": Reply(200, DISALLOW_ALL)})
    docs, _ = await documents(site)
    assert docs.robots_document.sha256 == hashlib.sha256(DISALLOW_ALL.encode()).hexdigest()
    assert docs.robots_document.fetched_at.endswith("Z")


async def test_cache_control_sets_the_ttl(make_site: Callable[..., Site]) -> None:
    site = make_site({"/robots.txt": Reply(200, DISALLOW_ALL, {"Cache-Control": "public, max-age=3600"})})
    _, ttl = await documents(site)
    assert ttl == 3600  # S10


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, MAX_TTL),
        ("max-age=3600", 3600),
        ("max-age=999999", MAX_TTL),  # RFC 9309 §2.4: never more than 24 h
        ("no-cache", MIN_TTL),
        ("max-age=0", MIN_TTL),
        ("s-maxage=120, max-age=60", 120),
    ],
)
def test_ttl_from_cache_control(header: str | None, ttl: float) -> None:
    assert ttl_from_cache_control(header) == ttl


async def test_last_good_copy_survives_an_outage(make_site: Callable[..., Site]) -> None:
    # S8: a good copy stays in force when the refresh finds the origin down.
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nDisallow: /private\n")})
    good, _ = await documents(site)
    site.routes["/robots.txt"] = Reply(503, "down")
    kept, ttl = await documents(site, good)
    assert kept.stale_because is not None and kept.stale_because.status == 503
    assert ttl == 300
    assert says(kept, "/private/x") == Says.DISALLOW
    assert says(kept, "/pub") == Says.ALLOW


@pytest.mark.parametrize(("path", "attr"), [("/.well-known/tdmrep.json", "tdm_json"), ("/ai.txt", "ai_txt")])
async def test_an_optional_document_keeps_its_good_copy_through_an_outage(
    path: str, attr: str, make_site: Callable[..., Site]
) -> None:
    # One 503 at a refresh must not lift a reservation for robots.txt's whole lifetime.
    body = (
        '[{"location": "/*", "tdm-reservation": 1}]' if "tdmrep" in path else "User-Agent: *\nDisallow: /\n"
    )
    site = make_site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"), path: Reply(200, body)})
    good, ttl_good = await documents(site)
    assert getattr(good, attr).outcome == "ok"
    site.routes[path] = Reply(503, "down")
    kept, ttl = await documents(site, good)
    assert getattr(kept, attr) is getattr(good, attr)
    assert ttl == min(ttl_good, 300)  # asked again soon
    site.routes[path] = Reply(404, "gone")  # an answer, not an outage: the copy goes
    gone, _ = await documents(site, kept)
    assert getattr(gone, attr).outcome == "unavailable"


async def test_https_origin_with_its_own_ca(make_site: Callable[..., Site], ca_pem: object) -> None:
    site = make_site({"/robots.txt": Reply(200, DISALLOW_ALL)}, tls=True)
    docs, _ = await documents(site, ca_file=str(ca_pem))
    assert docs.robots_outcome == "ok"
    untrusted, _ = await documents(site)
    assert untrusted.robots_outcome == "unreachable"  # certificate not trusted: never allow-all
