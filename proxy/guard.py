"""The connection guard: every byte a client sends is HTTP that we judge, or it is refused.

mitmproxy's defaults favour getting traffic through (shared/reference/
mitmproxy-edges.md). Each default that would relay bytes we never judge is
closed here:

* **Options.** `rawtcp` and `connection_strategy` are forced to `false` and
  `lazy` (their defaults fail open); options that relay unjudged bytes
  (`ignore_hosts`, `allow_hosts`, `tcp_hosts`, `udp_hosts`, proxy modes other
  than `regular` and `upstream`) refuse to start. So does listening beyond
  loopback without `proxyauth`, unless `optout_trusted_network` says so.
* **Layers.** Whatever mitmproxy's layer chooser picks, a raw TCP, UDP, DNS or
  QUIC relay is replaced by HTTP parsing (`harden_layer`): bytes that are not
  HTTP get mitmproxy's 400, never a relay. Raw flows that still appear are
  killed in their start hooks.
* **Names.** A request may go by several names: its target, its `Host`
  header(s), HTTP/2's `:authority`, the CONNECT authority and the TLS SNI.
  `request_names` collects them; every one is judged, and a Host that names
  another site than an absolute-form target is replaced by the target's
  (RFC 9112 §3.2.2), so the origin serves what was decided on.
* **Addresses.** The crawler may not reach loopback, private, link-local or
  metadata addresses (policy key `private_addresses`), nor the proxy's own
  listening and metrics ports in any case; the address mitmproxy is about
  to connect to is checked again in `server_connect`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.quic import RawQuicLayer

from proxy.addresses import Resolver, first_refused
from proxy.fields import values
from proxy.origin import canonical_host

# mitmproxy defaults that fail open, and the values we run with instead. (WebSocket messages are
# content no reader of ours judges: after a 101 nothing is relayed, and the 101 itself is withheld.)
FORCED_OPTIONS: dict[str, Any] = {"rawtcp": False, "connection_strategy": "lazy", "websocket": False}
# Proxy modes in which every client byte arrives as an HTTP request we see.
SAFE_MODES = ("regular", "upstream")
_RAW_LAYERS = (layers.TCPLayer, layers.UDPLayer, layers.DNSLayer, RawQuicLayer)
# Options that make mitmproxy relay bytes without parsing them, and why it matters.
_RELAYING_OPTIONS = {
    "ignore_hosts": "passes matching connections through unintercepted",
    "allow_hosts": "passes every other connection through unintercepted",
    "tcp_hosts": "relays matching connections as raw TCP",
    "udp_hosts": "relays matching connections as raw UDP",
}


def mode_name(spec: str) -> str:
    """The mode of a mitmproxy mode spec: `regular@8081` -> `regular`, `upstream:http://x` -> `upstream`."""
    return spec.split("@", 1)[0].split(":", 1)[0].strip().lower()


def is_loopback_host(host: str) -> bool:
    """True if `host` (a listen address) only accepts connections from this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def option_problems(options: Any, *, trusted_network: bool) -> list[str]:
    """What in mitmproxy's options would let bytes through unjudged, or leave an open proxy.

    `options` is mitmproxy's option manager (read by attribute).
    """
    problems = []
    for name, what in _RELAYING_OPTIONS.items():
        if getattr(options, name, None):
            problems.append(f"{name} {what}: optout-proxy must judge every request; unset it")
    if getattr(options, "map_remote", None):
        problems.append("map_remote rewrites requests after they are judged: unset it")
    for spec in getattr(options, "modify_headers", None) or ():
        parts = spec[1:].split(spec[0]) if spec else []
        if len(parts) >= 2 and parts[1].strip().lower() in ("host", ":authority"):
            problems.append(f"modify_headers {spec!r} changes the Host after it is judged: unset it")
    for spec in getattr(options, "mode", ()):
        if mode_name(spec) not in SAFE_MODES:
            problems.append(
                f"mode {spec!r}: only {' and '.join(SAFE_MODES)} proxy modes are judged request by "
                "request; other modes relay raw TCP, UDP or DNS"
            )
    listen_host = getattr(options, "listen_host", "127.0.0.1")
    if (
        not trusted_network
        and not getattr(options, "proxyauth", None)
        and not is_loopback_host(listen_host or "")
    ):
        where = listen_host or "every interface"
        problems.append(
            f"listen_host {where!r} without proxyauth makes an open proxy (it would also reach this "
            "machine's loopback services): set proxyauth=USER:PASS (or an htpasswd file), listen on "
            "127.0.0.1, or set optout_trusted_network=true if the network in front is trusted"
        )
    return problems


def harden_layer(nextlayer: layer.NextLayer) -> str | None:
    """Replace a raw relay chosen by mitmproxy with HTTP parsing; returns what was replaced.

    HTTP parsing answers bytes that are not HTTP with 400 and closes: nothing
    is relayed unjudged. A UDP relay has no HTTP to parse; it is left unset,
    and the `udp_start` hook kills whatever still starts.
    """
    chosen = nextlayer.layer
    if not isinstance(chosen, _RAW_LAYERS):
        return None
    name = type(chosen).__name__
    if nextlayer.context.client.transport_protocol == "tcp":
        nextlayer.layer = layers.HttpLayer(nextlayer.context, HTTPMode.transparent)
    else:
        nextlayer.layer = None
    return name


@dataclass(frozen=True, slots=True)
class RequestNames:
    """Every name one request goes by, canonical."""

    target: str  # the host the proxy connects to (the CONNECT authority inside a tunnel)
    host_headers: tuple[str, ...]  # each distinct Host field (and HTTP/2 :authority), as hosts
    sni: str | None  # the TLS server name the client sent
    tunnelled: bool  # the request came through a CONNECT tunnel (relative form)
    host_fields: int = 1  # how many Host fields the request carried

    @property
    def all(self) -> tuple[str, ...]:
        """Each distinct name, the target first."""
        return tuple(dict.fromkeys(n for n in (self.target, *self.host_headers, self.sni) if n))

    @property
    def served(self) -> tuple[str, ...]:
        """The names whose site the origin may serve: the target, and in a tunnel the Host and SNI too.

        An absolute-form request gets the target's Host (`fix_host`), so only the target is served.
        """
        if not self.tunnelled:
            return (self.target,)
        return self.all


@functools.lru_cache(maxsize=65536)
def _host_of(authority: str) -> str | None:
    if not authority:
        return None
    if authority.isascii() and "@" not in authority and "[" not in authority and authority.count(":") <= 1:
        return canonical_host(authority.partition(":")[0]) or None  # the usual host[:port], no parsing
    try:
        host = urlsplit(f"//{authority}").hostname
    except ValueError:
        return authority.strip().lower() or None
    return canonical_host(host) if host else None


def request_names(flow: http.HTTPFlow, *, tunnelled: bool) -> RequestNames:
    """The names of `flow`'s request (target, Host fields, :authority, SNI).

    `tunnelled`: the request came through a CONNECT on its client connection
    (mitmproxy has already turned absolute-form targets into origin-form by the
    `request` hook, so the request line cannot tell).
    """
    req = flow.request
    fields = values(req.headers.fields, b"host")
    hosts = [h for h in map(_host_of, fields) if h]
    # HTTP/2's :authority, and an HTTP/1 absolute-form target that mitmproxy keeps inside a
    # tunnel (it would send it upstream in absolute form, where origins prefer it to Host).
    authority = _host_of(req.authority)
    if authority:
        hosts.insert(0, authority)
    sni = flow.client_conn.sni
    return RequestNames(
        target=canonical_host(req.host),
        host_headers=tuple(hosts) if len(hosts) < 2 else tuple(dict.fromkeys(hosts)),
        sni=canonical_host(sni) if sni else None,
        tunnelled=tunnelled,
        host_fields=len(fields),
    )


# Space, controls, DEL and the fragment mark: never part of a request target (RFC 9112 §3.2).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f#]")
# What no field name or value may hold (RFC 9113 §8.2.1; RFC 9110 §5.5).
_BAD_FIELD = re.compile(rb"[\r\n\x00]")


def target_form_problem(flow: http.HTTPFlow) -> str | None:
    """Why `flow`'s request cannot be judged as sent; None if its target and fields are sound.

    RFC 9112 §3.2 and RFC 9113 §8.3.1: a path starts with "/" (or is "*" for
    OPTIONS) and holds no space, control or fragment; RFC 9113 §8.2.1: no field
    holds CR, LF or NUL. mitmproxy relays an HTTP/2 `:path` and fields verbatim
    into an HTTP/1 request: an absolute URL there is read as another host,
    "private/x" as "/private/x", CR LF as a second request, and a `#` we cut
    off before matching is kept by some origins (`/robots.txt#/../private`).
    """
    req = flow.request
    path = req.path
    if not (path.startswith("/") or (path == "*" and req.method == "OPTIONS")):
        return f"request target {path[:200]!r} is not origin-form (it must start with '/')"
    bad = _BAD_TARGET.search(path)
    if bad is not None:
        return f"request target {path[:200]!r} holds {bad.group()!r}, which no request target may hold"
    for name, value in req.headers.fields:
        if _BAD_FIELD.search(name) or _BAD_FIELD.search(value):
            return f"request field {name[:100]!r} holds CR, LF or NUL"
    return None


def fix_host(flow: http.HTTPFlow, names: RequestNames) -> bool:
    """RFC 9112 §3.2.2: an absolute-form request's Host is replaced by its target's.

    Returns True if the Host header was rewritten.
    """
    if names.tunnelled or not names.host_headers or names.host_headers == (names.target,):
        return False
    flow.request.host_header = _hostport(flow)
    return True


def _hostport(flow: http.HTTPFlow) -> str:
    req = flow.request
    default = {"http": 80, "https": 443}.get(req.scheme)
    host = req.host if ":" not in req.host else f"[{req.host}]"
    return host if req.port == default else f"{host}:{req.port}"


def own_endpoint(address: str, port: int, own_ports: Iterable[int]) -> bool:
    """True if (address, port) is one of this proxy's own listening or metrics endpoints."""
    if port not in set(own_ports):
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    # A non-public address with our port: loopback, or one of this machine's
    # own addresses (0.0.0.0 listens there too). Public addresses of this
    # machine are left to the network: they would need the open proxy we refuse.
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def refusal_for(
    host: str, port: int, addresses: Sequence[str], *, allow_private: bool, own_ports: Sequence[int]
) -> tuple[str, str] | None:
    """Why the crawler may not reach `host`:`port`, which resolves to `addresses`; None if it may."""
    for address in addresses:
        if own_endpoint(address, port, own_ports):
            return "proxy-self", f"{host}:{port} is this proxy's own endpoint ({address})"
    if not allow_private:
        refused = first_refused(addresses)
        if refused is not None:
            return (
                "private-address",
                f"{host} resolves to {refused[0]}, a {refused[1]} address; the policy's "
                "private_addresses is block",
            )
    return None


async def address_refusal(
    host: str, port: int, resolver: Resolver, *, allow_private: bool, own_ports: Sequence[int]
) -> tuple[str, str] | None:
    """Why the crawler may not reach `host`:`port`, as (reason code, sentence); None if it may.

    Raises OSError when `host` does not resolve.
    """
    addresses = await resolver.resolve(host)
    return refusal_for(host, port, addresses, allow_private=allow_private, own_ports=own_ports)
