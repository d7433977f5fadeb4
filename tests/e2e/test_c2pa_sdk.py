"""C2PA through a real proxy, on files signed with the C2PA SDK itself (tests/c2pa_files.py).

For each format the SDK writes that we can make here: a manifest whose
training-mining assertion says notAllowed, constrained, allowed, none at all,
an asset whose own manifest allows but whose ingredient does not, and a
signed opt-out whose file was changed after signing. The SDK validates; the
audit record says what it found.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest

from proxy.signals import c2pa_store
from tests.c2pa_files import plain, sign, training
from tests.policies import write_policy
from tests.proxyproc import ProxyProcess, raw_get
from tests.sites import Reply, Site

# Every format the SDK writes that a file can be made for here (JPEG XL and HEIC: Pillow cannot
# write them on this machine; DNG is TIFF to the SDK).
FORMATS = ("jpeg", "png", "gif", "webp", "tiff", "avif", "svg", "wav", "mp3", "flac", "mp4", "mov", "m4a",
           "avi", "pdf", "epub", "docx")  # fmt: skip


def tampered(signed: bytes) -> bytes:
    """`signed` with one byte changed where the SDK then reports a broken hash (not a lost manifest)."""
    for position in range(len(signed) // 2, len(signed), max(1, len(signed) // 60)):
        bad = bytearray(signed)
        bad[position] ^= 0x01
        try:
            store = c2pa_store.read(bytes(bad), c2pa_store.format_of(bytes(bad)) or "")
        except c2pa_store.Unreadable:
            continue
        if store is not None and store.state == "invalid":
            return bytes(bad)
    for position in range(0, len(signed) // 2, max(1, len(signed) // 60)):
        bad = bytearray(signed)
        bad[position] ^= 0x01
        with contextlib.suppress(c2pa_store.Unreadable):
            store = c2pa_store.read(bytes(bad), c2pa_store.format_of(bytes(bad)) or "")
            if store is not None and store.state == "invalid":
                return bytes(bad)
    raise AssertionError("no single-byte change left a readable but invalid manifest")


def files(fmt: str) -> dict[str, tuple[bytes, str]]:
    src, mime = plain(fmt)
    parent = sign(src, mime, [training("notAllowed")])
    return {
        "notAllowed": (parent, mime),
        "constrained": (sign(src, mime, [training("constrained")]), mime),
        "allowed": (sign(src, mime, [training("allowed")]), mime),
        "none": (sign(src, mime, []), mime),
        "ingredient": (sign(src, mime, [training("allowed")], ingredient=parent), mime),
        "tampered": (tampered(parent), mime),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, ProxyProcess, ProxyProcess]]:
    """One origin and two proxies for every format (each format's files under /FORMAT/): the
    shipped defaults, and one that ignores ingredients and invalid signatures."""
    tmp = tmp_path_factory.mktemp("c2pa")
    site = Site({"/robots.txt": Reply(200, "User-agent: *\nAllow: /\n")})
    proxies = []
    for name, keys in (
        ("default", {}),
        ("lenient", {"c2pa_ingredients": "ignore", "c2pa_invalid_signature": "ignore"}),
    ):
        (tmp / f"conf-{name}").mkdir()
        policy = write_policy(tmp / name, **keys)
        proxies.append(ProxyProcess(policy, confdir=tmp / f"conf-{name}", audit=tmp / f"{name}.jsonl"))
    yield site, proxies[0], proxies[1]
    for proxy in proxies:
        proxy.stop()
    site.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_signed_files_in_every_format(served: tuple[Site, ProxyProcess, ProxyProcess], fmt: str) -> None:
    site, default, lenient = served
    made = files(fmt)
    site.routes.update(
        {f"/{fmt}/{case}": Reply(200, body, {"Content-Type": mime}) for case, (body, mime) in made.items()}
    )
    expected = {
        # case: (status by default, status with ingredients and invalid signatures ignored)
        "notAllowed": (451, 451),
        "constrained": (451, 451),
        "allowed": (200, 200),
        "none": (200, 200),
        "ingredient": (451, 200),
        "tampered": (451, 200),
    }
    for case, (by_default, when_ignored) in expected.items():
        for proxy, status in ((default, by_default), (lenient, when_ignored)):
            raw = raw_get(proxy, site.url(f"/{fmt}/{case}"))
            assert int(raw.split(b" ", 2)[1]) == status, (fmt, case, raw[:300])
            # the signed file's own bytes (its manifest's tail) reach the client only when allowed
            assert (made[case][0][-48:] in raw) is (status == 200), (fmt, case)
    records = {
        r["url"].rsplit("/", 1)[-1]: r
        for r in default.records()
        if r["phase"] == "response" and f"/{fmt}/" in r["url"]
    }
    deciding = {case: r["evidence"][r["deciding"]]["detail"] for case, r in records.items() if r["withheld"]}
    assert "active manifest; signature untrusted" in deciding["notAllowed"]
    assert "ingredient manifest" in deciding["ingredient"]
    assert "signature invalid" in deciding["tampered"] or "signature is invalid" in deciding["tampered"]
    assert all("signature not checked" not in d for d in deciding.values())  # the SDK read every one


def test_a_store_the_sdk_cannot_read_falls_back_to_our_scan() -> None:
    from proxy.signals import media

    src, mime = plain("jpeg")
    signed = sign(src, mime, [training("notAllowed")])
    # an unknown container around the manifest store: the SDK has no format to read it as
    wrapped = b"\x00UNKNOWN-CONTAINER\x00" + signed
    found = media.c2pa_findings(wrapped, "ai-train", None)
    assert found and found[0].says.value == "disallow" and "signature not checked" in found[0].detail
    assert media.c2pa_findings(io.BytesIO(src).getvalue(), "ai-train", None) == []


@pytest.mark.parametrize("fmt", ["webp", "mp4", "pdf", "epub", "docx", "mp3"])
def test_no_single_byte_change_turns_a_signed_opt_out_into_an_allow(fmt: str) -> None:
    from proxy.signals import media

    src, mime = plain(fmt)
    signed = sign(src, mime, [training("notAllowed")])
    for pos in range(0, len(signed), max(1, len(signed) // 200)):
        bad = bytearray(signed)
        bad[pos] ^= 0x01
        found = media.c2pa_findings(bytes(bad), "ai-train", None, declared=[mime])
        # either the manifest is gone altogether, or what is left of it still withholds
        assert not found or any(f.says.value == "disallow" for f in found), (pos, [f.detail for f in found])
