"""Signals found in a response: judged on the headers first, then (if needed) on the body.

Pure except for `get_license`, through which an RSL licence named by a `Link`
header or an HTML `<link>` is fetched (the addon backs it with a cache).
Headers are judged as soon as they arrive, before any body byte is read; a
body is inspected only for HTML (meta tags, licence links) and media (XMP,
C2PA, PDF metadata).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

from proxy import mime, sniff
from proxy.documents import OptionalDoc, license_findings
from proxy.evidence import Document, Finding, Says
from proxy.policy import Policy
from proxy.signals import contentsignal, contentusage, htmlhead, media, rsl, tdmrep, xrobotstag

GetLicense = Callable[[str], Awaitable[OptionalDoc]]
DEFAULT_BODY_CAP = 32 * 1024 * 1024  # a long HTML page or a full-size photo, with room to spare
BODY_SIGNALS = (xrobotstag.NAME_META, tdmrep.NAME, rsl.NAME, media.NAME)


def charsets_in(content_types: Sequence[str]) -> list[str]:
    """Every charset the Content-Type values name (lines, comma-listed members, quoted or not)."""
    return [m.group(1) for value in content_types for m in htmlhead.CHARSET_PARAM.finditer(value)]


@dataclass(frozen=True, slots=True)
class ResponseView:
    """What the signals need of a response, whichever HTTP library produced it."""

    url: str
    status: int
    headers: tuple[tuple[str, str], ...]  # field lines, in order, names as received

    def values(self, name: str) -> list[str]:
        """Every field line named `name` (case-insensitive), in order."""
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    @property
    def content_type(self) -> str:
        values = self.values("content-type")
        return values[-1].split(";")[0].strip().lower() if values else ""

    @property
    def charset(self) -> str | None:
        for value in self.values("content-type")[-1:]:
            for param in value.split(";")[1:]:
                key, _, val = param.partition("=")
                if key.strip().lower() == "charset":
                    return val.strip().strip('"') or None
        return None

    @property
    def charsets(self) -> list[str]:
        """Every charset any Content-Type line names (lines, comma-listed members, quoted or not)."""
        return charsets_in(self.values("content-type"))

    @property
    def content_length(self) -> int | None:
        values = self.values("content-length")
        try:
            return int(values[-1]) if values else None
        except ValueError:
            return None


# Response headers that carry a signal; a response with none of them, no body
# to inspect and no tdmrep.json entry needs no further work (the hot path).
SIGNAL_HEADERS = frozenset(
    {b"x-robots-tag", b"content-usage", b"content-signal", b"tdm-reservation", b"tdm-policy", b"link",
     b"www-authenticate"}
)  # fmt: skip


def reads_bodies(policy: Policy) -> bool:
    """True if any signal read from bodies is on: then every body is sniffed before delivery."""
    return any(policy.signal_mode(s) != "off" for s in BODY_SIGNALS)


def body_kind(content_types: Sequence[str] | str, policy: Policy, head: bytes = b"") -> frozenset[str]:
    """The readers a body needs (`html`, `media`), from every Content-Type value and, when given,
    its first bytes (proxy.sniff); empty when no body signal is on."""
    if not reads_bodies(policy):
        return frozenset()
    values = [content_types] if isinstance(content_types, str) else content_types
    return frozenset(sniff.kinds(values, head))


async def _link_licenses(
    urls: Sequence[str], base: str, policy: Policy, get_license: GetLicense, how: str
) -> list[Finding]:
    found: list[Finding] = []
    for href in list(dict.fromkeys(urls))[:4]:
        target = urljoin(base, href)
        found += license_findings(base, f"{target} ({how})", await get_license(target), policy)
    return found


def _tdm_header(view: ResponseView, document: Document) -> tdmrep.Channel | None:
    return tdmrep.value_channel(
        "header", view.values("tdm-reservation"), view.values("tdm-policy"), document, "tdm-reservation"
    )


async def header_findings(
    view: ResponseView,
    policy: Policy,
    document: Document,
    tdm_file: tdmrep.Channel | None,
    get_license: GetLicense,
    *,
    body_follows: bool,
) -> list[Finding]:
    """Findings of the response headers. Under TDMRep `spec` precedence with a body still to
    read, the TDMRep verdict waits for the body (its meta tags supersede the header)."""
    mode = policy.signal_mode
    purpose = policy.purpose
    found: list[Finding] = []
    if mode(xrobotstag.NAME_HEADER) != "off":
        found += xrobotstag.findings_from_headers(
            view.values("x-robots-tag"), policy.tokens, purpose, document,
            is_image=view.content_type.startswith("image/"), image_scope=policy.reading("noimageai_scope"),
        )  # fmt: skip
    if mode(contentusage.NAME) != "off":
        found += contentusage.findings_from_headers(
            view.values("content-usage"),
            purpose,
            document,
            legacy=policy.reading("lenient_readings") == "block",
        )
    if mode(contentsignal.NAME) != "off":
        found += contentsignal.findings_from_headers(view.values("content-signal"), purpose, document)
    if mode(tdmrep.NAME) != "off":
        precedence = policy.reading("tdmrep_precedence")
        if not (body_follows and precedence == "spec"):
            channels = [c for c in (tdm_file, _tdm_header(view, document)) if c is not None]
            found += tdmrep.response_findings(channels, purpose, precedence)
    if mode(rsl.NAME) != "off":
        found += await _link_licenses(
            rsl.license_links(view.values("link")), view.url, policy, get_license, "Link"
        )
        auth = " ".join(view.values("www-authenticate")).lower()
        if view.status in (401, 402) and auth.startswith("license"):
            detail = f"HTTP {view.status} WWW-Authenticate: License (a licence token is required)"
            found.append(Finding(rsl.NAME, Says.DISALLOW, detail, document))
    if mode(media.NAME) != "off":
        for link in view.values("link"):
            if "c2pa-manifest" in link.lower():
                detail = f"Link: {link[:200]} (remote C2PA manifest recorded, not fetched)"
                found.append(Finding(media.NAME, Says.UNKNOWN, detail, document))
    return found


def _embedded_note(head: htmlhead.HtmlHead) -> str:
    """Names the embedded documents read, so a finding from one of them says where it was."""
    return f" [the page's embedded markup was read too: {', '.join(head.embedded)}]" if head.embedded else ""


async def body_findings(
    view: ResponseView,
    body: bytes,
    kinds: frozenset[str] | set[str] | str,
    policy: Policy,
    document: Document,
    tdm_file: tdmrep.Channel | None,
    get_license: GetLicense,
) -> list[Finding]:
    """Findings of a body read as HTML and/or media (and TDMRep's verdict over every channel)."""
    kinds = {kinds} if isinstance(kinds, str) else kinds
    mode = policy.signal_mode
    purpose = policy.purpose
    found: list[Finding] = []
    tdm_late: list[tdmrep.Channel] = []
    if "html" in kinds:
        types = view.values("content-type")
        head = htmlhead.read(
            body,
            view.charset,
            xml=any("xml" in t.lower() for t in types),
            also=view.charsets if types else (),
        )
        parts, complete = mime.encoded_parts(body, types)
        for part in parts:
            head.merge(htmlhead.read(part))  # a page inside MHTML or a message, decoded
        if not complete:
            head.unread.append(
                f"a MIME body of more than {mime.MAX_PARTS} parts or {mime.MAX_BOUNDARIES} boundaries"
            )
        first = len(found)
        if mode(xrobotstag.NAME_META) != "off":
            found += xrobotstag.findings_from_meta(
                head.metas, policy.tokens, purpose, document, image_scope=policy.reading("noimageai_scope")
            )
            # <meta http-equiv="X-Robots-Tag"> stands for the header of that name.
            found += xrobotstag.findings_from_headers(
                head.equiv("x-robots-tag"), policy.tokens, purpose, document, is_image=False,
                image_scope=policy.reading("noimageai_scope"),
            )  # fmt: skip
        if mode(contentusage.NAME) != "off" and head.equiv("content-usage"):
            found += contentusage.findings_from_headers(
                head.equiv("content-usage"),
                purpose,
                document,
                legacy=policy.reading("lenient_readings") == "block",
            )
        if mode(contentsignal.NAME) != "off" and head.equiv("content-signal"):
            found += contentsignal.findings_from_headers(head.equiv("content-signal"), purpose, document)
        meta = tdmrep.value_channel(
            "meta", head.meta("tdm-reservation") + head.equiv("tdm-reservation"),
            head.meta("tdm-policy") + head.equiv("tdm-policy"), document,
            '<meta name="tdm-reservation">' + _embedded_note(head),
        )  # fmt: skip
        if meta is not None:
            tdm_late.append(meta)
        if mode(rsl.NAME) != "off":
            hrefs = [
                a.get("href", "")
                for a in head.links
                if "license" in a.get("rel", "").lower().split()
                and a.get("type", "").lower() == rsl.MEDIA_TYPE
            ]
            found += await _link_licenses([h for h in hrefs if h], view.url, policy, get_license, "<link>")
            for script in head.rsl_scripts[:4]:
                inline = OptionalDoc("ok", document, rsl.parse(script.strip().encode()))
                found += license_findings(
                    view.url, "inline <script type=application/rsl+xml>", inline, policy
                )
        if mode(media.NAME) != "off":
            for script in head.c2pa_scripts[:4]:
                try:
                    manifest = base64.b64decode("".join(script.split()), validate=False)
                except ValueError:
                    continue
                found += media.c2pa_findings(
                    manifest, purpose, document, ingredients=policy.reading("c2pa_ingredients"),
                    invalid_signature=policy.reading("c2pa_invalid_signature"),
                    declared=("application/c2pa",),
                )  # fmt: skip
        if head.unread and mode(xrobotstag.NAME_META) != "off":
            found.append(Finding(
                xrobotstag.NAME_META, Says.DISALLOW,
                f"the page's markup could not be read in full ({'; '.join(head.unread)}); withheld rather "
                "than guessed", document,
            ))  # fmt: skip
        if head.embedded:
            note = _embedded_note(head)
            found[first:] = [dataclasses.replace(f, detail=f.detail + note) for f in found[first:]]
    if "media" in kinds:
        media_found, packets = media.findings_from_body(
            body, purpose, document, ingredients=policy.reading("c2pa_ingredients"),
            invalid_signature=policy.reading("c2pa_invalid_signature"), declared=view.values("content-type"),
        )  # fmt: skip
        if mode(media.NAME) != "off":
            found += media_found
        # XMP and an EPUB's package both: one channel, where a 1 in either counts (a stored file
        # with an XMP `0` must not stand in for the package's `1`).
        reservations, policies = media.tdm_from_xmp(packets)
        epub_reservations, epub_policies, unread = media.epub_tdm(body)
        label = "XMP tdm:reservation" if not epub_reservations else "EPUB <meta tdm:reservation>"
        if reservations and epub_reservations:
            label = "XMP and EPUB tdm:reservation"
        reservations, policies = reservations + epub_reservations, policies + epub_policies
        if unread:
            why = f"the EPUB could not be read in full ({unread}); withheld rather than guessed"
            found.append(Finding(media.NAME, Says.DISALLOW, why, document))
        meta = tdmrep.value_channel("metadata", reservations, policies, document, label)
        if meta is not None:
            tdm_late.append(meta)
    if mode(tdmrep.NAME) != "off":
        precedence = policy.reading("tdmrep_precedence")
        if precedence == "spec":
            channels = [c for c in (tdm_file, _tdm_header(view, document), *tdm_late) if c is not None]
        else:
            channels = tdm_late  # the file and the header were judged already
        found += tdmrep.response_findings(channels, purpose, precedence)
    return found
