"""Origins and canonical hosts: the spellings that must meet."""

from __future__ import annotations

import pytest

from proxy.origin import Origin, canonical_host, path_and_query


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Example.COM/a", Origin("http", "example.com", 80)),
        ("HTTPS://example.com./a", Origin("https", "example.com", 443)),
        ("http://user:secret@example.com:8080/a", Origin("http", "example.com", 8080)),
        ("https://bücher.example/", Origin("https", "xn--bcher-kva.example", 443)),
        ("http://[::1]:9000/", Origin("http", "::1", 9000)),
    ],
)
def test_origin_from_url(url: str, origin: Origin) -> None:
    assert Origin.from_url(url) == origin


@pytest.mark.parametrize("url", ["ftp://example.com/", "/relative", "http:///nohost", "mailto:a@b"])
def test_origin_rejects_non_http(url: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        Origin.from_url(url)


def test_origin_url_leaves_default_ports_out() -> None:
    assert Origin("https", "a.example", 443).url("/robots.txt") == "https://a.example/robots.txt"
    assert Origin("http", "a.example", 8080).url("/robots.txt") == "http://a.example:8080/robots.txt"


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("WWW.Example.Com.", "www.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("a_b.example", "a_b.example"),  # IDNA rejects it; still matched as written
        # IPv4 in the forms the WHATWG URL parser and inet_aton read: one server, one name
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.0.0.01", "127.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),  # IPv4-mapped IPv6 reaches the IPv4 address
        ("[::FFFF:7f00:1]", "127.0.0.1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),  # no brackets, as mitmproxy and urlsplit give hosts
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("0::1", "::1"),
        ("[2001:DB8::0:1]", "2001:db8::1"),
        # not addresses: kept as written
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("256.1.1.1", "256.1.1.1"),
        ("08.1.1.1", "08.1.1.1"),
        ("example.123", "example.123"),
    ],
)
def test_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize(
    ("url", "expected"),
    [("http://a/", "/"), ("http://a", "/"), ("http://a/x?y=1#frag", "/x?y=1"), ("http://a/x?", "/x")],
)
def test_path_and_query(url: str, expected: str) -> None:
    assert path_and_query(url) == expected
