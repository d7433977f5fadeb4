"""Origins and host names, spelled one canonical way.

RFC 9309 §2.1 scopes robots.txt to scheme + host + port, so the cache key is
an `Origin`. The registry matches hosts, and a host can be spelled many ways
that all reach the same site: upper case, a trailing dot, Unicode or punycode
(UTS #46 maps both to one ASCII form), with a port or userinfo in a URL, and
an IP address in any of the forms resolvers accept (`127.1`, `0x7f000001`,
`[::ffff:127.0.0.1]`). `canonical_host` removes every one of those differences.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=65536)
def canonical_host(host: str) -> str:
    """Return the lower-case ASCII (punycode) form of `host`, without trailing dots.

    IP addresses are returned in one form (dotted quad; compressed IPv6, no brackets), names
    that IDNA rejects lower-cased as they are, so that matching still works on them; raises
    nothing.
    """
    h = host.strip().rstrip(".").lower()
    if ":" in h:
        return _ipv6(h)
    if h.isascii() and "xn--" not in h:
        return _ipv4(h) or h
    try:
        # UTS #46 maps full-width dots, case and compatibility forms, so the
        # Unicode and punycode spellings of one name meet here.
        return idna.encode(h, uts46=True, transitional=False).decode("ascii").rstrip(".")
    except idna.IDNAError:
        try:
            return h.encode("idna").decode("ascii")
        except UnicodeError:
            return h


_IPV4_PART = re.compile(r"0[x][0-9a-f]*|[0-9]+")


def _ipv4(h: str) -> str | None:
    """The dotted-quad form of an IPv4 address however it is spelled (the WHATWG URL host
    parser, as inet_aton reads it too): `127.1`, `0x7f.1`, `2130706433` and `0177.0.0.1` are
    all 127.0.0.1, one server. None if `h` is not such an address."""
    parts = h.split(".")
    if not h or (not h[-1].isdigit() and not parts[-1].startswith("0x")) or len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            return None
        if part.startswith("0x"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                return None
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return str(ipaddress.IPv4Address(value))


def _ipv6(address: str) -> str:
    """An IPv6 address (bracketed or not) compressed and without brackets, as mitmproxy and
    urlsplit give hosts (Origin.url adds them back), or the IPv4 address an IPv4-mapped one
    reaches; anything else as it is."""
    try:
        parsed = ipaddress.IPv6Address(address.strip("[]"))
    except ValueError:
        return address
    return str(parsed.ipv4_mapped) if parsed.ipv4_mapped else parsed.compressed


@dataclass(frozen=True, slots=True)
class Origin:
    """scheme://host:port, canonical, with the port always explicit."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, scheme: str, host: str, port: int | None) -> Origin:
        """Build an origin from parts as mitmproxy gives them."""
        s = scheme.lower()
        return cls(s, canonical_host(host), port or DEFAULT_PORTS.get(s, 80))

    @classmethod
    def from_url(cls, url: str) -> Origin:
        """Parse an absolute http(s) URL; raises ValueError for anything else."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        return cls.of(parts.scheme, parts.hostname, parts.port)

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this origin (the default port left out)."""
        host = self.host if ":" not in self.host or self.host.startswith("[") else f"[{self.host}]"
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return f"{self.scheme}://{host}{path}"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __str__(self) -> str:
        return self.url("")

    @property
    def key(self) -> str:
        """The origin as one string: the key of its pace (proxy.politeness)."""
        return self.url("")


def path_and_query(url: str) -> str:
    """The part of `url` that robots.txt rules match: path plus `?query`, `/` if empty."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path
