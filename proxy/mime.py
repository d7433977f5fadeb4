"""The parts of a MIME body (MHTML, multipart/*, message/rfc822) with their transfer coding undone.

A page inside `multipart/related` or `message/rfc822` may be sent base64 or
quoted-printable encoded (RFC 2045 §6): its tags are not in the body's bytes,
but every MIME reader (Python's `email`, a browser opening an .mht) decodes
them. The body readers read these decoded parts as well as the body.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Sequence

MAX_PARTS = 64
_ENCODED = ("base64", "quoted-printable")


def is_mime(body: bytes, types: Sequence[str]) -> bool:
    """A body its headers call multipart/* or message/*, or one that opens with MIME headers."""
    if any(t.strip().lower().startswith(("multipart/", "message/")) for t in types):
        return True
    return b"mime-version:" in body[:1024].lower()


def encoded_parts(body: bytes, types: Sequence[str]) -> list[bytes]:
    """The decoded payloads of the base64 or quoted-printable parts of a MIME body (at most
    MAX_PARTS, none larger than the body); [] for a body that is not MIME."""
    if not is_mime(body, types):
        return []
    content_type = next((t for t in types if t.strip().lower().startswith(("multipart/", "message/"))), "")
    # A body without headers of its own gets the response's Content-Type as its first line.
    head = (
        b"" if b"mime-version:" in body[:1024].lower() else f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    except Exception:  # a reader that cannot parse it sees no parts either
        return []
    out: list[bytes] = []
    for n, part in enumerate(message.walk()):
        if n >= MAX_PARTS * 4 or len(out) >= MAX_PARTS:
            break
        if (
            part.is_multipart()
            or str(part.get("content-transfer-encoding", "")).strip().lower() not in _ENCODED
        ):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            out.append(payload[: len(body)])
    return out
