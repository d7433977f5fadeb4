"""Fetching policy documents with RFC 9309's failure semantics.

Every answer becomes a `Fetched` with an outcome, never an exception:

| answer                               | outcome       | RFC 9309   |
| 2xx                                  | ok            | §2.3.1.1   |
| 3xx                                  | followed (≤5) | §2.3.1.2   |
| 4xx except 429                       | unavailable   | §2.3.1.3   |
| 429, 5xx, timeout, connection error  | unreachable   | §2.3.1.4   |
| more than 5 redirects                | unreachable   | §2.3.1.2 *  |

* The RFC allows reading a redirect loop as "unavailable" (allow all); we read
  it as unreachable, which protects the rights holder (signals.md §13.2).
429 is grouped with server errors as Google does (signals.md §2.2).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import re
import socket
import ssl
from dataclasses import dataclass

import certifi
import httpx

from proxy import __version__
from proxy.addresses import GuardedBackend, guard_transport
from proxy.codings import Undecodable, codings_of, decode
from proxy.errors import LocalLimit
from proxy.evidence import Document, utc_now

PRODUCT = f"optout-proxy/{__version__}"
MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2: follow at least five
# RFC 9309 §2.4: do not use a cached copy for more than 24 hours.
MAX_TTL = 24 * 3600.0
# A "no-cache" robots.txt must not make us refetch it for every request.
MIN_TTL = 60.0
_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-store|no-cache)(?:$|[,\s])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one document fetch produced."""

    outcome: str  # "ok" | "unavailable" | "unreachable"
    document: Document
    body: bytes | None  # ok only; at most max_bytes, or max_bytes + 1 when truncated
    ttl: float  # seconds this answer may be cached (before clamping by the caller)
    headers: tuple[tuple[str, str], ...] = ()  # of the final response, when there was one


def ttl_from_cache_control(value: str | None) -> float:
    """Freshness from Cache-Control, clamped to [MIN_TTL, MAX_TTL] (RFC 9309 §2.4)."""
    if not value:
        return MAX_TTL
    if _NO_CACHE.search(value):
        return MIN_TTL
    m = _MAX_AGE.search(value)
    if m is None:
        return MAX_TTL
    return min(max(float(m.group(1)), MIN_TTL), MAX_TTL)


def answer_deadline(timeout: float) -> float:
    """Seconds a whole policy document may take: headers plus a slow body, never more than
    twice the per-operation `timeout` (a server dripping bytes cannot hold a fetch open)."""
    return 2 * timeout


def make_client(
    *,
    timeout: float,
    verify: bool = True,
    ca_file: str | None = None,
    ca_path: str | None = None,
    agent: str | None = None,
    backend: GuardedBackend | None = None,
) -> httpx.AsyncClient:
    """The client for policy documents: never through a proxy, TLS as mitmproxy verifies upstream.

    It identifies as the crawler's product token `agent`, fetching on the crawler's behalf.
    With `backend`, every connection (redirects included) goes only where it allows.
    """
    context: ssl.SSLContext | bool
    if not verify:
        context = False
    elif ca_file or ca_path:
        context = ssl.create_default_context(cafile=ca_file or None, capath=ca_path or None)
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    # HTTP/2 where the origin offers it: some answer nothing else (h2 is a dependency of mitmproxy).
    # No pool limit: concurrency is bounded before a fetch starts (optout_fetch_concurrency),
    # so a burst of new origins queues there instead of timing out in the pool.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    transport = httpx.AsyncHTTPTransport(verify=context, http2=True, limits=limits)
    if backend is not None:
        guard_transport(transport, backend)
    return httpx.AsyncClient(
        transport=transport,  # carries `verify`
        # Our own fetches must never loop back through the proxy via HTTP(S)_PROXY.
        trust_env=False,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
        headers={"User-Agent": f"{agent} ({PRODUCT})" if agent else PRODUCT},
    )


async def fetch_document(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, total_timeout: float
) -> Fetched:
    """GET `url`, reading at most max_bytes + 1 of the body, within total_timeout seconds.

    Raises LocalLimit when the failure was ours (see `is_local`), not the origin's.
    """
    fetched_at = utc_now()
    try:
        async with asyncio.timeout(total_timeout):
            async with client.stream("GET", url) as response:
                status = response.status_code
                final = str(response.url) if str(response.url) != url else None
                if 200 <= status < 300:
                    # Raw bytes, decoded by us with a bound: httpx would inflate a whole network
                    # chunk at once (64 KiB of gzip can be 64 MiB). Compressed data is never
                    # larger than what it decodes to, so max_bytes of it are enough.
                    raw = bytearray()
                    async for chunk in response.aiter_raw():
                        raw += chunk
                        if len(raw) > max_bytes:
                            break
                    codings = codings_of(response.headers.get_list("content-encoding"))
                    try:
                        body, over = decode(bytes(raw), codings, max_bytes)
                    except Undecodable as e:
                        error = f"cannot decode: {e}"
                        doc = Document(url, status, None, fetched_at, final, error)
                        return Fetched("unreachable", doc, None, 0.0)
                    truncated = over or len(raw) > max_bytes
                    # One byte past the limit stays: the reader sees that its last line was cut
                    # (RFC 9309 §2.5: a cut line is dropped, or `Allow: /public` reads `Allow: /`).
                    body = body[: max_bytes + 1]
                    doc = Document(
                        url,
                        status,
                        hashlib.sha256(body).hexdigest(),
                        fetched_at,
                        final,
                        truncated=truncated,
                    )
                    ttl = ttl_from_cache_control(response.headers.get("cache-control"))
                    return Fetched("ok", doc, body, ttl, tuple(response.headers.multi_items()))
                if 400 <= status < 500 and status != 429:
                    doc = Document(url, status, None, fetched_at, final)
                    ttl = ttl_from_cache_control(response.headers.get("cache-control"))
                    return Fetched("unavailable", doc, None, ttl)
                reason = f"HTTP {status}"
                return Fetched(
                    "unreachable", Document(url, status, None, fetched_at, final, reason), None, 0.0
                )
    except TimeoutError:
        error = f"no complete answer within {total_timeout:g} s"
    except httpx.TooManyRedirects:
        error = f"more than {MAX_REDIRECTS} redirects"
    except httpx.PoolTimeout as e:
        raise LocalLimit(f"no connection free for {url}") from e
    except httpx.TimeoutException as e:
        error = f"timed out ({type(e).__name__})"
    except httpx.HTTPError as e:
        if is_local(e):
            raise LocalLimit(f"{url}: {e}") from e
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    except (ssl.SSLError, OSError) as e:
        if is_local(e):
            raise LocalLimit(f"{url}: {e}") from e
        error = f"{type(e).__name__}: {e}"
    return Fetched("unreachable", Document(url, None, None, fetched_at, None, error[:300]), None, 0.0)


# errno values that mean this machine ran out of something, not that the origin failed.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
# getaddrinfo: the resolver is busy or failed ("try again"); NXDOMAIN is the origin's fact.
_LOCAL_EAI = frozenset({socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11), socket.EAI_MEMORY})


def is_local(error: BaseException) -> bool:
    """True if `error` (or what caused it) is a limit of this machine, not an answer of the origin."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, httpx.PoolTimeout):
            return True
        if isinstance(e, socket.gaierror) and e.errno in _LOCAL_EAI:
            return True
        if isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False
