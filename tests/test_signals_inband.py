"""Signals found in the response: X-Robots-Tag and meta robots, TDMRep channels and
precedence, Content-Usage/Content-Signal headers, media metadata. Hand-written expectations."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from proxy.decide import decide
from proxy.documents import OptionalDoc
from proxy.evidence import Document, Says, Verdict
from proxy.inband import ResponseView, body_findings, body_kind, header_findings
from proxy.policy import Policy, load_policy
from proxy.signals import media, tdmrep, xrobotstag
from tests import media_files as m
from tests.policies import write_policy

D, A, U = Says.DISALLOW, Says.ALLOW, Says.UNKNOWN
DOC = Document("http://a.example/x", 200, None, "2026-01-01T00:00:00Z")


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write_policy(tmp_path))


def reading(policy: Policy, **changes: str) -> Policy:
    return dataclasses.replace(
        policy, interpretations=MappingProxyType({**policy.interpretations, **changes})
    )


async def no_license(url: str) -> OptionalDoc:
    raise AssertionError(f"unexpected licence fetch {url}")


async def verdict(
    policy: Policy,
    headers: list[tuple[str, str]],
    body: bytes | None = None,
    tdm_file: tdmrep.Channel | None = None,
) -> tuple[Verdict, str | None]:
    view = ResponseView("http://a.example/x", 200, tuple(headers))
    kind = body_kind(view.content_type, policy)
    found = await header_findings(view, policy, DOC, tdm_file, no_license, body_follows=body is not None)
    if body is not None and kind is not None:
        found += await body_findings(view, body, kind, policy, DOC, tdm_file, no_license)
    d = decide(found, policy)
    return d.verdict, d.signal


# -- X-Robots-Tag / meta robots (§6) --------------------------------------------

TOKENS = ["ExampleBot"]


@pytest.mark.parametrize(
    ("lines", "is_image", "expected"),
    [
        (["noai"], False, [D]),  # X1
        (["noimageai"], True, [D]),  # X2
        (["noindex, nofollow"], False, [U]),  # X3
        (["NoAI"], False, [D]),  # X4
        (["otherbot: noai"], False, []),  # X5
        (["ExampleBot: noindex, noai"], False, [D]),  # X6
        (["GPTBot: noindex, noai"], False, []),  # X7 (GPTBot not among the tokens here)
        (["otherbot: noai", "noimageai"], True, [D]),  # X8
        (["max-image-preview:large, noai"], False, [D]),  # X9
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False, []),  # X10
        ([":,", ",,,", "noai"], False, [D]),  # malformed items ignored one by one
        # two field lines an intermediary combined (RFC 9110 §5.3): each bot prefix starts a group
        (["googlebot: nofollow, ExampleBot: noai"], False, [D]),
        (["nofollow, ExampleBot: noai"], False, [D]),
        (["ExampleBot: noindex, otherbot: noai"], False, [U]),  # the noai is otherbot's
        (["otherbot: noai, noindex"], False, []),  # "noindex" stays in otherbot's group
        (["noai\x00"], False, [D]),  # NUL read as a space (RFC 9110 §5.5)
        (["ExampleBot:\r\n noai"], False, [D]),
    ],
)
def test_x_robots_tag(lines: list[str], is_image: bool, expected: list[Says]) -> None:
    found = xrobotstag.findings_from_headers(
        lines, TOKENS, "ai-train", None, is_image=is_image, image_scope="images"
    )
    assert [f.says for f in found] == expected


def test_x_robots_tag_binds_through_honored_tokens() -> None:
    found = xrobotstag.findings_from_headers(
        ["GPTBot: noai"], ["ExampleBot", "GPTBot"], "ai-train", None, is_image=False, image_scope="all"
    )
    assert [(f.says, f.agent) for f in found] == [(D, "GPTBot")]


def test_noimageai_scope() -> None:
    page = dict(is_image=False)
    assert (
        xrobotstag.findings_from_headers(["noimageai"], TOKENS, "ai-train", None, image_scope="all", **page)[
            0
        ].says
        is D
    )
    found = xrobotstag.findings_from_headers(
        ["noimageai"], TOKENS, "ai-train", None, image_scope="images", **page
    )
    assert [f.says for f in found] == [U]  # recorded, not a reservation for a page


def test_search_purpose_reads_noindex() -> None:
    found = xrobotstag.findings_from_headers(
        ["noindex"], TOKENS, "search", None, is_image=False, image_scope="all"
    )
    assert [f.says for f in found] == [D]
    found = xrobotstag.findings_from_headers(
        ["noai"], TOKENS, "search", None, is_image=False, image_scope="all"
    )
    assert [f.says for f in found] == [U]


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (b'<meta name="robots" content="noai, noimageai">', (Verdict.BLOCK, "html-meta")),  # X11
        (b'<META NAME="ExampleBot" CONTENT="noai">', (Verdict.BLOCK, "html-meta")),  # X12
        (b'<meta name="googlebot" content="noai">', (Verdict.ALLOW, None)),
        (b'<meta name="robots" content="index, follow">', (Verdict.ALLOW, None)),
        (b"<html><body>no head at all</body>", (Verdict.ALLOW, None)),
        (b"<meta name='robots' content='noai'", (Verdict.ALLOW, None)),  # unterminated tag: nothing read
        (b'\xff\xfe<meta name="robots" content="noai">', (Verdict.BLOCK, "html-meta")),  # bad bytes around it
    ],
)
async def test_meta_robots(policy: Policy, html: bytes, expected: tuple[Verdict, str | None]) -> None:
    assert await verdict(policy, [("Content-Type", "text/html")], html) == expected


async def test_header_repeated_100_times(policy: Policy) -> None:
    headers = [("X-Robots-Tag", "noindex")] * 99 + [
        ("X-Robots-Tag", "otherbot: noai"),
        ("X-Robots-Tag", "NOAI"),
    ]
    assert await verdict(policy, headers) == (Verdict.BLOCK, "x-robots-tag")
    assert await verdict(policy, [("X-Robots-Tag", "noindex")] * 100) == (Verdict.ALLOW, None)


# -- TDMRep channels (§4.2–4.5) ---------------------------------------------------

FILE_1 = tdmrep.Channel("file", 1, None, "entry 1", None)
HTML = [("Content-Type", "text/html")]


def meta(value: str) -> bytes:
    return f'<html><head><meta name="tdm-reservation" content="{value}"></head></html>'.encode()


@pytest.mark.parametrize(
    ("headers", "body", "tdm_file", "wins", "spec"),
    [
        ([("tdm-reservation", "1")], None, None, Verdict.BLOCK, Verdict.BLOCK),  # D5
        (
            [("TDM-Reservation", "1"), ("tdm-policy", "https://p.example/p.json")],
            None,
            None,
            Verdict.BLOCK,
            Verdict.BLOCK,
        ),  # D6
        ([("tdm-reservation", "2")], None, None, Verdict.ALLOW, Verdict.ALLOW),  # D7
        ([("tdm-reservation", "yes")], None, None, Verdict.ALLOW, Verdict.ALLOW),
        ([*HTML, ("tdm-reservation", "1")], meta("0"), None, Verdict.BLOCK, Verdict.ALLOW),  # D8
        (
            [("tdm-reservation", "0")],
            None,
            FILE_1,
            Verdict.ALLOW,
            Verdict.ALLOW,
        ),  # D9 (file judged pre-fetch)
        (HTML, meta("1"), None, Verdict.BLOCK, Verdict.BLOCK),
        (HTML, b"<html></html>", FILE_1, Verdict.ALLOW, Verdict.BLOCK),  # D10 (file judged pre-fetch)
    ],
)
async def test_tdmrep_precedence(
    policy: Policy,
    headers: list[tuple[str, str]],
    body: bytes | None,
    tdm_file: tdmrep.Channel | None,
    wins: Verdict,
    spec: Verdict,
) -> None:
    assert (await verdict(policy, headers, body, tdm_file))[0] is wins
    assert (await verdict(reading(policy, tdmrep_precedence="spec"), headers, body, tdm_file))[0] is spec


async def test_pdf_tdm_metadata_supersedes_under_spec(policy: Policy) -> None:
    pdf = m.pdf_with_xmp(m.tdm_xmp("1"), compressed=True)  # D12
    headers = [("Content-Type", "application/pdf"), ("tdm-reservation", "0")]
    assert await verdict(policy, headers, pdf) == (Verdict.BLOCK, "tdmrep")
    assert await verdict(reading(policy, tdmrep_precedence="spec"), headers, pdf) == (Verdict.BLOCK, "tdmrep")
    pdf0 = m.pdf_with_xmp(m.tdm_xmp("0"), compressed=False)
    headers1 = [("Content-Type", "application/pdf"), ("tdm-reservation", "1")]
    assert (await verdict(reading(policy, tdmrep_precedence="spec"), headers1, pdf0))[0] is Verdict.ALLOW


# -- Content-Usage / Content-Signal headers, and conflicts ------------------------


async def test_header_conflicts_most_restrictive_wins(policy: Policy) -> None:
    # P21-like: a grant in one channel never lifts a reservation in another
    headers = [("Content-Usage", "train-ai=y"), ("Content-Signal", "ai-train=no")]
    assert await verdict(policy, headers) == (Verdict.BLOCK, "content-signal")
    headers = [("Content-Signal", "ai-train=yes"), ("X-Robots-Tag", "noai")]
    assert await verdict(policy, headers) == (Verdict.BLOCK, "x-robots-tag")
    assert await verdict(policy, [("Content-Usage", "train-ai=y"), ("Content-Signal", "ai-train=yes")]) == (
        Verdict.ALLOW,
        None,
    )


async def test_www_authenticate_license(policy: Policy) -> None:
    view = ResponseView("http://a.example/x", 402, (("WWW-Authenticate", 'License realm="x"'),))
    found = await header_findings(view, policy, DOC, None, no_license, body_follows=False)
    assert decide(found, policy).signal == "rsl"


# -- Media metadata (§10) ------------------------------------------------------------

JPEG = [("Content-Type", "image/jpeg")]
PNG = [("Content-Type", "image/png")]


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (m.jpeg_with_xmp(m.datamining_element("DMI-PROHIBITED-AIMLTRAINING")), JPEG, Verdict.BLOCK),  # I1
        (m.jpeg_with_xmp(m.datamining_attribute("DMI-PROHIBITED")), JPEG, Verdict.BLOCK),  # I2
        (m.jpeg_with_xmp(m.datamining_element("DMI-ALLOWED")), JPEG, Verdict.ALLOW),  # I3
        (m.jpeg_with_xmp(m.datamining_element("DMI-UNSPECIFIED")), JPEG, Verdict.ALLOW),
        (
            m.jpeg_with_xmp(m.datamining_element("DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING")),
            JPEG,
            Verdict.BLOCK,
        ),  # I4
        (
            m.png_with_xmp(
                m.datamining_element("DMI-PROHIBITED-GENAIMLTRAINING"), compressed=True, after_idat=True
            ),
            PNG,
            Verdict.BLOCK,
        ),  # I5
        (m.jpeg_with_xmp(m.datamining_element("DMI-PROHIBITED", prefix="PLUS")), JPEG, Verdict.BLOCK),  # I6
        (
            m.jpeg_with_xmp(m.xmp("<plus:DataMining>Prohibited for AI/ML training</plus:DataMining>")),
            JPEG,
            Verdict.BLOCK,
        ),  # I7
        (m.base_jpeg(), JPEG, Verdict.ALLOW),  # I8
        (
            m.jpeg_with_xmp(
                b"<x:xmpmeta>broken <plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED"
            ),
            JPEG,
            Verdict.BLOCK,
        ),  # XMP will not parse: raw-bytes fallback
    ],
)
async def test_iptc_data_mining(
    policy: Policy, body: bytes, headers: list[tuple[str, str]], expected: Verdict
) -> None:
    assert (await verdict(policy, headers, body))[0] is expected


@pytest.mark.parametrize(
    ("label", "entries", "expected"),
    [
        ("cawg.training-mining", {"cawg.ai_generative_training": {"use": "notAllowed"}}, Verdict.BLOCK),  # M1
        ("c2pa.training-mining", {"c2pa.ai_training": {"use": "notAllowed"}}, Verdict.BLOCK),  # M2
        (
            "cawg.training-mining",
            {"cawg.data_mining": {"use": "constrained", "constraint_info": "https://pub.example/l.xml"}},
            Verdict.BLOCK,
        ),  # M3
        (
            "cawg.training-mining",
            {
                k: {"use": "allowed"}
                for k in (
                    "cawg.ai_generative_training",
                    "cawg.ai_training",
                    "cawg.data_mining",
                    "cawg.ai_inference",
                )
            },
            Verdict.ALLOW,
        ),  # M4
        ("cawg.training-mining", {"cawg.ai_inference": {"use": "notAllowed"}}, Verdict.ALLOW),  # M5
        (
            "c2pa.actions",
            {"c2pa.ai_training": {"use": "notAllowed"}},
            Verdict.ALLOW,
        ),  # M6: not that assertion
    ],
)
async def test_c2pa(
    policy: Policy, label: str, entries: dict[str, dict[str, object]], expected: Verdict
) -> None:
    jpeg = m.jpeg_with_c2pa(m.manifest_store(label, entries))
    png = m.png_with_c2pa(m.manifest_store(label, entries))
    assert (await verdict(policy, JPEG, jpeg))[0] is expected
    assert (await verdict(policy, PNG, png))[0] is expected


async def test_c2pa_manifest_split_across_app11_segments(policy: Policy) -> None:
    store = m.manifest_store(
        "cawg.training-mining", {"cawg.ai_training": {"use": "notAllowed"}}, padding=200_000
    )
    jpeg = m.jpeg_with_c2pa(store, segment_size=60_000)
    assert jpeg.count(b"\xff\xeb") >= 4
    assert await verdict(policy, JPEG, jpeg) == (Verdict.BLOCK, "media-metadata")


def test_c2pa_evidence_says_the_signature_was_not_checked() -> None:
    jpeg = m.jpeg_with_c2pa(
        m.manifest_store("cawg.training-mining", {"cawg.ai_training": {"use": "notAllowed"}})
    )
    found, _ = media.findings_from_body(jpeg, "ai-train", None)
    assert "signature not checked" in found[0].detail


@pytest.mark.parametrize(
    "body",
    [
        b"\x89PNG\r\n\x1a\n" + b"\xff" * 100,  # broken chunk lengths
        b"\xff\xd8\xff\xe1\xff\xff",  # segment longer than the file
        b"%PDF\n/FlateDecode stream\n" + b"\x00" * 1000,  # no PDF header: a stream that will not inflate
        m.png_with_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + b"not zlib", after_idat=False),
        b"jumd" * 1000 + b"cawg.training-mining",
    ],
)
async def test_hostile_media_never_raises(policy: Policy, body: bytes) -> None:
    assert (await verdict(policy, JPEG, body))[0] is Verdict.ALLOW


def test_zip_bomb_in_pdf_is_bounded() -> None:
    import zlib

    bomb = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)
    pdf = b"%PDF-1.7\n1 0 obj << /Filter /FlateDecode >> stream\n" + bomb + b"\nendstream"
    assert media.xmp_packets(pdf) == []


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (
            '<meta property="tdm:reservation">1</meta><meta property="tdm:policy">https://p.example/p.json</meta>',
            Verdict.BLOCK,
        ),  # EPUB 3
        ('<meta name="tdm:reservation" content="1"/>', Verdict.BLOCK),  # EPUB 2
        ('<meta property="tdm:reservation">0</meta>', Verdict.ALLOW),
        ("", Verdict.ALLOW),
    ],
)
async def test_epub_tdmrep(policy: Policy, meta: str, expected: Verdict) -> None:
    book = m.epub(meta)
    assert (await verdict(policy, [("Content-Type", "application/epub+zip")], book))[0] is expected


async def test_broken_epub_is_no_signal(policy: Policy) -> None:
    assert (await verdict(policy, [("Content-Type", "application/epub+zip")], b"PK\x03\x04broken"))[
        0
    ] is Verdict.ALLOW


async def test_c2pa_manifest_embedded_in_html(policy: Policy) -> None:
    import base64

    store = m.manifest_store("cawg.training-mining", {"cawg.ai_training": {"use": "notAllowed"}})
    page = f'<html><head><script type="application/c2pa">{base64.b64encode(store).decode()}</script></head></html>'
    assert await verdict(policy, HTML, page.encode()) == (Verdict.BLOCK, "media-metadata")
    broken = b'<html><head><script type="application/c2pa">!!not base64!!</script></head></html>'
    assert (await verdict(policy, HTML, broken))[0] is Verdict.ALLOW


def test_xml_entities_are_expanded_within_a_bound() -> None:
    from proxy.signals.htmlhead import expand_entities

    out, complete = expand_entities('<!DOCTYPE x [<!ENTITY n "no&#97;i">]><meta content="&n;">')
    assert out.endswith('content="noai">') and complete
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(9))
    doc = f"<!DOCTYPE x [{laughs}]><x>{'&l8;' * 100}</x>"
    out, complete = expand_entities(doc)
    assert len(out) <= 4 * len(doc) + 4096  # 10**8 lols declared; the bound holds
    assert out[out.index("<x>") :].startswith("<x>&l7;&l7;") and not complete


async def test_markup_that_cannot_be_read_in_full_withholds(policy: Policy) -> None:
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(9))
    body = f"<!DOCTYPE x [{laughs}]><x>{'&l8;' * 100}</x>".encode()
    view = ResponseView("http://a.example/x", 200, (("content-type", "application/xhtml+xml"),))
    found = await body_findings(view, body, "html", policy, DOC, None, no_license)
    assert decide(found, policy).verdict is Verdict.BLOCK
    assert any("could not be read in full" in f.detail for f in found)
