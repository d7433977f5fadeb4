"""The parts of a MIME body (MHTML, multipart/*, message/rfc822) with their transfer coding undone.

A page inside `multipart/related` or `message/rfc822` may be sent base64 or
quoted-printable encoded (RFC 2045 §6): its tags are not in the body's bytes,
but every MIME reader (Python's `email`, a browser opening an .mht) decodes
them. The body readers read these decoded parts as well as the body.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Sequence

from proxy.signals import htmlhead

MAX_PARTS = 64
MAX_BOUNDARIES = 32  # Python's parser tests each line against each open boundary: lines x depth
_ENCODED = ("base64", "quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue")
_BOUNDARY = re.compile(rb"boundary\s*=", re.IGNORECASE)


def is_mime(body: bytes, types: Sequence[str]) -> bool:
    """A body its headers call multipart/* or message/*, or one that opens with MIME headers."""
    if any(t.strip().lower().startswith(("multipart/", "message/")) for t in types):
        return True
    return b"mime-version:" in body[:1024].lower()


def encoded_parts(body: bytes, types: Sequence[str]) -> tuple[list[bytes], bool]:
    """(the decoded payloads of the base64, quoted-printable or uuencoded parts of a MIME body,
    whether every part was looked at); ([], True) for a body that is not MIME.

    At most MAX_PARTS parts and MAX_BOUNDARIES nested boundaries are read: past them the body is
    not read in full, and the caller withholds it (a decoy part must not push the page out).
    """
    if not is_mime(body, types):
        return [], True
    if len(_BOUNDARY.findall(body, 0, len(body))) > MAX_BOUNDARIES:
        return [], False
    declared = next((t for t in types if t.strip().lower().startswith(("multipart/", "message/"))), "")
    # A body without headers of its own gets the response's Content-Type as its first line.
    own = b"mime-version:" in body[:1024].lower()
    head = b"" if own else f"Content-Type: {declared}\r\n\r\n".encode()
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    except Exception:  # a reader that cannot parse it sees no parts either
        return [], True
    out: list[bytes] = []
    for n, part in enumerate(message.walk()):
        if n >= MAX_PARTS * 4:
            return out, False
        if part.is_multipart():
            continue
        coding = str(part.get("content-transfer-encoding", "")).strip().lower()
        # A part in a charset whose bytes hide tags (UTF-16 sent 8bit) is read decoded too.
        charset = part.get_content_charset()
        codec = htmlhead.codec_of(charset) if charset else None
        wide = codec is not None and not htmlhead.ascii_safe(codec)
        if coding not in _ENCODED and not wide:
            continue
        if len(out) >= MAX_PARTS:
            return out, False
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            payload = payload[: len(body)]
            out.append(
                payload.decode(codec, "replace").encode("utf-8", "replace") if wide and codec else payload
            )
    return out, True
