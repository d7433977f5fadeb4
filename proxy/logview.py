"""Reading the audit log at scale: filters, summaries, exports, one record's evidence.

Everything streams: a log of millions of records is read once, line by line,
with orjson, and never held in memory. Progress goes to a callback (the CLI
prints it on a terminal).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import heapq
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from proxy.audit import lines, log_files, logs_at, regular_file
from proxy.counting import (
    BLOCKED,
    DELIVERED,
    OUTCOMES,
    REFUSED,
    RESPONSE_PHASE,
    WITHHELD,
    WOULD_BLOCK,
    settle,
)
from proxy.errors import AuditError
from proxy.origin import canonical_host
from proxy.policy import SIGNALS

Progress = Callable[[int, int], None]  # (bytes read, bytes in all)
BY = ("signal", "host", "holder", "rule", "agent", "user-agent", "outcome", "day")
CSV_COLUMNS = (
    "ts", "id", "seq", "phase", "method", "url", "host", "agent", "decision", "enforced", "signal",
    "status", "reason", "deciding_detail", "deciding_document", "holder", "policy_sha256",
)  # fmt: skip


# Every code a record's `signal` can hold: the policy's signals, and the codes of refusals
# that no document decided (README: "X-Optout-Reason").
RECORD_SIGNALS = (
    *SIGNALS, "unreachable", "body-over-cap", "undecodable", "internal-error", "audit-unavailable",
    "fetch-capacity", "private-address", "proxy-self", "unresolvable", "ambiguous-host", "raw-protocol",
    "crawl-delay", "partial-content", "bad-response",
)  # fmt: skip
_WHEN = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([zZ]|[+-]\d{2}:?\d{2})?)?")
WHEN_EXAMPLES = "2026-12-02, 2026-12-02 16:01, 2026-12-02T16:01:30Z or 2026-12-02T17:00:00+02:00"


def parse_when(text: str) -> str:
    """A time a person typed, as the UTC timestamp form records use (`2026-12-02T15:00:00.000Z`).

    Accepts a date, a date and time (with `T` or a space; seconds optional),
    and an offset or `Z` (none means UTC). Raises ValueError, with examples,
    for anything else: a filter that silently matches nothing is worse than an error.
    """
    m = _WHEN.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a time: {text!r} (use one of: {WHEN_EXAMPLES})")
    date, clock, offset = m.groups()
    try:
        when = dt.datetime.fromisoformat(f"{date}T{clock or '00:00'}{_offset(offset)}").astimezone(dt.UTC)
    except (ValueError, OverflowError) as e:  # OverflowError: year 1 or 9999 moved out of range by UTC
        raise ValueError(f"not a time: {text!r} ({e}; use one of: {WHEN_EXAMPLES})") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _offset(offset: str | None) -> str:
    if not offset or offset in ("z", "Z"):
        return "+00:00"
    return offset if ":" in offset else f"{offset[:3]}:{offset[3:]}"


def check_agent(name: str, seen: set[str]) -> None:
    """ValueError if no record read was for agent `name` (a typo would silently match nothing)."""
    if name in seen:
        return
    known = sorted(a for a in seen if a != "None")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(
        f"no record is for agent {name!r} (agents in the log: {', '.join(known) or 'none'}){hint}"
    )


def check_signal(name: str) -> str:
    """`name` if records can carry it, else ValueError naming the closest known ones."""
    if name in RECORD_SIGNALS:
        return name
    close = difflib.get_close_matches(name, RECORD_SIGNALS, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(RECORD_SIGNALS)}"
    raise ValueError(f"no signal called {name!r}{hint}")


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records to keep; empty fields keep everything."""

    host: str | None = None  # the host or any of its subdomains
    signal: str | None = None
    decision: str | None = None  # allow | block | would-block
    since: str | None = None  # a UTC timestamp as records write it (parse_when)
    until: str | None = None  # exclusive
    agent: str | None = None

    def describe(self) -> str:
        """The filter as `name=value` pairs (empty when it keeps everything), for banners and messages."""
        return ", ".join(f"{k}={v}" for k, v in (
            ("host", self.host), ("signal", self.signal), ("decision", self.decision),
            ("since", self.since), ("until", self.until), ("agent", self.agent),
        ) if v)  # fmt: skip

    def keeps(self, r: dict[str, Any]) -> bool:
        if self.host and not _host_matches(str(r.get("host", "")), self.host):
            return False
        if self.signal and r.get("signal") != self.signal:
            return False
        if self.decision and outcome(r) != self.decision:
            return False
        ts = str(r.get("ts", ""))
        if self.since and ts < self.since:
            return False
        if self.until and ts >= self.until:
            return False
        return not (self.agent and r.get("agent") != self.agent)


def _host_matches(host: str, wanted: str) -> bool:
    w = canonical_host(wanted)  # as the proxy records hosts: bücher.example is xn--bcher-kva.example
    return host == w or host.endswith("." + w)


def outcome(r: dict[str, Any]) -> str:
    """allow | block | would-block (a block in monitor mode that was forwarded)."""
    if r.get("decision") == "block":
        return "block" if r.get("enforced", True) else "would-block"
    return "allow"


def deciding(r: dict[str, Any]) -> dict[str, Any] | None:
    """The evidence entry that decided the record, if any."""
    index = r.get("deciding")
    evidence = r.get("evidence") or []
    if isinstance(index, int) and 0 <= index < len(evidence):
        found = evidence[index]
        return found if isinstance(found, dict) else None
    return None


def key_of(r: dict[str, Any], by: str) -> str:
    """The value of dimension `by` for one record."""
    if by == "day":
        return str(r.get("ts", ""))[:10]
    if by == "outcome":
        return outcome(r)  # a record's own; Summary groups by the request's settled outcome instead
    if by in ("signal", "host", "agent"):
        return str(r.get(by) or "-")
    if by == "user-agent":
        return str(r.get("user_agent") or "-")
    d = deciding(r)
    if by == "holder":
        entry = (d or {}).get("entry") or {}
        return str(entry.get("holder") or "-")
    if by == "rule":
        if d is None:
            return "-"
        where = (d.get("document") or {}).get("url") or (d.get("entry") or {}).get("file") or ""
        line = f":{d['line']}" if d.get("line") is not None else ""
        return f"{d.get('signal')}: {d.get('detail')} [{where}{line}]"
    raise ValueError(f"cannot group by {by!r}")


Skip = Callable[[str], None]  # told "file:line: why" for each line the readers skip


def _strict(problem: str) -> None:
    raise AuditError(problem)


def parse_line(line: bytes, where: str | Callable[[], str]) -> dict[str, Any] | str:
    """One log line as a record, or why it is not one (a torn write, a foreign line).

    A record is a JSON object with a chain position (`seq`), an `id` and a `ts`;
    anything else in the file is reported, never counted. `where` names the
    line (`file:line`), or makes the name when one is needed.
    """
    try:
        r = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return f"{where if isinstance(where, str) else where()}: skipped: not a JSON record ({e})"
    if type(r) is not dict or type(r.get("seq")) is not int or "id" not in r or "ts" not in r:
        named = where if isinstance(where, str) else where()
        return f"{named}: skipped: not an audit record (no seq, id and ts)"
    return r


def records(
    path: Path,
    flt: Filter | None = None,
    progress: Progress | None = None,
    on_skip: Skip = _strict,
    agents: set[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of the log at `path` (rotated files first) that the filter keeps; for a folder,
    or a log with worker logs beside it (`run --workers`), every log's records merged by time.

    A line that is not a record goes to `on_skip` as `file:line: why`; the
    default raises AuditError. Reading commands report and go on; `verify`
    (proxy.audit) fails on such a line. `agents`, if given, gathers the
    agent of every record read, kept or not (to check an --agent filter).
    """
    logs = [(log, log_files(log)) for log in logs_at(path)]
    if not logs:
        raise AuditError(f"no audit log at {path}")
    for _, files in logs:
        for file in files:
            regular_file(file)
    total = sum(f.stat().st_size for _, files in logs for f in files)
    read = [0, 0]  # bytes, lines: shared by the logs read side by side

    def one(files: list[Path]) -> Iterator[dict[str, Any]]:
        keeps = flt.keeps if flt is not None and flt.describe() else None
        seen = agents.add if agents is not None else None
        loads, bad = orjson.loads, orjson.JSONDecodeError
        # Opened together before any is read: a rotation meanwhile renames the live file, and an
        # open handle still reads it (listed and opened one by one, its records were skipped).
        handles = [(file, open(file, "rb")) for file in files]  # noqa: SIM115 (closed below)
        try:
            for file, f in handles:
                for number, line in enumerate(lines(f), start=1):
                    if progress:
                        read[0] += len(line)
                        read[1] += 1
                        if read[1] % 50_000 == 0:
                            progress(read[0], total)
                    # The checks of parse_line, inline: this loop runs once per record of the log.
                    try:
                        r = loads(line)
                    except bad:
                        if line.strip():
                            on_skip(str(parse_line(line, f"{file}:{number}")))
                        continue
                    if type(r) is not dict or type(r.get("seq")) is not int or "id" not in r or "ts" not in r:
                        on_skip(str(parse_line(line, f"{file}:{number}")))
                        continue
                    if seen is not None:
                        seen(str(r.get("agent")))
                    if keeps is None or keeps(r):
                        yield r
        finally:
            for _, f in handles:
                f.close()

    if len(logs) == 1:
        yield from one(logs[0][1])
    else:
        # Each worker's log is in time order; merged, the fleet's records are too.
        yield from heapq.merge(*(one(files) for _, files in logs), key=lambda r: str(r.get("ts", "")))
    if progress is not None:
        progress(total, total)


class Tail:
    """New records of every log at a path (proxy.audit.logs_at), merged by time; logs that appear
    later (a worker started since) are followed too."""

    def __init__(self, path: Path, on_skip: Skip = _strict) -> None:
        self.path = path
        self.on_skip = on_skip
        self._followers: dict[Path, Follower] = {}

    def poll(self) -> Iterator[dict[str, Any]]:
        for log in logs_at(self.path):
            if log not in self._followers:
                self._followers[log] = Follower(log, self.on_skip)
        streams = [f.poll() for f in self._followers.values()]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda r: str(r.get("ts", "")))


class Follower:
    """New records of a live log, each once and in chain order, across rotations.

    It remembers the file it read (by inode, which a rotation's rename keeps)
    and how far: after a rotation it finishes that file under its new name,
    reads any file rotated since, then the new live file. The chain's `seq`
    guards against printing a record twice whatever the files did.
    """

    def __init__(self, path: Path, on_skip: Skip = _strict) -> None:
        self.path = path
        self.on_skip = on_skip
        self._inode: int | None = None  # None: start with the oldest file
        self._offset = 0
        self._line = 0
        self._seq = 0
        self._chain: object = None  # the hash of the chain's first record, once read
        self._lost = 0  # polls in a row that did not find our file

    def poll(self) -> Iterator[dict[str, Any]]:
        """The records written since the last poll (every record in the log on the first), streamed:
        a log of millions is never held in memory. Read it to the end before the next poll."""
        for _ in range(5):
            handles: list[tuple[Path, BinaryIO, int]] = []
            try:
                files = log_files(self.path)
                for file in files:
                    regular_file(file)  # a FIFO would block the read for good
                    fh = open(file, "rb")  # noqa: SIM115 (closed below, all together)
                    handles.append((file, fh, os.fstat(fh.fileno()).st_ino))
                # A rotation between listing and opening would hide the files it made: the
                # listing must still hold, and the live file must be the one we opened.
                live = bool(files) and files[-1] == self.path
                if log_files(self.path) == files and (
                    not live or os.stat(self.path).st_ino == handles[-1][2]
                ):
                    yield from self._read(handles)
                    return
            except FileNotFoundError:
                pass  # renamed while we looked: look again
            finally:
                for _, opened, _ in handles:
                    opened.close()
        # Rotating faster than we can list: the next poll catches up.

    def _read(self, handles: list[tuple[Path, BinaryIO, int]]) -> Iterator[dict[str, Any]]:
        first, offset, line = 0, 0, 0
        if self._inode is not None:
            found = [i for i, (_, _, inode) in enumerate(handles) if inode == self._inode]
            if found:
                first, offset, line, self._lost = found[0], self._offset, self._line, 0
            else:
                self._lost += 1
                if self._lost < 3:  # a rename in flight; its file shows up on the next listing
                    return
                # Our file is gone (moved away): read everything, `seq` skips what was printed.
        last = len(handles) - 1
        for i in range(first, len(handles)):
            file, fh, inode = handles[i]
            if i > first:
                offset, line = 0, 0
            self._inode, self._offset, self._line = inode, offset, line
            fh.seek(offset)
            for raw in fh:
                if i == last and not raw.endswith(b"\n"):
                    break  # the live file's last line may be half-written: read it next time
                offset += len(raw)
                line += 1
                self._offset, self._line = offset, line  # where we are, before handing a record out
                if not raw.strip():
                    continue
                r = parse_line(raw, f"{file}:{line}")
                if isinstance(r, str):
                    self.on_skip(r)
                    continue
                if r["seq"] == 1 and r.get("hash") != self._chain:
                    # The first record of a chain we have not seen (`audit new-chain`): its
                    # numbers start again, and every one of them is new.
                    if self._chain is not None or self._seq:
                        self._seq = 0
                    self._chain = r.get("hash")
                if r["seq"] > self._seq:
                    self._seq = r["seq"]
                    yield r


@dataclass
class Summary:
    """Requests by outcome, in all and per value of one dimension; each request counted once.

    A request has a request-phase record (blocked, allowed or, in monitor mode,
    would-block); a response-phase record that withholds (or would) names it by
    `request_id` and moves it from delivered to withheld. A record that settles
    no request (a repair, a response allowed with findings) is counted in
    `other`.

    Pairing a response with its request needs the request's outcome at hand.
    Memory stays bounded: requests are remembered for PAIRING_WINDOW of log
    time (a response record follows its request within one flow's life). A
    withholding response whose request is not at hand (older than that, left
    out by the filter, or never recorded under `audit.log_allowed: false`) is
    counted by itself, and in `unpaired`, which the summary prints.
    """

    by: str
    also: tuple[str, ...] = ()  # more dimensions, counted the same way into `more`
    records: int = 0  # records read (that the filter kept)
    other: int = 0  # records that are not a request's outcome
    unpaired: int = 0  # withholding responses whose request record was not at hand
    outcomes: Counter[str] = field(default_factory=Counter)
    groups: dict[str, Counter[str]] = field(default_factory=dict)
    more: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None
    # requests a later response record can still change, in two generations of half the window
    # each: key -> index into _kinds of (outcome, its group per dimension)
    _open: dict[str, int] = field(default_factory=dict, repr=False)
    _older: dict[str, int] = field(default_factory=dict, repr=False)
    _since: str = ""  # when the current generation began (log time)
    _kinds: list[tuple[str, tuple[str, ...]]] = field(default_factory=list, repr=False)
    _kind_index: dict[str, dict[tuple[str, ...], int]] = field(default_factory=dict, repr=False)

    @property
    def requests(self) -> int:
        return sum(self.outcomes[o] for o in OUTCOMES)

    def add(self, r: dict[str, Any]) -> str | None:
        """Count one record; returns the outcome it settled, or None if it settled none."""
        self.records += 1
        get = r.get
        ts = get("ts")
        if type(ts) is str:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
            if ts >= self._since:
                self._turn(ts)
        if get("phase") == RESPONSE_PHASE:
            return self._response(r)
        # A request (or CONNECT) record: the common case, kept short (a log has millions).
        o = settle(None, None, get("decision"), get("enforced", True))  # the one definition
        if o is None:
            self.other += 1  # a repair, a new chain
            return None
        if self.also or self.by not in _PLAIN:
            groups = tuple(o if by == "outcome" else key_of(r, by) for by in (self.by, *self.also))
        else:
            groups = (str(get(self.by) or "-"),)
        self.outcomes[o] += 1
        counts = self.groups.get(groups[0])
        if counts is None:
            counts = self.groups[groups[0]] = Counter()
        counts[o] += 1
        if self.also:
            for by, group in zip(self.also, groups[1:], strict=True):
                self.more.setdefault(by, {}).setdefault(group, Counter())[o] += 1
        key = get("id")
        if o != BLOCKED and key is not None:
            self._open[key] = self._kind(o, groups)
        return o

    def _kind(self, o: str, groups: tuple[str, ...]) -> int:
        """A small number for (outcome, groups): what an open request remembers (interned)."""
        kinds = self._kind_index.get(o)
        if kinds is None:
            kinds = self._kind_index[o] = {}
        index = kinds.get(groups)
        if index is None:
            index = kinds[groups] = len(self._kinds)
            self._kinds.append((o, groups))
        return index

    def _response(self, r: dict[str, Any]) -> str | None:
        """A response-phase record: it settles its request again when it withholds (or would)."""
        key = r.get("request_id")
        earlier = None
        if key is not None:
            found = self._open.pop(key, None)
            if found is None:
                found = self._older.pop(key, None)
            earlier = self._kinds[found] if found is not None else None
        o = settle(
            earlier[0] if earlier else None, RESPONSE_PHASE, r.get("decision"), r.get("enforced", True)
        )
        if o is None or (earlier is not None and o == earlier[0]):
            self.other += 1  # a response that changed nothing
            return None
        if earlier is not None:
            self._count(earlier[0], earlier[1], -1)  # it was not delivered after all
        else:
            self.unpaired += 1
        self._count(o, tuple(o if by == "outcome" else key_of(r, by) for by in (self.by, *self.also)))
        return o

    def _turn(self, ts: str) -> None:
        """Start a new generation of open requests; the one before the last is forgotten (both,
        after a pause in the log longer than a generation)."""
        skipped = bool(self._since) and ts >= _later(self._since, PAIRING_WINDOW / 2)
        self._older, self._open = ({} if skipped else self._open), {}
        self._since = _later(ts, PAIRING_WINDOW / 2)

    def _count(self, o: str, groups: tuple[str, ...], n: int = 1) -> None:
        self.outcomes[o] += n
        counts = self.groups.get(groups[0])
        if counts is None:
            counts = self.groups[groups[0]] = Counter()
        counts[o] += n
        for by, group in zip(self.also, groups[1:], strict=True):
            self.more.setdefault(by, {}).setdefault(group, Counter())[o] += n


PAIRING_WINDOW = dt.timedelta(minutes=30)
_PLAIN = ("signal", "host", "agent")  # dimensions read straight off a record


def _later(ts: str, by: dt.timedelta) -> str:
    """The record timestamp `by` after `ts` (records write UTC as 2026-12-02T15:00:00.000Z)."""
    try:
        when = dt.datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return "~"  # not a timestamp: never turn again on this one
    return (when + by).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def summarize(recs: Iterator[dict[str, Any]], by: str) -> Summary:
    """One pass over the records: each request's outcome, in all and per `by`."""
    if by not in BY:
        raise ValueError(f"--by must be one of {', '.join(BY)}")
    s = Summary(by)
    for r in recs:
        s.add(r)
    return s


def outcome_line(s: Summary) -> str:
    """The one-line account of a summary's requests (the summary's and the report's first line)."""
    o = s.outcomes
    return (
        f"{s.requests} requests: {o[BLOCKED]} blocked before the fetch, {o[WITHHELD]} withheld after "
        f"the fetch, {o[DELIVERED]} delivered, {o[WOULD_BLOCK]} would have been blocked (monitor)"
    )


def format_summary(s: Summary, top: int = 25) -> str:
    """The summary as an aligned text table, groups with the most refusals first."""
    lines = [
        outcome_line(s),
        f"({s.records} records, {s.first_ts or '-'} .. {s.last_ts or '-'}; "
        f"{s.other} records settled no request)",
        *(
            [
                f"({s.unpaired} withholding response record(s) found no request record within "
                f"{PAIRING_WINDOW.seconds // 60} min of log time, under the filter, or at all "
                "(audit.log_allowed: false): each counts as withheld, and its request, if recorded "
                "earlier, also as delivered)"
            ]
            if s.unpaired
            else []
        ),
        "",
        f"{'blocked':>9} {'withheld':>9} {'would':>9} {'delivered':>9}  {s.by}",
    ]
    ordered = sorted(
        s.groups.items(),
        key=lambda kv: (-sum(kv[1][o] for o in REFUSED), -sum(kv[1].values()), kv[0]),
    )
    shown = [(k, c) for k, c in ordered if any(c[o] for o in OUTCOMES)]
    for key, c in shown[:top]:
        lines.append(f"{c[BLOCKED]:>9} {c[WITHHELD]:>9} {c[WOULD_BLOCK]:>9} {c[DELIVERED]:>9}  {key}")
    if len(shown) > top:
        lines.append(f"... {len(shown) - top} more (--top N shows more)")
    return "\n".join(lines)


def csv_row(r: dict[str, Any]) -> list[str]:
    d = deciding(r) or {}
    doc = (d.get("document") or {}).get("url") or ""
    holder = (d.get("entry") or {}).get("holder") or ""
    values = {**r, "deciding_detail": d.get("detail") or "", "deciding_document": doc, "holder": holder}
    return ["" if values.get(c) is None else str(values.get(c)) for c in CSV_COLUMNS]


def export(recs: Iterator[dict[str, Any]], fmt: str, out: TextIO) -> int:
    """Write the records as CSV (one row each, fixed columns) or JSON Lines; returns the count."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        buffer = io.StringIO()
        chunk = csv.writer(buffer)
        for r in recs:
            chunk.writerow(csv_row(r))
            count += 1
            if count % 10_000 == 0:
                out.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
        out.write(buffer.getvalue())
    elif fmt == "jsonl":
        for r in recs:
            out.write(orjson.dumps(r).decode() + "\n")
            count += 1
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return count


def find_record(path: Path, record_id: str) -> dict[str, Any] | None:
    """The record with this id (or id prefix of at least 8 characters)."""
    if len(record_id) < 8:
        raise ValueError("give at least 8 characters of the record id")
    needle = f'"id":"{record_id}'.encode()
    for file in (f for log in logs_at(path) for f in log_files(log)):
        with open(file, "rb") as f:
            for line in f:
                if needle in line and isinstance(r := parse_line(line, str(file)), dict):
                    return r
    return None


def one_line(r: dict[str, Any]) -> str:
    """A record as one human-readable line (for `audit tail`)."""
    o = outcome(r)
    mark = {"block": "BLOCK", "would-block": "WOULD", "allow": "allow"}[o]
    signal = r.get("signal") or "-"
    phase = "" if r.get("phase") == "request" else f" ({r.get('phase')})"
    request = f"{r.get('method', '')} {r.get('url', '')}{phase}"
    return f"{r.get('ts', '')} {mark:<5} {signal:<14} {request}  {r.get('reason', '')}"
