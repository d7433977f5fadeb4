"""assess(): gather the findings for one request and decide.

Shared by the addon and `optout-proxy check`, so that both reach the same
decision from the same evidence. The only I/O is through `get_documents`,
which the addon backs with its cache and `check` with a direct fetch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from proxy.decide import decide
from proxy.documents import OriginDocuments
from proxy.evidence import Decision, Finding
from proxy.origin import Origin
from proxy.policy import Policy

GetDocuments = Callable[[Origin], Awaitable[OriginDocuments]]


async def assess(
    policy: Policy,
    origin: Origin,
    path: str,
    hosts: Iterable[str],
    get_documents: GetDocuments,
    *,
    mode: str | None = None,
) -> Decision:
    """The decision for a request to `path` (path plus ?query) on `origin`.

    `hosts` are every name the request goes by (target and Host header), all
    checked against the registry. A registry block that will be enforced
    skips the origin's documents: a rights holder who wrote to us does not
    get even its robots.txt fetched.
    """
    monitor_all = (mode or policy.mode) == "monitor"
    findings: list[Finding] = []
    registry_mode = policy.signal_mode("registry")
    if registry_mode != "off":
        findings.extend(policy.registry.findings_for(hosts, path))
        if findings and registry_mode == "enforce" and not monitor_all:
            return decide(findings, policy, mode=mode)
    docs = await get_documents(origin)
    findings.extend(docs.prefetch_findings(origin.url(path), path, policy))
    return decide(findings, policy, mode=mode)
