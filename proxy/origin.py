"""Origins and host names, spelled one canonical way.

RFC 9309 §2.1 scopes robots.txt to scheme + host + port, so the cache key is
an `Origin`. The registry matches hosts, and a host can be spelled many ways
that all reach the same site: upper case, a trailing dot, Unicode or punycode
(UTS #46 maps both to one ASCII form), with a port or userinfo in a URL.
`canonical_host` removes every one of those differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=65536)
def canonical_host(host: str) -> str:
    """Return the lower-case ASCII (punycode) form of `host`, without trailing dots.

    IP literals and names that IDNA rejects are returned lower-cased as they are,
    so that matching still works on them; raises nothing.
    """
    h = host.strip().rstrip(".").lower()
    if h.startswith("[") and h.endswith("]"):
        return h
    if h.isascii() and "xn--" not in h:
        return h
    try:
        # UTS #46 maps full-width dots, case and compatibility forms, so the
        # Unicode and punycode spellings of one name meet here.
        return idna.encode(h, uts46=True, transitional=False).decode("ascii").rstrip(".")
    except idna.IDNAError:
        try:
            return h.encode("idna").decode("ascii")
        except UnicodeError:
            return h


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
