"""Shared fixtures: real origin servers, TLS material, and real mitmdump processes."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.proxyproc import ProxyProcess
from tests.sites import Site


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA that signed the HTTPS origins' certificates, as a PEM file."""
    path = tmp_path_factory.mktemp("ca") / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def make_site(server_tls: ssl.SSLContext) -> Iterator[Callable[..., Site]]:
    """Start origin servers: make_site(routes, tls=False)."""
    sites: list[Site] = []

    def factory(routes: dict[str, Any] | None = None, *, tls: bool = False) -> Site:
        site = Site(routes, tls=server_tls if tls else None)
        sites.append(site)
        return site

    yield factory
    for site in sites:
        site.close()


@pytest.fixture
def make_proxy(tmp_path: Path, ca_pem: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start mitmdump with our addon: make_proxy(policy_path, **options)."""
    procs: list[ProxyProcess] = []

    def factory(policy: Path, addon: Path | None = None, **options: Any) -> ProxyProcess:
        confdir = tmp_path / f"mitm-conf-{len(procs)}"
        confdir.mkdir()
        audit = Path(options.pop("optout_audit", tmp_path / f"audit-{len(procs)}.jsonl"))
        options.setdefault("ssl_verify_upstream_trusted_ca", str(ca_pem))
        options = {k: v for k, v in options.items() if v is not None}  # None: leave mitmproxy's default
        extra: dict[str, Any] = {"addon": addon} if addon is not None else {}
        if "fsize_limit" in options:
            extra["fsize_limit"] = options.pop("fsize_limit")
        proc = ProxyProcess(policy, confdir=confdir, audit=audit, options=options, **extra)
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop()
