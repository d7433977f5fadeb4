"""Scrapy, first class: a real Scrapy spider crawls real local origins through a real proxy with
our downloader middleware. Refused URLs are dropped and counted by reason, allowed pages reach the
callback, nothing is retried; a proxy's 429/503 with Retry-After is waited out, then sent again."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess
from tests.sites import Reply, Site

SPIDER = Path(__file__).with_name("scrapy_spider.py")
REPO = Path(__file__).resolve().parents[2]


def crawl(proxy_url: str, urls: list[str], tmp_path: Path, **settings: Any) -> dict[str, Any]:
    urls_file, out = tmp_path / "urls.txt", tmp_path / "crawl.json"
    urls_file.write_text("\n".join(urls))
    done = subprocess.run(
        [sys.executable, str(SPIDER), proxy_url, str(urls_file), str(out), json.dumps(settings)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    result["log"] = done.stderr
    return result


def test_a_real_spider_through_a_real_proxy(
    make_site: Callable[..., Site], make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    site = make_site({
        "/robots.txt": Reply(200, "User-agent: *\nDisallow: /private/\n"),
        **{f"/page/{i}": Reply(200, f"page {i}") for i in range(3)},
        **{f"/private/{i}": Reply(200, "secret") for i in range(2)},
        "/noai": Reply(200, "fetched, then withheld", {"X-Robots-Tag": "noai"}),
    })  # fmt: skip
    proxy = make_proxy(write_policy(tmp_path, registry=[entry("Holder One", "holder.test")]))
    allowed = [site.url(f"/page/{i}") for i in range(3)]
    refused = {site.url("/private/0"): "robots-txt", site.url("/private/1"): "robots-txt",
               site.url("/noai"): "x-robots-tag", "http://www.holder.test:9/x": "registry"}  # fmt: skip
    result = crawl(proxy.url, [*allowed, *refused], tmp_path)

    assert sorted(r["url"] for r in result["reached"]) == sorted(allowed)
    assert {r["body"] for r in result["reached"]} == {"page 0", "page 1", "page 2"}
    assert "secret" not in json.dumps(result) and "withheld" not in json.dumps(result["reached"])
    stats = result["stats"]
    assert stats["optout/refused"] == len(refused)
    assert stats["optout/refused/robots-txt"] == 2
    assert stats["optout/refused/x-robots-tag"] == 1
    assert stats["optout/refused/registry"] == 1
    assert not any(k.startswith("retry/") for k in stats)  # nothing retried
    assert stats.get("downloader/request_count") == len(allowed) + len(refused)  # each sent once
    assert {f["url"]: f["type"] for f in result["failed"]} == dict.fromkeys(refused, "OptoutRefused")
    assert " ERROR: " not in result["log"] and "Traceback" not in result["log"]  # no error noise


class NotNowProxy:
    """An HTTP proxy stand-in that answers each URL's first request 'not now' (as optout-proxy does
    when a limit of its own is reached), then 200; it notes when each request came."""

    def __init__(self, status: int, retry_after: str, times: int = 1) -> None:
        self.seen: dict[str, list[float]] = {}
        self.retry_after = retry_after
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                arrivals = owner.seen.setdefault(self.path, [])
                arrivals.append(time.monotonic())
                if len(arrivals) <= times:
                    body = b"not now"
                    self.send_response(status)
                    self.send_header("Retry-After", retry_after)
                    self.send_header("X-Optout-Reason", "fetch-capacity")
                else:
                    body = b"finally"
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def not_now(request: pytest.FixtureRequest) -> Iterator[NotNowProxy]:
    stub = NotNowProxy(*request.param)
    yield stub
    stub.server.shutdown()


@pytest.mark.parametrize("not_now", [(429, "2"), (503, "1")], indirect=True)
def test_the_proxys_retry_after_is_waited_out(not_now: NotNowProxy, tmp_path: Path) -> None:
    url = "http://origin.test/page"
    result = crawl(not_now.url, [url], tmp_path)
    assert [r["body"] for r in result["reached"]] == ["finally"]
    first, second = not_now.seen[url]
    retry_after = float(not_now.retry_after)
    assert second - first >= retry_after * 0.9, second - first
    assert result["stats"]["optout/retry_after"] == 1
    assert not any(k.startswith("retry/") for k in result["stats"])  # not also retried by Scrapy


@pytest.mark.parametrize("not_now", [(429, "0", 10)], indirect=True)
def test_it_gives_up_after_the_configured_retries(not_now: NotNowProxy, tmp_path: Path) -> None:
    url = "http://origin.test/page"
    result = crawl(not_now.url, [url], tmp_path, OPTOUT_MAX_RETRIES=2)
    assert result["reached"] == []
    assert len(not_now.seen[url]) == 3  # the first try and two more
    assert result["stats"]["optout/gave_up/fetch-capacity"] == 1
    assert [f["type"] for f in result["failed"]] == ["OptoutRefused"]
