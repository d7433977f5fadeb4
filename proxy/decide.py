"""decide(): the one place that weighs findings into a verdict.

Pure: no I/O, no clock, no logging. The addon, `optout-proxy check` and the
tests all call it. The rule (signals.md §1): any applicable reservation
blocks; an explicit grant in one source never cancels another source's
reservation; a signal in monitor mode (or a policy in monitor mode) decides
"block" but does not enforce it.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.evidence import Decision, Finding, Says, Verdict
from proxy.policy import Policy

# RFC 9309 §2.3.1.3 lets a crawler read 401/403 as "no robots.txt"; a policy
# may choose to read them as "go away" instead (on_robots_forbidden: block).
FORBIDDEN_STATUSES = frozenset({401, 403})


def _blocking_signal(finding: Finding, policy: Policy) -> str | None:
    """The reason code if `finding` calls for a block under `policy`, else None."""
    if finding.says is Says.DISALLOW:
        return finding.signal
    if finding.says is Says.UNREACHABLE and policy.on_unreachable == "block":
        return "unreachable"
    if (
        finding.says is Says.UNAVAILABLE
        and policy.on_robots_forbidden == "block"
        and finding.document is not None
        and finding.document.status in FORBIDDEN_STATUSES
    ):
        return finding.signal
    return None


def _reason(finding: Finding, signal: str) -> str:
    """One sentence a person can read in the audit log."""
    doc = finding.document
    where = doc.url if doc is not None else ""
    if signal == "registry" and finding.entry is not None:
        e = finding.entry
        return f"{e['holder']} opted out in the rights-holder registry: {e['reason']}."
    if signal == "unreachable":
        why = doc.error if doc is not None and doc.error else "no usable answer"
        return f"{where} is unreachable ({why}); RFC 9309 §2.3.1.4 requires assuming complete disallow."
    if finding.says is Says.UNAVAILABLE and doc is not None:
        return f"{where} answered {doc.status}; the policy treats that as disallow."
    who = f"for {finding.agent}" if finding.agent else ""
    at = f" (line {finding.line})" if finding.line is not None else ""
    return f"{where} says '{finding.detail}'{at} {who}".replace("  ", " ").strip() + "."


def decide(findings: Sequence[Finding], policy: Policy, *, mode: str | None = None) -> Decision:
    """Return the decision for one request; every BLOCK names the finding that caused it.

    `mode` overrides the policy's mode (enforce | monitor) when given. Findings
    of signals set to `off` are ignored. The first enforced blocking finding,
    in the order given, decides; without one, the first monitored one does.
    """
    monitor_all = (mode or policy.mode) == "monitor"
    kept = tuple(f for f in findings if policy.signal_mode(f.signal) != "off")
    enforced: tuple[Finding, str] | None = None
    monitored: tuple[Finding, str] | None = None
    for finding in kept:
        signal = _blocking_signal(finding, policy)
        if signal is None:
            continue
        if policy.signal_mode(finding.signal) == "enforce" and not monitor_all:
            enforced = (finding, signal)
            break
        if monitored is None:
            monitored = (finding, signal)
    chosen = enforced or monitored
    if chosen is None:
        return Decision(
            Verdict.ALLOW,
            enforced=not monitor_all,
            signal=None,
            reason="No opt-out signal applies to this URL.",
            deciding=None,
            findings=kept,
            policy_sha256=policy.digest,
        )
    finding, signal = chosen
    reason = _reason(finding, signal)
    return Decision(
        Verdict.BLOCK,
        enforced=enforced is not None,
        signal=signal,
        reason=reason if enforced is not None else f"Would block (monitor mode): {reason}",
        deciding=finding,
        findings=kept,
        policy_sha256=policy.digest,
    )
