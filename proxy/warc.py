"""`audit export --format warc`: the evidence behind audit records as WARC 1.1 (ISO 28500).

The archivists' format, written with warcio, so pywb and warcio's own `check`
and `index` read it:

* one `warcinfo` record: what wrote the file, from which log, with which filter;
* one `response` record per stored policy document (robots.txt, ai.txt,
  tdmrep.json, a licence ...), each once however many decisions cite it: the
  status line and headers as fetched, the body from the evidence store. Its
  `WARC-Payload-Digest` is the store's SHA-256 (base32, as WARC writes
  digests), and `WARC-Optout-SHA256` repeats it in hex, so the file can be
  matched with the store. The store keeps bodies decoded, so the framing
  headers (Content-Encoding, Transfer-Encoding, Content-Length) are rewritten
  to match the bytes; the originals are kept as `X-Optout-Original-*`;
* one `resource` record per stored set of response headers (the evidence of
  an in-band signal such as `X-Robots-Tag: noai`);
* one `metadata` record per audit record: the record itself (JSON), with
  `WARC-Refers-To` naming the deciding document's record and
  `WARC-Concurrent-To` every other document it cites.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from proxy import __version__
from proxy.logview import deciding
from proxy.store import EvidenceStore

FRAMING = ("content-encoding", "transfer-encoding", "content-length")
Records = Callable[[], Iterator[dict[str, Any]]]  # a fresh pass over the selected records


@dataclass(frozen=True, slots=True)
class Cited:
    """One stored document an audit record cites."""

    sha256: str
    url: str
    status: int | None
    fetched_at: str | None
    headers_only: bool  # the response headers of an in-band decision, not a fetched document


def cited(r: dict[str, Any]) -> list[Cited]:
    """The stored documents a record cites: its evidence's documents, then its response headers."""
    out: list[Cited] = []
    for f in r.get("evidence") or []:
        doc = (f or {}).get("document") or {}
        if isinstance(doc.get("sha256"), str) and isinstance(doc.get("url"), str):
            out.append(Cited(doc["sha256"], doc["url"], doc.get("status"), doc.get("fetched_at"), False))
    if isinstance(r.get("response_headers_sha256"), str):
        out.append(
            Cited(r["response_headers_sha256"], str(r.get("url", "")), r.get("status"), r.get("ts"), True)
        )
    return out


def _digest(sha256_hex: str) -> str:
    return "sha256:" + base64.b32encode(bytes.fromhex(sha256_hex)).decode()


def _record_id() -> str:
    return f"<urn:uuid:{uuid.uuid4()}>"


def _fetches(store: EvidenceStore, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The store's fetch log entries for the (sha256, url) pairs wanted (the first of each)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    path = store.root / "fetches.jsonl"
    if not path.exists():
        return found
    with open(path, "rb") as f:
        for line in f:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn line; the document is then written without its headers
            key = (str(entry.get("sha256")), str(entry.get("url")))
            if key in wanted and key not in found:
                found[key] = entry
    return found


def _http_headers(status: int | None, headers: list[list[str]], size: int) -> StatusAndHeaders:
    kept: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() in FRAMING:
            kept.append((f"X-Optout-Original-{name}", value))
        else:
            kept.append((name, value))
    kept.append(("Content-Length", str(size)))
    code = status if status is not None else 200
    return StatusAndHeaders(f"{code} {_REASONS.get(code, 'Status')}", kept, protocol="HTTP/1.1")


_REASONS = {200: "OK", 203: "Non-Authoritative Information", 206: "Partial Content", 301: "Moved Permanently",
            302: "Found", 304: "Not Modified", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            410: "Gone", 451: "Unavailable For Legal Reasons", 500: "Internal Server Error"}  # fmt: skip


@dataclass
class WarcSummary:
    documents: int = 0  # response and resource records written
    decisions: int = 0  # metadata records written
    missing: int = 0  # documents cited but not in the store


def write_warc(
    out: BinaryIO, records: Records, store: EvidenceStore, *, log: Path, filtered: str = "", gzip: bool = True
) -> WarcSummary:
    """Write the WARC file for the records `records()` yields (called twice: documents first, then
    one metadata record per decision, so a log of millions is never held in memory)."""
    writer = WARCWriter(out, gzip=gzip, warc_version="1.1")
    info = {
        "software": f"optout-proxy {__version__}",
        "format": "WARC File Format 1.1",
        "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
        "description": "Evidence behind optout-proxy audit records: the policy documents as fetched, and "
        "one metadata record per decision",
        "optout-log": str(log),
        "optout-filter": filtered or "none",
    }
    writer.write_record(writer.create_warcinfo_record(out.name if hasattr(out, "name") else "", info))

    wanted: set[tuple[str, str]] = set()
    for r in records():
        wanted.update((c.sha256, c.url) for c in cited(r) if not c.headers_only)
    fetched = _fetches(store, wanted)

    summary = WarcSummary()
    written: dict[tuple[str, str], str] = {}  # (sha256, url) -> WARC-Record-ID
    for r in records():
        refs: list[str] = []
        chosen = deciding(r) or {}
        doc = chosen.get("document") or {}
        deciding_key = (doc.get("sha256"), doc.get("url"))
        if not doc.get("sha256") and r.get("response_headers_sha256"):
            deciding_key = (r["response_headers_sha256"], str(r.get("url", "")))
        for c in cited(r):
            key = (c.sha256, c.url)
            if key not in written:
                record_id = _write_document(writer, store, c, fetched.get(key))
                if record_id is None:
                    summary.missing += 1
                    written[key] = ""
                    continue
                written[key] = record_id
                summary.documents += 1
            if written[key]:
                refs.append(written[key])
        _write_decision(writer, r, refs, written.get(deciding_key) or None)  # type: ignore[arg-type]
        summary.decisions += 1
    return summary


def _write_document(
    writer: WARCWriter, store: EvidenceStore, c: Cited, fetch: dict[str, Any] | None
) -> str | None:
    data = store.get(c.sha256)
    if data is None:
        return None
    record_id = _record_id()
    warc_headers = {
        "WARC-Record-ID": record_id,
        "WARC-Payload-Digest": _digest(c.sha256),
        "WARC-Optout-SHA256": c.sha256,
    }
    when = (fetch or {}).get("fetched_at") or c.fetched_at
    if when:
        warc_headers["WARC-Date"] = str(when)
    if c.headers_only:
        warc_headers["Content-Type"] = "text/plain; charset=utf-8"
        warc_headers["WARC-Optout-Kind"] = "response-headers"
        record = writer.create_warc_record(
            c.url, "resource", payload=io.BytesIO(data), length=len(data), warc_headers_dict=warc_headers
        )
    else:
        warc_headers["WARC-Optout-Kind"] = str((fetch or {}).get("kind") or "document")
        status = (fetch or {}).get("status", c.status)
        headers = (fetch or {}).get("headers") or []
        http = _http_headers(status if isinstance(status, int) else None, headers, len(data))
        record = writer.create_warc_record(
            c.url, "response", payload=io.BytesIO(data), length=len(data), warc_headers_dict=warc_headers,
            http_headers=http,
        )  # fmt: skip
    writer.write_record(record)
    return record_id


def _write_decision(writer: WARCWriter, r: dict[str, Any], refs: list[str], deciding_ref: str | None) -> None:
    payload = orjson.dumps(r, option=orjson.OPT_INDENT_2)
    warc_headers = {
        "WARC-Record-ID": _record_id(),
        "Content-Type": "application/json",
        "WARC-Optout-Record-Id": str(r.get("id", "")),
        "WARC-Optout-Decision": f"{r.get('decision')} {r.get('signal') or '-'}",
    }
    if isinstance(r.get("ts"), str):
        warc_headers["WARC-Date"] = r["ts"]
    refers = deciding_ref or (refs[0] if refs else None)
    if refers:
        warc_headers["WARC-Refers-To"] = refers
    record = writer.create_warc_record(
        str(r.get("url") or f"urn:optout:{r.get('id')}"), "metadata", payload=io.BytesIO(payload),
        length=len(payload), warc_headers_dict=warc_headers,
    )  # fmt: skip
    for ref in refs:
        if ref != refers:  # WARC-Concurrent-To repeats; a dict cannot hold it twice
            record.rec_headers.add_header("WARC-Concurrent-To", ref)
    writer.write_record(record)
