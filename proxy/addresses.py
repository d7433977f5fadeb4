"""Which network addresses the proxy may reach, for the crawler and for itself.

A crawler routed through us must not reach the proxy's own machine or the
networks behind it: loopback, private (RFC 1918, RFC 4193), link-local (where
cloud metadata services answer, 169.254.169.254 and fd00:ec2::254), shared
(RFC 6598), multicast and reserved ranges. Names are resolved, and every
address they resolve to must be public, so `127.0.0.1.nip.io`, `2130706433`
and `0x7f.1` are caught like `127.0.0.1` (getaddrinfo reads them all).

Our own document fetches connect through `GuardedBackend`, to the very
address that was checked, so a name that resolves differently a moment later
(DNS rebinding) gains nothing there. The crawler's upstream connections are
checked twice: when the request is judged, and in `server_connect` right
before mitmproxy connects (mitmproxy resolves the name once more itself; a
resolver that answers differently within those milliseconds is the residual
window, since pinning the address breaks mitmproxy's connection reuse).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services, named in the evidence (all are also non-global).
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
# How long a resolution is reused; short, since the answer pins connections.
RESOLVE_TTL = 30.0
RESOLVE_CACHE = 4096


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64-style IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def non_public(address: str) -> str | None:
    """Why `address` (an IP literal) is not a public Internet address, or None if it is."""
    try:
        ip = _unwrap(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return "not an IP address"
    if ip in METADATA:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global:
        return "reserved"
    return None


class Resolver:
    """getaddrinfo off the event loop, with a short cache; failures are not cached."""

    def __init__(self, ttl: float = RESOLVE_TTL, size: int = RESOLVE_CACHE) -> None:
        self._ttl = ttl
        self._size = size
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._inflight: dict[str, asyncio.Future[tuple[str, ...]]] = {}

    def cached(self, host: str) -> tuple[str, ...] | None:
        """The addresses `host` resolved to recently, without resolving."""
        hit = self._cache.get(host)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def resolve(self, host: str) -> tuple[str, ...]:
        """Every address `host` resolves to (one look-up shared by concurrent callers).

        Raises OSError when it does not resolve.
        """
        hit = self.cached(host)
        if hit is not None:
            return hit
        pending = self._inflight.get(host)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, ...]] = loop.create_future()
        self._inflight[host] = future
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise OSError(f"{host} resolves to no address")
            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[host] = (time.monotonic() + self._ttl, addresses)
            future.set_result(addresses)
            return addresses
        except BaseException as e:
            future.set_exception(e if isinstance(e, Exception) else OSError(str(e)))
            future.exception()  # retrieved: a failure nobody else awaited is not an error
            raise
        finally:
            del self._inflight[host]


def first_refused(addresses: Iterable[str]) -> tuple[str, str] | None:
    """The first address that is not public, with why; None if all are public."""
    for address in addresses:
        why = non_public(address)
        if why is not None:
            return address, why
    return None


# Says why a host may not be reached by our own fetches (None: it may), before resolving.
HostCheck = Callable[[str], str | None]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses it has checked.

    Used for every policy document we fetch (robots.txt and its redirects,
    ai.txt, tdmrep.json, licences named by sites): a name is resolved here,
    every address must pass, and the connection goes to the checked address.
    """

    def __init__(self, resolver: Resolver, check_host: HostCheck, *, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolver = resolver
        self._check_host = check_host
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        why = self._check_host(host)
        if why is not None:
            raise httpcore.ConnectError(f"refused to fetch from {host}: {why}")
        try:
            addresses = await self._resolver.resolve(host)
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from e
        if not self._allow_private:
            refused = first_refused(addresses)
            if refused is not None:
                raise httpcore.ConnectError(
                    f"refused to fetch from {host}: {refused[0]} is a {refused[1]} address"
                )
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for policy documents")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guard_transport(transport: httpx.AsyncHTTPTransport, backend: GuardedBackend) -> None:
    """Make `transport` connect through `backend`.

    httpx 0.28 does not take a network backend; its pool does. The pin on
    httpx (<0.29) covers the private attribute, and a test fails if it moves.
    """
    pool = transport._pool
    if not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx's connection pool changed: cannot guard policy-document fetches")
    pool._network_backend = backend
