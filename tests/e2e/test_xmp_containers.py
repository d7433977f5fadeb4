"""XMP wherever it is: files written by ExifTool (Debian's libimage-exiftool-perl, which .ci/run
installs) in containers besides JPEG, PNG and PDF, served with their own Content-Type and with a
generic or lying one. Each carries a PLUS DataMining prohibition and must be withheld."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.policies import write_policy
from tests.proxyproc import ProxyProcess, raw_get
from tests.sites import Reply, Site

SECRET = b"XMP-CONTAINER-SECRET-51d0"
PROHIBITED = "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING"
PACKET = f"""<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>
 <rdf:Description rdf:about='' xmlns:plus='http://ns.useplus.org/ldf/xmp/1.0/'>
  <plus:DataMining>{PROHIBITED}</plus:DataMining>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
<?xpacket end='w'?>
"""

needs_exiftool = pytest.mark.skipif(
    shutil.which("exiftool") is None, reason="Debian's exiftool is not installed (.ci/run installs it)"
)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _movie(brand: bytes) -> bytes:
    """A minimal ISO BMFF file (ftyp + moov/mvhd) for ExifTool to write into."""
    mvhd = _box(b"mvhd", bytes(12) + struct.pack(">II", 1000, 0) + struct.pack(">IH", 0x00010000, 0x0100)
                + bytes(70) + struct.pack(">I", 2))  # fmt: skip
    return _box(b"ftyp", brand + struct.pack(">I", 512) + brand) + _box(b"moov", mvhd)


def written_by_exiftool(tmp: Path, name: str) -> bytes:
    """A `name` file (its suffix says the format) with our packet, written into it by ExifTool."""
    path = tmp / name
    image = Image.new("RGB", (4, 4), "red")
    if path.suffix in (".tif", ".webp", ".gif"):
        image.save(path)
    elif path.suffix == ".eps":
        path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\n%%EndComments\n0 0 moveto\n%%EOF\n")
    elif path.suffix == ".mp4":
        path.write_bytes(_movie(b"isom"))
    elif path.suffix == ".mov":
        path.write_bytes(_movie(b"qt  "))
    packet = tmp / "packet.xmp"
    packet.write_text(PACKET)
    subprocess.run(
        ["exiftool", "-q", "-q", "-overwrite_original", f"-xmp<={packet}", str(path)], check=True, timeout=60
    )
    body = path.read_bytes()
    assert b"DMI-PROHIBITED-AIMLTRAINING" in body  # ExifTool wrote it
    return body


def svg_with_metadata() -> bytes:
    """SVG carries XMP as XML inside <metadata> (no xpacket wrapper), as Illustrator and Inkscape write it."""
    inner = PACKET.split("\n", 1)[1].rsplit("<?xpacket", 1)[0]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><metadata>{inner}</metadata>'
            '<rect width="4" height="4"/></svg>').encode()  # fmt: skip


CONTAINERS = [
    ("a.tif", "image/tiff"),
    ("a.webp", "image/webp"),
    ("a.gif", "image/gif"),
    ("a.eps", "application/postscript"),
    ("a.mp4", "video/mp4"),
    ("a.mov", "video/quicktime"),
    ("a.svg", "image/svg+xml"),
    ("a.bin", "application/x-unknown"),  # a format we know nothing of, a packet inside
    ("a.xmp", "application/rdf+xml"),  # an XMP sidecar
    ("a.txt", "text/plain"),  # text that carries a packet after its first kilobyte
]


@needs_exiftool
@pytest.mark.parametrize(("name", "content_type"), CONTAINERS)
def test_xmp_in_every_container_is_read(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path, name: str,
    content_type: str,
) -> None:  # fmt: skip
    if name.endswith(".svg"):
        body = svg_with_metadata()
    elif name.endswith(".bin"):
        body = bytes(range(1, 256)) * 4 + PACKET.encode() + bytes(range(1, 256))
    elif name.endswith(".xmp"):
        body = PACKET.encode()
    elif name.endswith(".txt"):
        body = b"Plain words.\n" * 200 + PACKET.encode()
    else:
        body = written_by_exiftool(tmp_path, name)
    body += SECRET  # a marker that must never reach the client
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nAllow: /\n"),
        "/own": Reply(200, body, {"Content-Type": content_type}),
        "/generic": Reply(200, body, {"Content-Type": "application/octet-stream"}),
        "/lying": Reply(200, body, {"Content-Type": "text/plain"}),
        "/none": Reply(200, body, {}),
        "/gzipped": Reply(200, gzip.compress(body), {"Content-Type": "text/plain", "Content-Encoding": "gzip"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path / "p"))
    for path in ("/own", "/generic", "/lying", "/none", "/gzipped"):
        raw = raw_get(proxy, site.url(path))
        assert raw.split(b" ", 2)[1] == b"451", (name, path, raw[:300])
        assert SECRET not in raw
        assert b"x-optout-reason: media-metadata" in raw.lower(), (name, path)
    records = [r for r in proxy.records() if r["phase"] == "response"]
    assert len(records) == 5 and all(r["withheld"] for r in records)
    assert all("DataMining" in r["evidence"][r["deciding"]]["detail"] for r in records)
