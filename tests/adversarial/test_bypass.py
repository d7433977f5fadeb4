"""Issue 7 as an attacker tries it: raw sockets through a real mitmdump with our addon.

Every case asserts what the promise says: the opted-out marker never appears
in a byte the client receives, the origin saw no request (or no connection)
where a block must not contact it, and the audit log has the decision.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.adversarial.rawnet import MARKER, CountingOrigin, H2Origin, exchange, h2_get, read_all, tunnel
from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess


@pytest.fixture
def origin() -> Iterator[CountingOrigin]:
    o = CountingOrigin()
    yield o
    o.close()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_policy(
        tmp_path,
        registry=[
            entry("Studio Example", "holder.test"),
            entry("Works Inc", "localhost.test", paths=["/works/"]),
            entry("Loopback Holder", "127.0.0.9"),
        ],
    )


def records(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return proxy.records()


def get(path: str, host: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def in_tunnel(proxy: ProxyProcess, origin: CountingOrigin, raw: bytes) -> bytes:
    """Send `raw` inside a plain CONNECT tunnel to `origin`; every byte that comes back."""
    with tunnel(proxy.port, f"127.0.0.1:{origin.port}") as s:
        s.sendall(raw)
        return read_all(s, 3.0)


# -- raw tunnels -----------------------------------------------------------------

RAW_VARIANTS = {
    "leading-crlf": lambda a: [b"\r\n" + get("/private/x", a)],
    "leading-lf": lambda a: [b"\n" + get("/private/x", a)],
    "split-method": lambda a: [b"GE", get("/private/x", a)[2:]],
    "two-blank-lines": lambda a: [b"\r\n\r\n" + get("/private/x", a)],
    "garbage-then-request": lambda a: [b"\x16\x00garbage\r\n" + get("/private/x", a)],
    "blank-line-chunks": lambda a: [b"\r\n", get("/private/x", a)],
}


@pytest.mark.parametrize("variant", list(RAW_VARIANTS))
def test_raw_bytes_in_a_tunnel_are_never_relayed(
    variant: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    authority = f"127.0.0.1:{origin.port}"
    s = tunnel(proxy.port, authority)
    with s:
        for chunk in RAW_VARIANTS[variant](authority):
            s.sendall(chunk)
        got = read_all(s, 3.0)
    assert MARKER not in got
    assert "/private/x" not in origin.paths()
    judged = [r for r in records(proxy) if r["url"].endswith("/private/x")]
    if judged:  # parsed as HTTP: decided and recorded as a block
        assert all(r["decision"] == "block" for r in judged)
    else:  # not HTTP: refused by the parser, nothing reached the origin
        assert origin.content_requests() == []


def test_a_connect_to_a_dns_port_is_parsed_as_http_not_relayed(
    make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    query = b"\x00\x1d\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    s = tunnel(proxy.port, "127.0.0.1:53")
    with s:
        s.sendall(query)
        got = read_all(s, 2.0)
    assert got == b"" or got.startswith(b"HTTP/1.1 4"), got[:100]  # refused as HTTP, never relayed
    assert proxy.wait_for_log("parsing it as HTTP instead")


# -- fail-open start -------------------------------------------------------------


# -- path tricks -----------------------------------------------------------------

PATH_TRICKS = [
    "/x/../private",
    "/./private",
    "//private",
    "/%2e%2e/private",
    "/public/..%2fprivate",
    "/public/%2E%2E/private",
    "/%70rivate",
    "/public/..%5cprivate",
    "/..;/private",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
def test_path_tricks_do_not_pass_a_disallow(
    path: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    got = exchange(proxy.port, [get(f"http://127.0.0.1:{origin.port}{path}", f"127.0.0.1:{origin.port}")])
    assert got.startswith(b"HTTP/1.1 451"), got[:200]
    assert MARKER not in got
    assert origin.content_requests() == []
    assert [r["signal"] for r in records(proxy) if r["decision"] == "block"] == ["robots-txt"]


@pytest.mark.parametrize(
    "path", ["/%77orks/a", "//works/a", "/x/../works/a", "/./works/a", "/%2577orks/../works/a"]
)
def test_path_tricks_do_not_pass_a_registry_path(
    path: str, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    got = exchange(proxy.port, [get(f"http://localhost.test{path}", "localhost.test")])
    assert got.startswith(b"HTTP/1.1 451"), got[:200]
    assert [r["signal"] for r in records(proxy)] == ["registry"]


def test_a_double_slash_rule_is_not_mangled(make_proxy: Callable[..., ProxyProcess], policy: Path) -> None:
    o = CountingOrigin(robots="User-agent: *\nDisallow: //\n")
    try:
        proxy = make_proxy(policy)
        got = exchange(proxy.port, [get(f"http://127.0.0.1:{o.port}//a", f"127.0.0.1:{o.port}")])
        ok = exchange(proxy.port, [get(f"http://127.0.0.1:{o.port}/a", f"127.0.0.1:{o.port}")])
        assert got.startswith(b"HTTP/1.1 451") and MARKER not in got
        assert ok.startswith(b"HTTP/1.1 200") and MARKER in ok
        assert o.content_requests() == ["/a"]
    finally:
        o.close()


# -- name confusion --------------------------------------------------------------


def test_host_naming_another_site_is_replaced_by_the_target(
    origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    got = exchange(proxy.port, [get(f"http://127.0.0.1:{origin.port}/page", "other.example")])
    assert got.startswith(b"HTTP/1.1 200")
    heads = [h for p, h in origin.requests if p == "/page"]
    assert heads and f"Host: 127.0.0.1:{origin.port}".encode() in heads[0]
    rec = next(r for r in records(proxy) if r["url"].endswith("/page"))
    assert any(e["signal"] == "host-header" for e in rec["evidence"])


@pytest.mark.parametrize(
    "hosts",
    [
        ["127.0.0.1", "holder.test"],
        ["holder.test", "127.0.0.1"],
        ["www.holder.test", "www.holder.test"],
        ["HOLDER.TEST.", "x.example"],
        ["127.0.0.1", "127.0.0.1"],
        ["a.example", "b.example"],
    ],
)
def test_several_host_fields_are_refused(
    hosts: list[str], origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    fields = "".join(f"Host: {h}\r\n" for h in hosts)
    raw = f"GET http://127.0.0.1:{origin.port}/page HTTP/1.1\r\n{fields}Connection: close\r\n\r\n".encode()
    got = exchange(proxy.port, [raw])
    blocked = any("holder.test" in h.lower() for h in hosts)
    assert got.startswith(b"HTTP/1.1 451" if blocked else b"HTTP/1.1 400"), got[:200]
    assert MARKER not in got
    assert origin.content_requests() == []
    assert len(records(proxy)) == 1


@pytest.mark.parametrize(
    "host", ["holder.test", "www.holder.test", "WWW.Holder.Test.", "holder.test:80", "xn--holder.test"]
)
def test_a_tunnel_whose_requests_name_a_registry_host_is_judged_on_both(
    host: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    got = in_tunnel(proxy, origin, get("/page", host))
    # xn--holder.test is not in the registry, but its own robots.txt is unreachable: blocked too.
    assert got.startswith(b"HTTP/1.1 451"), got[:200]
    assert MARKER not in got and origin.content_requests() == []


@pytest.mark.parametrize(
    "target", ["http://holder.test/page", "http://www.holder.test:80/page", "http://Holder.Test./page"]
)
def test_an_absolute_target_inside_a_tunnel_is_judged_as_a_name(
    target: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    # mitmproxy keeps an absolute-form target inside a tunnel and sends it upstream as is,
    # where an RFC 9112 §3.2.2 origin serves the host it names rather than Host's.
    proxy = make_proxy(policy)
    got = in_tunnel(proxy, origin, get(target, f"127.0.0.1:{origin.port}"))
    assert got.startswith((b"HTTP/1.1 451", b"HTTP/1.1 400")), got[:200]
    assert MARKER not in got and origin.content_requests() == []
    assert [r["decision"] for r in records(proxy)] == ["block"]


def test_sni_naming_a_registry_host_is_judged(
    make_proxy: Callable[..., ProxyProcess], policy: Path, server_tls: ssl.SSLContext
) -> None:
    o = CountingOrigin(tls=server_tls)
    try:
        proxy = make_proxy(policy)
        for sni in ("holder.test", "www.holder.test", "cdn.holder.test", "HOLDER.test", "a.b.holder.test"):
            s = tunnel(proxy.port, f"localhost:{o.port}", sni=sni, ca=str(proxy.ca_cert))
            with s:
                s.sendall(get("/page", f"localhost:{o.port}"))
                got = read_all(s, 3.0)
            assert got.startswith(b"HTTP/1.1 451"), got[:200]
            assert MARKER not in got
        assert o.connections == 0  # never contacted: not even a TLS handshake
        assert len([r for r in records(proxy) if r["signal"] == "registry"]) == 5
    finally:
        o.close()


# -- contact before decision -----------------------------------------------------


def test_connect_to_a_registry_host_opens_no_connection(
    make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    o = CountingOrigin()
    try:
        proxy = make_proxy(policy)
        for authority in (
            f"127.0.0.9:{o.port}",
            f"127.0.0.9:{o.port}",
            "holder.test:443",
            "www.holder.test:443",
            "HOLDER.TEST.:443",
        ):
            with pytest.raises(ConnectionRefusedError) as refused:
                tunnel(proxy.port, authority)
            assert "451" in str(refused.value)
        assert o.connections == 0
        assert [r["phase"] for r in records(proxy)] == ["connect"] * 5
    finally:
        o.close()


# -- addresses and outbound fetches ------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "[::1]",
        "2130706433",
        "localhost",
        "169.254.169.254",
        "10.0.0.1",
        "[::ffff:127.0.0.1]",
    ],
)
def test_private_addresses_are_blocked_by_default(
    target: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    strict = write_policy(tmp_path / "strict", private_addresses="block")
    proxy = make_proxy(strict)
    got = exchange(proxy.port, [get(f"http://{target}:{origin.port}/page", f"{target}:{origin.port}")])
    assert got.startswith(b"HTTP/1.1 451"), got[:200]
    assert b"private-address" in got
    assert origin.connections == 0
    assert [r["signal"] for r in records(proxy)] == ["private-address"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "0.0.0.0", "[::1]"])
def test_the_proxy_itself_is_never_reachable_through_it(
    host: str, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)  # private_addresses: allow
    got = exchange(proxy.port, [get(f"http://{host}:{proxy.port}/", f"{host}:{proxy.port}")])
    assert got.startswith(b"HTTP/1.1 451"), got[:200]
    assert b"proxy-self" in got


def test_licences_named_by_sites_are_not_fetched_from_registry_or_odd_places(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    def licence(path: str, head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"

    allowed = CountingOrigin(respond=licence)
    registered = CountingOrigin(respond=licence, host="127.0.0.9")  # a registry host
    try:
        lines = [
            f"License: http://127.0.0.1:{allowed.port}/ok.xml",  # the control: fetched
            f"License: http://127.0.0.9:{registered.port}/l1.xml",
            f"License: http://www.127.0.0.9.nip.invalid:{registered.port}/l2.xml",
            "License: file:///etc/passwd",
        ]
        site = CountingOrigin(robots="User-agent: *\nAllow: /\n" + "\n".join(lines) + "\n")
        pol = write_policy(
            tmp_path, registry=[entry("H", "holder.test"), entry("L", "127.0.0.9")],
            signals={"robots-txt": "enforce", "registry": "enforce", "rsl": "enforce"},
        )  # fmt: skip
        proxy = make_proxy(pol)
        exchange(proxy.port, [get(f"http://127.0.0.1:{site.port}/page", f"127.0.0.1:{site.port}")])
        assert allowed.paths() == ["/ok.xml"]
        assert registered.connections == 0
        assert len(proxy.records()) == 1
        site.close()
    finally:
        allowed.close()
        registered.close()


# -- exposure ----------------------------------------------------------------------


def test_an_open_listen_address_refuses_to_start_without_proxyauth(policy: Path, tmp_path: Path) -> None:
    from tests.proxyproc import run_mitmdump_expecting_exit

    for extra in (["--listen-host", "0.0.0.0"], ["--listen-host", ""], ["--listen-host", "::"]):
        code, out = run_mitmdump_expecting_exit(policy, tmp_path / "conf", extra=extra)
        assert code != 0 and "open proxy" in out
        # Said once, plainly: a refusal that forced options meanwhile looped to the recursion limit.
        assert out.count("cannot start") == 1 and "recursion" not in out, out[-2000:]


def test_proxyauth_or_a_trusted_network_allow_other_listen_addresses(
    origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy, listen_host="0.0.0.0", proxyauth="crawler:secret")
    got = exchange(proxy.port, [get(f"http://127.0.0.1:{origin.port}/page", f"127.0.0.1:{origin.port}")])
    assert got.startswith(b"HTTP/1.1 407")
    assert origin.content_requests() == []
    with httpx.Client(proxy=f"http://crawler:secret@127.0.0.1:{proxy.port}", trust_env=False) as c:
        assert c.get(f"http://127.0.0.1:{origin.port}/page").status_code == 200
    trusted = make_proxy(policy, listen_host="0.0.0.0", optout_trusted_network="true")
    assert exchange(
        trusted.port, [get(f"http://127.0.0.1:{origin.port}/p", f"127.0.0.1:{origin.port}")]
    ).startswith(b"HTTP/1.1 200")


# -- protocol edges ----------------------------------------------------------------


def test_a_451_to_head_has_no_body_and_keep_alive_stays_in_step(
    origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    a = f"127.0.0.1:{origin.port}"
    head = f"HEAD http://{a}/private/x HTTP/1.1\r\nHost: {a}\r\n\r\n".encode()
    got = exchange(proxy.port, [head + get(f"http://{a}/page", a)])
    first, _, rest = got.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 451")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:100]  # no body bytes between the two answers


def test_trailers_do_not_hang_the_client(make_proxy: Callable[..., ProxyProcess], policy: Path) -> None:
    def chunked(path: str, head: bytes) -> bytes:
        if path == "/robots.txt":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")  # fmt: skip

    o = CountingOrigin(respond=chunked)
    try:
        proxy = make_proxy(policy)
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
            r = c.get(f"http://127.0.0.1:{o.port}/t")
        assert (r.status_code, r.text) == (200, "hello")
    finally:
        o.close()


def test_a_client_offering_http2_gets_every_check(
    make_proxy: Callable[..., ProxyProcess], policy: Path, server_tls: ssl.SSLContext
) -> None:
    o = CountingOrigin(tls=server_tls)
    try:
        proxy = make_proxy(policy)
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
        with httpx.Client(proxy=proxy.url, verify=ctx, http2=True, trust_env=False, timeout=10) as c:
            blocked = c.get(f"https://localhost:{o.port}/private/x")
            ok = c.get(f"https://localhost:{o.port}/page")
            fronted = c.get(f"https://localhost:{o.port}/page", headers={"host": "www.holder.test"})
        # mitmproxy 11 with lazy connections negotiates HTTP/1.1 with this client while the
        # origin is unknown; HTTP/2 end to end is not covered here yet.
        assert blocked.status_code == 451 and MARKER.decode() not in blocked.text
        assert ok.status_code == 200
        assert fronted.status_code in (400, 451) and MARKER.decode() not in fronted.text
        assert "/private/x" not in o.paths()
    finally:
        o.close()


@pytest.fixture
def h2_origin(ca: trustme.CA) -> Iterator[H2Origin]:
    o = H2Origin(ca.issue_cert("localhost", "127.0.0.1").configure_cert)
    yield o
    o.close()


def test_http2_on_both_sides_gets_every_check(
    h2_origin: H2Origin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    a = f"localhost:{h2_origin.port}"
    ok = h2_get(proxy.port, a, "/page", str(proxy.ca_cert))
    assert ok[2] == "h2" and ok[0] == 200 and MARKER in ok[1], ok[1][:400]  # h2 both ways
    for path in ("/private/x", "/x/../private", "//private", "/%70rivate"):
        status, body, alpn = h2_get(proxy.port, a, path, str(proxy.ca_cert))
        assert (alpn, status) == ("h2", 451) and MARKER not in body, (path, status)
    # :authority naming a registry host inside the tunnel, and an SNI naming one
    fronted = h2_get(proxy.port, a, "/page", str(proxy.ca_cert), header_authority="www.holder.test")
    sni = h2_get(proxy.port, a, "/page", str(proxy.ca_cert), sni="holder.test")
    assert fronted[0] == 451 and MARKER not in fronted[1]
    assert sni[0] == 451 and MARKER not in sni[1]
    docs = ("/robots.txt", "/ai.txt", "/.well-known/ai.txt", "/.well-known/tdmrep.json")
    assert [p for p in h2_origin.paths() if p not in docs] == ["/page"]


def test_an_http2_path_that_is_not_origin_form_is_refused(
    h2_origin: H2Origin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    # mitmproxy relays :path verbatim; an origin reads an absolute URL in it as the host to
    # serve, and "private/x" as "/private/x" (robots.txt says Disallow: /private).
    proxy = make_proxy(policy)
    a = f"localhost:{h2_origin.port}"
    for path in ("https://www.holder.test/page", f"https://{a}/private/x", "private/x", "*"):
        status, body, _ = h2_get(proxy.port, a, path, str(proxy.ca_cert))
        assert status == 400 and MARKER not in body, (path, status)
        assert body.startswith(b"400 Bad Request: blocked by optout-proxy\nsignal: target-form\n"), body
    docs = ("/robots.txt", "/ai.txt", "/.well-known/ai.txt", "/.well-known/tdmrep.json")
    assert [p for p in h2_origin.paths() if p not in docs] == []
    refused = [r for r in records(proxy) if r["signal"] == "target-form"]
    assert len(refused) == 4 and all(r["decision"] == "block" for r in refused)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/x HTTP/1.1\r\nHost: www.holder.test\r\n\r\nGET /x", []),  # a second request in :path
        ("/x\nHost: www.holder.test", []),
        ("/page", [("x-a", "b\r\nHost: www.holder.test")]),  # or in a field value
        ("/page", [("x-a", "b\x00c")]),
        ("/x#/../private/x", []),  # a fragment we would cut off and some origins keep
        ("/x /private/x", []),
    ],
)
def test_an_http2_request_that_http1_would_read_otherwise_is_refused(
    path: str, fields: list[tuple[str, str]], server_tls: ssl.SSLContext,
    make_proxy: Callable[..., ProxyProcess], policy: Path,
) -> None:  # fmt: skip
    # mitmproxy writes :path and field values verbatim into the HTTP/1 request it sends on.
    o = CountingOrigin(tls=server_tls)
    try:
        proxy = make_proxy(policy)
        status, body, _ = h2_get(proxy.port, f"localhost:{o.port}", path, str(proxy.ca_cert), fields=fields)
        assert status == 400 and MARKER not in body, (status, body[:200])
        assert o.content_requests() == []
        assert [r["signal"] for r in records(proxy)] == ["target-form"]
    finally:
        o.close()


@pytest.mark.parametrize("target", ["/robots.txt#/../private/x", "/x#/../private/x"])
def test_a_fragment_in_the_request_target_is_refused(
    target: str, origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    plain = exchange(proxy.port, [get(f"http://127.0.0.1:{origin.port}{target}", f"127.0.0.1:{origin.port}")])
    tunnelled = in_tunnel(proxy, origin, get(target, f"127.0.0.1:{origin.port}"))
    for got in (plain, tunnelled):
        assert got.startswith((b"HTTP/1.1 400", b"HTTP/1.1 451")) and MARKER not in got, got[:200]
    assert [p for p in origin.paths() if "#" in p] == []


def test_a_request_body_over_the_cap_is_refused_on_the_record(
    origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    # mitmproxy answers 413 itself, before any request hook: the error hook records it.
    proxy = make_proxy(policy, optout_body_cap=1000)
    a = f"127.0.0.1:{origin.port}"
    body = b"x" * 5000
    head = f"POST http://{a}/upload HTTP/1.1\r\nHost: {a}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    got = exchange(proxy.port, [head.encode() + body])
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert "/upload" not in origin.paths()
    (record,) = records(proxy)
    assert (record["decision"], record["signal"], record["status"]) == ("block", "request-over-cap", 413)


def test_a_robots_txt_line_cut_by_the_size_limit_is_dropped(
    make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    # `Allow: /public-gallery/` cut at byte 512,000 reads `Allow: /`, which ties `Disallow: /`
    # and wins the tie: the fetch must show the reader that its last line was cut.
    limit, cut = 500 * 1024, "Allow: /"
    body = "User-agent: *\nDisallow: /\n" + ("#" * 99 + "\n") * 5000
    body += "#" * (limit - len(cut) - len(body) - 1) + "\n" + "Allow: /public-gallery/\n"
    assert body.encode()[:limit].endswith(b"\n" + cut.encode())
    o = CountingOrigin(robots=body)
    try:
        proxy = make_proxy(policy)
        got = exchange(
            proxy.port, [get(f"http://127.0.0.1:{o.port}/members/secret.html", f"127.0.0.1:{o.port}")]
        )
        assert got.startswith(b"HTTP/1.1 451") and MARKER not in got, got[:200]
        assert o.content_requests() == []
    finally:
        o.close()


def test_a_field_that_is_not_utf8_is_decided_and_recorded(
    origin: CountingOrigin, make_proxy: Callable[..., ProxyProcess], policy: Path
) -> None:
    proxy = make_proxy(policy)
    a = f"127.0.0.1:{origin.port}"
    for path in ("/page", "/private/x"):
        # Latin-1 and a stray byte, as raw bytes: neither is UTF-8.
        raw = get(f"http://{a}{path}", a, "User-Agent: ExampleBot/1.0 UA\r\n").replace(b"UA", b"caf\xe9 \xff")
        got = exchange(proxy.port, [raw])
        assert got.startswith(b"HTTP/1.1 200" if path == "/page" else b"HTTP/1.1 451"), got[:200]
    assert [(r["url"].rsplit("/", 1)[-1], r["decision"]) for r in records(proxy)] == [
        ("page", "allow"),
        ("x", "block"),
    ]
