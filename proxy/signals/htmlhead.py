"""What an HTML document says about itself: meta tags, licence links, inline RSL.

A small, forgiving reader (stdlib `html.parser`): it collects `<meta name
content>`, `<link rel href type>` and the text of `<script
type="application/rsl+xml">`, wherever they stand (signals.md §6.2: be
lenient about `<head>`). Never raises on content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

MAX_SCRIPT = 256 * 1024


@dataclass
class HtmlHead:
    metas: list[tuple[str, str]] = field(default_factory=list)  # (name, content)
    links: list[dict[str, str]] = field(default_factory=list)  # attributes, names lower-case
    rsl_scripts: list[str] = field(default_factory=list)
    c2pa_scripts: list[str] = field(default_factory=list)  # base64 manifests (C2PA 2.4 Annex A.7)

    def meta(self, name: str) -> list[str]:
        """Contents of the meta tags called `name` (case-insensitive), in order."""
        return [c for n, c in self.metas if n.strip().lower() == name]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.head = HtmlHead()
        self._in_rsl: list[str] | None = None
        self._in_c2pa: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta" and "name" in a:
            self.head.metas.append((a["name"], a.get("content", "")))
        elif tag == "link":
            self.head.links.append(a)
        elif tag == "script" and a.get("type", "").strip().lower() == "application/rsl+xml":
            self._in_rsl = []
        elif tag == "script" and a.get("type", "").strip().lower() == "application/c2pa":
            self._in_c2pa = []

    def handle_data(self, data: str) -> None:
        for buffer in (self._in_rsl, self._in_c2pa):
            if buffer is not None and sum(map(len, buffer)) < MAX_SCRIPT:
                buffer.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_rsl is not None:
            self.head.rsl_scripts.append("".join(self._in_rsl))
            self._in_rsl = None
        if tag == "script" and self._in_c2pa is not None:
            self.head.c2pa_scripts.append("".join(self._in_c2pa))
            self._in_c2pa = None


def read(body: bytes, charset: str | None = None) -> HtmlHead:
    """The meta tags, links and inline RSL of an HTML body."""
    try:
        text = body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    reader = _Reader()
    try:
        reader.feed(text)
        reader.close()
    except Exception:  # html.parser can assert on pathological markup; keep what was read
        pass
    return reader.head
