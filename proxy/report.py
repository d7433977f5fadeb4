"""`optout-proxy audit report`: one self-contained HTML file a compliance officer can open.

Totals, blocks over time by signal (an inline SVG chart: no network, no
script library), top hosts, holders and deciding rules, monitor-mode "would
have blocked" counts, the chain verification result, and a searchable table
of recent blocks with their evidence (the deciding line of the stored
document, marked). Every number is also in a `data-*` attribute, so tests
can compare the page with the log.
"""

from __future__ import annotations

import html
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.audit import VerifyReport
from proxy.logview import Summary, deciding, key_of
from proxy.store import EvidenceStore

PALETTE = ("#1b6ca8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d96a3", "#6b4e71", "#c06c84",
           "#355c7d", "#f67280", "#2a9d8f", "#e76f51", "#264653")  # fmt: skip
RECENT = 500
EXCERPT_LINES = 3


@dataclass
class ReportData:
    summary: Summary = field(default_factory=lambda: Summary("signal"))  # totals, period, per signal
    by_bucket: dict[str, Counter[str]] = field(default_factory=dict)  # day -> signal -> blocks
    hosts: Counter[str] = field(default_factory=Counter)
    holders: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))

    @property
    def would_block(self) -> Counter[str]:
        """Monitor-mode blocks per signal."""
        return Counter({k: c["would-block"] for k, c in self.summary.groups.items() if c["would-block"]})


def gather(recs: Iterator[dict[str, Any]]) -> ReportData:
    """One pass over the records."""
    d = ReportData()
    for r in recs:
        if d.summary.add(r) == "block":
            signal = str(r.get("signal") or "-")
            d.by_bucket.setdefault(str(r.get("ts", ""))[:10], Counter())[signal] += 1
            d.hosts[str(r.get("host") or "-")] += 1
            holder = key_of(r, "holder")
            if holder != "-":
                d.holders[holder] += 1
            d.rules[key_of(r, "rule")] += 1
            d.recent.append(r)
    return d


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _chart(d: ReportData) -> str:
    days = sorted(d.by_bucket)
    signals = sorted({s for c in d.by_bucket.values() for s in c})
    if not days:
        return '<p class="empty">No blocks in this period.</p>'
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(signals)}
    width, height, pad = max(480, 40 * len(days) + 80), 260, 40
    peak = max(sum(c.values()) for c in d.by_bucket.values())
    bar = (width - 2 * pad) / len(days)
    parts = [f'<svg id="chart" role="img" aria-label="blocks per day by signal" width="{width}" '
             f'height="{height + 60}" viewBox="0 0 {width} {height + 60}">']  # fmt: skip
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
    for i, s in enumerate(signals):
        lx = pad + (i % 4) * 160
        ly = height + 34 + (i // 4) * 16
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="10" height="10" fill="{colour[s]}"/>'
                     f'<text x="{lx + 14}" y="{ly}" class="legend">{_e(s)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _table(title: str, ident: str, counts: Counter[str], top: int = 15) -> str:
    rows = "".join(
        f'<tr><td class="n" data-count="{n}">{n}</td><td>{_e(k)}</td></tr>'
        for k, n in counts.most_common(top)
    )
    body = rows or '<tr><td colspan="2" class="empty">none</td></tr>'
    return f'<section><h2>{_e(title)}</h2><table id="{ident}"><tbody>{body}</tbody></table></section>'


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
        sha = doc.get("sha256") or r.get("response_headers_sha256")
        evidence = (
            f'<details id="ev-{_e(r.get("id"))}"><summary>evidence</summary>'
            f"<p>{_e(f.get('signal', ''))}: {_e(f.get('detail', ''))}"
            + (f" (line {_e(f['line'])})" if f.get("line") is not None else "")
            + f"</p><p>{_e(where)}" + (f" · sha256 {_e(sha)}" if sha else "")
            + (f" · fetched {_e(doc.get('fetched_at'))}" if doc.get("fetched_at") else "") + "</p>"
            + _excerpt(store, sha, f.get("line")) + "</details>"
        )  # fmt: skip
        rows.append(
            f'<tr class="block" data-id="{_e(r.get("id"))}"><td>{_e(r.get("ts"))}</td><td>{_e(r.get("signal"))}</td>'
            f'<td>{_e(r.get("host"))}</td><td class="url">{_e(r.get("url"))}</td><td>{_e(r.get("reason"))}'
            f' <a href="#ev-{_e(r.get("id"))}">#</a>{evidence}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="5" class="empty">no blocks</td></tr>'
    return (
        f"<section><h2>Recent blocks (last {len(d.recent)})</h2>"
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
text-align:left;vertical-align:top}td.n{text-align:right;width:6em}.url{word-break:break-all}
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


def render(d: ReportData, verify: VerifyReport | None, log: Path, store: EvidenceStore | None,
           generated: str) -> str:  # fmt: skip
    """The whole report as one HTML string."""
    if verify is None:
        chain = '<p id="chain" data-ok="unknown">Chain not verified.</p>'
    elif verify.ok:
        chain = (f'<p id="chain" data-ok="true" class="ok">Chain intact: {verify.records} records in '
                 f"{len(verify.files)} file(s), {verify.checkpoints} checkpoint(s); head "
                 f"<code>{_e(verify.head)}</code>.</p>")  # fmt: skip
    else:
        chain = (f'<p id="chain" data-ok="false" class="bad">Chain BROKEN at {_e(verify.where)}: '
                 f"{_e(verify.problem)}</p>")  # fmt: skip
    s = d.summary
    o = s.outcomes
    totals = (
        '<div class="totals">'
        f'<div>records<b id="total" data-count="{s.total}">{s.total}</b></div>'
        f'<div>blocked<b id="blocked" data-count="{o["block"]}">{o["block"]}</b></div>'
        f'<div>would have blocked (monitor)<b id="would" data-count="{o["would-block"]}">{o["would-block"]}</b></div>'
        f'<div>allowed<b id="allowed" data-count="{o["allow"]}">{o["allow"]}</b></div></div>'
    )
    period = f"{_e(s.first_ts or '-')} to {_e(s.last_ts or '-')}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>optout-proxy audit report</title><style>{CSS}</style></head><body>"
        f"<h1>optout-proxy audit report</h1><p>Log <code>{_e(log)}</code>, {period}. Generated {_e(generated)}.</p>"
        f"{chain}{totals}<section><h2>Blocks per day, by signal</h2>{_chart(d)}</section>"
        '<div class="grid">'
        + _table("Top hosts (blocks)", "hosts", d.hosts)
        + _table("Rights holders (registry blocks)", "holders", d.holders)
        + _table("Would have blocked, monitor mode (by signal)", "monitor", d.would_block)
        + "</div>"
        + _table("Deciding rules (blocks)", "rules", d.rules, top=25)
        + _recent(d, store)
        + f"<script>{SCRIPT}</script></body></html>"
    )
