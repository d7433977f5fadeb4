"""`optout-proxy audit report`: one self-contained HTML file a compliance officer can open.

Each request counted once by what happened to it (proxy.counting: blocked
before the fetch, withheld after it, delivered, would-block in monitor mode);
refusals over time by signal (an inline SVG chart with an HTML legend: no
network, no script library); top hosts, rights holders with their letters
linked, deciding rules, a breakdown by crawler user agent, the policy in force
over time (its sha256), the chain verification result, a banner when the
report is filtered, and a searchable table of recent refusals with their
evidence (the deciding line of the stored document, marked). Every number is
also in a `data-*` attribute, so tests can compare the page with the log.
"""

from __future__ import annotations

import html
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.audit import VerifyReport
from proxy.counting import BLOCKED, DELIVERED, OUTCOMES, REFUSED, WITHHELD, WOULD_BLOCK
from proxy.logview import Summary, deciding, key_of
from proxy.store import EvidenceStore

PALETTE = ("#1b6ca8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d96a3", "#6b4e71", "#c06c84",
           "#355c7d", "#f67280", "#2a9d8f", "#e76f51", "#264653")  # fmt: skip
RECENT = 500
EXCERPT_LINES = 3


@dataclass
class PolicyRun:
    """One stretch of the log decided under one policy (a reload starts the next)."""

    sha256: str
    path: str
    first: str
    last: str
    records: int = 0


@dataclass
class ReportData:
    summary: Summary = field(default_factory=lambda: Summary("signal", also=("user-agent",)))
    by_bucket: dict[str, Counter[str]] = field(default_factory=dict)  # day -> signal -> refusals
    hosts: Counter[str] = field(default_factory=Counter)
    holders: Counter[str] = field(default_factory=Counter)
    sources: dict[str, str] = field(default_factory=dict)  # holder -> the letter's URL
    rules: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    policies: list[PolicyRun] = field(default_factory=list)

    @property
    def would_block(self) -> Counter[str]:
        """Monitor-mode refusals per signal."""
        return Counter({k: c[WOULD_BLOCK] for k, c in self.summary.groups.items() if c[WOULD_BLOCK] > 0})

    @property
    def agents(self) -> dict[str, Counter[str]]:
        """Outcomes per crawler User-Agent header."""
        return self.summary.more.get("user-agent", {})

    def _policy(self, r: dict[str, Any]) -> None:
        sha = r.get("policy_sha256")
        if not isinstance(sha, str) or not sha:
            return
        ts = str(r.get("ts", ""))
        if not self.policies or self.policies[-1].sha256 != sha:
            self.policies.append(PolicyRun(sha, str(r.get("policy") or "-"), ts, ts))
        run = self.policies[-1]
        run.last, run.records = ts, run.records + 1


def gather(recs: Iterator[dict[str, Any]]) -> ReportData:
    """One pass over the records."""
    d = ReportData()
    for r in recs:
        d._policy(r)
        if d.summary.add(r) in (BLOCKED, WITHHELD):
            signal = str(r.get("signal") or "-")
            d.by_bucket.setdefault(str(r.get("ts", ""))[:10], Counter())[signal] += 1
            d.hosts[str(r.get("host") or "-")] += 1
            holder = key_of(r, "holder")
            if holder != "-":
                d.holders[holder] += 1
                source = ((deciding(r) or {}).get("entry") or {}).get("source")
                if isinstance(source, str):
                    d.sources[holder] = source
            d.rules[key_of(r, "rule")] += 1
            d.recent.append(r)
    return d


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _chart(d: ReportData) -> str:
    days = sorted(d.by_bucket)
    signals = sorted({s for c in d.by_bucket.values() for s in c})
    if not days:
        return '<p class="empty">No refusals in this period.</p>'
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(signals)}
    width, height, pad = max(480, 40 * len(days) + 80), 260, 40
    peak = max(sum(c.values()) for c in d.by_bucket.values())
    bar = (width - 2 * pad) / len(days)
    parts = [f'<svg id="chart" role="img" aria-label="refusals per day by signal" width="{width}" '
             f'height="{height + 24}" viewBox="0 0 {width} {height + 24}">']  # fmt: skip
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#444"/>')
    parts.append(f'<text x="{pad - 6}" y="{pad - 10}" text-anchor="end" class="axis">{peak}</text>')
    for i, day in enumerate(days):
        x = pad + i * bar + bar * 0.1
        y = float(height)
        for s in signals:
            n = d.by_bucket[day].get(s, 0)
            if not n:
                continue
            h = (height - pad) * n / peak
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{colour[s]}" data-day="{_e(day)}" data-signal="{_e(s)}" data-count="{n}">'
                f"<title>{_e(day)} {_e(s)}: {n}</title></rect>"
            )
        parts.append(f'<text x="{x + bar * 0.4:.1f}" y="{height + 16}" text-anchor="middle" class="axis">'
                     f"{_e(day[5:])}</text>")  # fmt: skip
    parts.append("</svg>")
    # The legend is HTML, so it wraps and every signal shows however many there are.
    parts.append('<ul id="legend">' + "".join(
        f'<li data-signal="{_e(s)}"><i style="background:{colour[s]}"></i>{_e(s)}</li>' for s in signals
    ) + "</ul>")  # fmt: skip
    return "".join(parts)


def _table(
    title: str, ident: str, counts: Counter[str], top: int = 15, links: dict[str, str] | None = None
) -> str:
    rows = "".join(
        f'<tr><td class="n" data-count="{n}">{n}</td><td>{_e(k)}{_source(links.get(k) if links else None)}</td></tr>'
        for k, n in counts.most_common(top)
    )
    body = rows or '<tr><td colspan="2" class="empty">none</td></tr>'
    return f'<section><h2>{_e(title)}</h2><table id="{ident}"><tbody>{body}</tbody></table></section>'


def _source(url: str | None) -> str:
    """A link to a registry entry's letter; only http(s), so a registry cannot plant a script link."""
    if not url:
        return ""
    if urlsplit(url).scheme.lower() in ("http", "https"):
        return f' <a class="source" href="{_e(url)}" rel="noreferrer">letter</a>'
    return f' <span class="source">({_e(url)})</span>'


def _agents(d: ReportData, top: int = 20) -> str:
    """Outcomes per crawler User-Agent, most refused first."""
    ordered = sorted(
        d.agents.items(), key=lambda kv: (-sum(kv[1][o] for o in REFUSED), -sum(kv[1].values()), kv[0])
    )
    rows = "".join(
        f'<tr data-agent="{_e(ua)}">' + "".join(f'<td class="n" data-{o}="{c[o]}">{c[o]}</td>' for o in OUTCOMES)
        + f'<td class="ua" title="{_e(ua)}">{_e(ua)}</td></tr>'
        for ua, c in ordered[:top] if any(c[o] for o in OUTCOMES)
    )  # fmt: skip
    head = "".join(f'<th class="n">{o}</th>' for o in OUTCOMES)
    body = rows or '<tr><td colspan="5" class="empty">none</td></tr>'
    return (f'<section><h2>By crawler user agent</h2><table id="agents"><thead><tr>{head}<th>User-Agent</th>'
            f"</tr></thead><tbody>{body}</tbody></table></section>")  # fmt: skip


def _policies(d: ReportData, top: int = 50) -> str:
    """Which policy decided which stretch of the log, by its sha256 (a reload starts a new row)."""
    runs = d.policies[-top:]
    rows = "".join(
        f'<tr class="policy" data-sha256="{_e(run.sha256)}" data-records="{run.records}"><td>{_e(run.first)}</td>'
        f'<td>{_e(run.last)}</td><td class="n">{run.records}</td><td><code title="{_e(run.sha256)}">'
        f"{_e(run.sha256[:16])}…</code></td><td>{_e(run.path)}</td></tr>"
        for run in runs
    )  # fmt: skip
    body = rows or '<tr><td colspan="5" class="empty">no record names its policy</td></tr>'
    more = f"<p>Last {top} of {len(d.policies)} stretches.</p>" if len(d.policies) > top else ""
    return (
        "<section><h2>Policy in force</h2>" + more + '<table id="policies"><thead><tr><th>from (UTC)</th>'
        '<th>to (UTC)</th><th class="n">records</th><th>policy sha256</th><th>file</th></tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _excerpt(store: EvidenceStore | None, sha: str | None, line: int | None) -> str:
    if store is None or not sha:
        return ""
    excerpt = store.excerpt(sha, line, context=EXCERPT_LINES, head=2 * EXCERPT_LINES + 1)
    if excerpt is None:
        return '<p class="empty">document not in the evidence store</p>'
    shown, _ = excerpt
    text = "".join(
        f'<span class="{"hit" if n == line else ""}">{n:>5}  {_e(t[:300])}</span>\n' for n, t in shown
    )
    return f"<pre>{text}</pre>"


def _recent(d: ReportData, store: EvidenceStore | None) -> str:
    rows = []
    for r in reversed(d.recent):
        f = deciding(r) or {}
        doc = f.get("document") or {}
        entry = f.get("entry") or {}
        where = doc.get("url") or (f"{entry.get('file')}:{entry.get('line')}" if entry else "")
        letter = _source(entry.get("source")) if entry else ""
        kind = "withheld" if r.get("phase") == "response" else "blocked"
        sha = doc.get("sha256") or r.get("response_headers_sha256")
        evidence = (
            f'<details id="ev-{_e(r.get("id"))}"><summary>evidence</summary>'
            f"<p>{_e(f.get('signal', ''))}: {_e(f.get('detail', ''))}"
            + (f" (line {_e(f['line'])})" if f.get("line") is not None else "")
            + f"</p><p>{_e(where)}{letter}" + (f" · sha256 {_e(sha)}" if sha else "")
            + (f" · fetched {_e(doc.get('fetched_at'))}" if doc.get("fetched_at") else "") + "</p>"
            + _excerpt(store, sha, f.get("line")) + "</details>"
        )  # fmt: skip
        rows.append(
            f'<tr class="block" data-id="{_e(r.get("id"))}" data-outcome="{kind}"><td>{_e(r.get("ts"))}</td>'
            f"<td>{_e(r.get('signal'))}<br><small>{kind}</small></td><td>{_e(r.get('host'))}</td>"
            f'<td class="url" title="{_e(r.get("url"))}">{_e(r.get("url"))}</td><td>{_e(r.get("reason"))}'
            f' <a href="#ev-{_e(r.get("id"))}">#</a>{evidence}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="5" class="empty">no refusals</td></tr>'
    return (
        f"<section><h2>Recent refusals (last {len(d.recent)}, blocked and withheld)</h2>"
        '<input id="q" type="search" placeholder="search host, URL, signal, reason" aria-label="search">'
        ' <span id="shown"></span>'
        '<table id="recent"><thead><tr><th>time (UTC)</th><th>signal</th><th>host</th><th>URL</th>'
        f"<th>reason and evidence</th></tr></thead><tbody>{body}</tbody></table></section>"
    )


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
.totals{display:flex;gap:1.5em;flex-wrap:wrap}.totals div{background:#f3f5f7;padding:.6em 1em;border-radius:6px}
.totals b{display:block;font-size:1.6em}.ok{color:#176b2c}.bad{color:#b00020;font-weight:bold}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #e3e3e3;padding:.3em .5em;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;width:6em}
#recent{table-layout:fixed}#recent td{overflow-wrap:anywhere}#recent th:nth-child(1){width:14em}#recent th:nth-child(2){width:8em}
#recent th:nth-child(3){width:11em}#recent th:nth-child(4){width:30%}
.url,.ua{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:32em}
#legend{list-style:none;display:flex;flex-wrap:wrap;gap:.4em 1.2em;padding:0;margin:.3em 0 0 40px}
#legend i{display:inline-block;width:10px;height:10px;margin-right:.35em}
.banner{background:#fff4d6;border:1px solid #e0b84c;padding:.5em 1em;border-radius:6px}
a.source{font-size:.9em}
pre{background:#f7f7f7;padding:.5em;overflow:auto}.hit{background:#ffe08a;font-weight:bold}
.axis,.legend{font-size:11px;fill:#444}.empty{color:#777}#q{width:40%;padding:.3em;margin:.5em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:1em}
"""

SCRIPT = """
(function(){
  var q=document.getElementById('q'), rows=[].slice.call(document.querySelectorAll('#recent tr.block'));
  function apply(){
    var t=q.value.toLowerCase(), n=0;
    rows.forEach(function(r){var hit=!t||r.textContent.toLowerCase().indexOf(t)>=0;r.style.display=hit?'':'none';
      if(hit)n++;});
    document.getElementById('shown').textContent=n+' of '+rows.length+' shown';
    document.body.setAttribute('data-shown',n);
  }
  q.addEventListener('input',apply);
  var m=/[#&]q=([^&]*)/.exec(location.hash); if(m){q.value=decodeURIComponent(m[1]);}
  apply();
  document.body.setAttribute('data-ready','1');
})();
"""


def render(d: ReportData, chains: Sequence[VerifyReport], log: Path, store: EvidenceStore | None,
           generated: str, filtered: str = "") -> str:  # fmt: skip
    """The whole report as one HTML string. `chains`: the verification of each log read (one per
    worker under `run --workers`); `filtered` describes the filter the records passed, if any."""
    broken = next((c for c in chains if not c.ok), None)
    if not chains:
        chain = '<p id="chain" data-ok="unknown">Chain not verified.</p>'
    elif broken is not None:
        chain = (f'<p id="chain" data-ok="false" class="bad">Chain BROKEN at {_e(broken.where)}: '
                 f"{_e(broken.problem)}</p>")  # fmt: skip
    else:
        heads = ", ".join(f"<code>{_e(c.head)}</code>" for c in chains)
        what = "Chain intact" if len(chains) == 1 else f"{len(chains)} chains intact (one per worker)"
        chain = (f'<p id="chain" data-ok="true" class="ok">{what}: {sum(c.records for c in chains)} records '
                 f"in {sum(len(c.files) for c in chains)} file(s), {sum(c.checkpoints for c in chains)} "
                 f"checkpoint(s); head{'s' if len(chains) > 1 else ''} {heads}.</p>")  # fmt: skip
        unanchored = [c for c in chains if c.records and not c.checkpoints]
        if unanchored:
            # Intact, yet nothing records where it ended: a cut end would read the same.
            chain += (f'<p id="chain-warning" class="bad">No checkpoints for {len(unanchored)} log(s): '
                      "records removed from the end cannot be found. Compare the head with one kept "
                      "elsewhere (<code>audit verify --expect-head</code>).</p>")  # fmt: skip
    banner = (
        f'<p id="filter" class="banner" data-filter="{_e(filtered)}"><b>Filtered report:</b> only records '
        f"matching {_e(filtered)}. Counts, chart and tables cover those records only.</p>"
        if filtered else ""
    )  # fmt: skip
    s = d.summary
    o = s.outcomes
    totals = (
        '<div class="totals">'
        + "".join(
            f'<div>{label}<b id="{ident}" data-count="{n}">{n}</b></div>'
            for label, ident, n in (
                ("requests", "total", s.requests),
                ("blocked before the fetch", "blocked", o[BLOCKED]),
                ("withheld after the fetch", "withheld", o[WITHHELD]),
                ("delivered", "delivered", o[DELIVERED]),
                ("would have been blocked (monitor)", "would", o[WOULD_BLOCK]),
            )
        )
        + "</div>"
    )
    period = f"{_e(s.first_ts or '-')} to {_e(s.last_ts or '-')}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>optout-proxy audit report</title><style>{CSS}</style></head><body>"
        f"<h1>optout-proxy audit report</h1>{banner}<p>Log <code>{_e(log)}</code>, {period}: {s.records} records. "
        f"Generated {_e(generated)}. Each request is counted once, by what happened to it.</p>"
        f"{chain}{totals}<section><h2>Refusals per day, by signal (blocked and withheld)</h2>{_chart(d)}</section>"
        '<div class="grid">'
        + _table("Top hosts (refusals)", "hosts", d.hosts)
        + _table("Rights holders (registry refusals)", "holders", d.holders, links=d.sources)
        + _table("Would have been blocked, monitor mode (by signal)", "monitor", d.would_block)
        + "</div>"
        + _agents(d)
        + _policies(d)
        + _table("Deciding rules (refusals)", "rules", d.rules, top=25)
        + _recent(d, store)
        + f"<script>{SCRIPT}</script></body></html>"
    )
