"""What the proxy answers in place of the origin: a 451 block, a 503 when it cannot audit.

Two ways to replace a response:

* `answer(flow, ...)`: set a whole new response. Safe in the `request` hook
  (nothing was sent upstream) and in the `response` hook (the body was
  buffered, nothing was sent to the crawler).
* `withhold_in_place(flow, ...)`: in `responseheaders`, where mitmproxy would
  still copy the origin's body into whatever response object the flow holds,
  the response is rewritten in place (status, every header) and switched to
  streaming through a function that drops every origin byte and emits our
  body at the end. Not one byte of the origin's body reaches the crawler, and
  the body is never buffered.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from pathlib import PurePath

from mitmproxy import http

from proxy.evidence import Decision

REASON_HEADER = "X-Optout-Reason"
ID_HEADER = "X-Optout-Id"
BLOCK_STATUS = 451  # RFC 7725: Unavailable For Legal Reasons
AUDIT_DOWN_STATUS = 503
_REASONS = {BLOCK_STATUS: "Unavailable For Legal Reasons", AUDIT_DOWN_STATUS: "Service Unavailable"}


def make_response(
    status: int, body: str, reason_code: str, record_id: str, *, head: bool = False
) -> http.Response:
    """A response the proxy answers itself, naming why and which audit record says so.

    `head`: the answer to a HEAD request, which carries no body (RFC 9110 §9.3.2);
    a body there would be read by a keep-alive client as the next response.
    """
    response = http.Response.make(
        status,
        b"" if head else body,
        {"Content-Type": "text/plain; charset=utf-8", REASON_HEADER: reason_code, ID_HEADER: record_id},
    )
    response.reason = _REASONS.get(status, "")
    return response


def block_body(
    decision: Decision, record_id: str, *, withheld: bool = False, status: int = BLOCK_STATUS
) -> str:
    """The short text a blocked crawler gets: signal, deciding rule or entry, document."""
    what = "withheld after the origin answered" if withheld else "blocked"
    lines = [
        f"{status} {HTTPStatus(status).phrase}: {what} by optout-proxy",
        f"signal: {decision.signal}",
        f"reason: {decision.reason}",
    ]
    f = decision.deciding
    if f is not None:
        rule = f"{f.detail} (line {f.line})" if f.line is not None and f.entry is None else f.detail
        lines.append(f"rule: {rule}")
        if f.document is not None:
            lines.append(f"document: {f.document.url}")
        if f.entry is not None:
            # The registry's name and line, not its path on this machine (the audit record has that).
            lines.append(f"entry: {PurePath(str(f.entry['file'])).name}:{f.entry['line']}")
            if f.entry.get("source"):
                lines.append(f"source: {f.entry['source']}")
    lines.append(f"record: {record_id}")
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Withholding:
    """A response being withheld in place: what to answer, and whether streaming has sent it."""

    status: int
    body: str
    reason_code: str
    record_id: str
    ended: bool = False


def answer(flow: http.HTTPFlow, status: int, body: str, reason_code: str, record_id: str) -> None:
    """Replace the flow's response with one of ours (request or response hook only)."""
    flow.response = make_response(status, body, reason_code, record_id, head=flow.request.method == "HEAD")


def withhold_in_place(
    flow: http.HTTPFlow, status: int, body: str, reason_code: str, record_id: str
) -> Withholding:
    """In `responseheaders`: turn the origin's response into ours before anything is sent.

    Returns the withholding, which `finish_withheld` completes in the `response` hook.
    """
    response = flow.response
    assert response is not None
    ours = make_response(status, body, reason_code, record_id, head=flow.request.method == "HEAD")
    payload = ours.content or b""
    response.status_code = ours.status_code
    response.reason = ours.reason
    response.headers = ours.headers.copy()
    response.headers["content-length"] = str(len(payload))
    withholding = Withholding(status, body, reason_code, record_id)

    def drain(chunk: bytes) -> bytes:
        # mitmproxy calls this with each origin chunk and once with b"" at the end.
        if chunk == b"" and not withholding.ended:
            withholding.ended = True
            return payload
        return b""

    response.stream = drain
    return withholding


def finish_withheld(flow: http.HTTPFlow, withholding: Withholding) -> None:
    """In `response`: complete a withholding that streaming did not carry out.

    If the origin's response had no body at all, mitmproxy skipped streaming and
    copied the (empty) body into the response; set our whole answer instead.
    """
    if flow.response is None or withholding.ended:
        return  # streamed: the crawler got our headers and our body already
    answer(flow, withholding.status, withholding.body, withholding.reason_code, withholding.record_id)
