"""What happened to one request, defined once for the log readers, the report and the metrics.

Each request has exactly one outcome:

* `blocked`: refused before anything was fetched from the origin;
* `withheld`: fetched, then withheld from the crawler by what the response said;
* `delivered`: it reached the crawler;
* `would-block`: monitor mode forwarded it, though a signal would have blocked it.

A request's records settle it in order: its request-phase record (or CONNECT
record) first, then any response-phase record that withholds (or, in monitor
mode, would). `settle` is that rule as a pure function.
"""

from __future__ import annotations

BLOCKED = "blocked"
WITHHELD = "withheld"
DELIVERED = "delivered"
WOULD_BLOCK = "would-block"
OUTCOMES = (BLOCKED, WITHHELD, DELIVERED, WOULD_BLOCK)
REFUSED = (BLOCKED, WITHHELD, WOULD_BLOCK)
RESPONSE_PHASE = "response"


def settle(earlier: str | None, phase: object, decision: object, enforced: object) -> str | None:
    """The request's outcome after one more of its records, given the outcome before it (None: no
    record yet). A record that decides nothing (a repair, a response allowed with findings) leaves
    the outcome as it was; a response that withholds turns `delivered` into `withheld`; monitor
    mode's would-block stays would-block."""
    if decision not in ("allow", "block"):
        return earlier
    refused = decision == "block"
    kept = enforced is not False
    if phase == RESPONSE_PHASE:
        if not refused or earlier == WOULD_BLOCK:
            return earlier
        return WITHHELD if kept else WOULD_BLOCK
    if refused:
        return BLOCKED if kept else WOULD_BLOCK
    return DELIVERED
