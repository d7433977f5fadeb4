"""A Scrapy downloader middleware for crawling through optout-proxy (`pip install optout-proxy[scrapy]`).

In the project's settings::

    DOWNLOADER_MIDDLEWARES = {"proxy.scrapy_middleware.OptoutDownloaderMiddleware": 600}
    OPTOUT_PROXY = "http://127.0.0.1:8080"

It sends every request through the proxy (unless the request names its own
`proxy` in `meta`), and reads the proxy's answers:

* a refusal (451 with `X-Optout-Reason`) drops the request: `IgnoreRequest`,
  which Scrapy neither retries nor logs as an error, counted in the stats as
  `optout/refused` and `optout/refused/<reason>` (e.g. `robots-txt`,
  `registry`), with the record id at DEBUG level;
* a "not now" from the proxy (429, or 503 with `X-Optout-Reason`, with
  `Retry-After`) waits as long as it says (at most `OPTOUT_RETRY_AFTER_MAX`
  seconds, default 60) and sends the request again, up to
  `OPTOUT_MAX_RETRIES` times (default 5); counted as `optout/retry_after`.

Order 600 puts it before HttpProxyMiddleware (750) on the way out, so the
proxy is set before that one reads it, and before RetryMiddleware (550) on
the way back, so a proxy's 503 waits its Retry-After instead of being retried
at once. An origin's own 429 or 503 (no `X-Optout-Reason`) is left to
Scrapy's RetryMiddleware.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import task

from proxy.fields import retry_after

REASON = b"X-Optout-Reason"
RECORD = b"X-Optout-Id"
REFUSED = 451
NOT_NOW = (429, 503)
logger = logging.getLogger(__name__)


class OptoutRefused(IgnoreRequest):
    """The proxy refused the request (an opt-out, or a limit of its own); `reason` is its code."""

    def __init__(self, reason: str, record_id: str, url: str) -> None:
        super().__init__(f"optout-proxy refused {url}: {reason} (record {record_id})")
        self.reason, self.record_id = reason, record_id


class OptoutDownloaderMiddleware:
    """Routes requests through optout-proxy and turns its refusals into dropped requests."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.proxy: str | None = settings.get("OPTOUT_PROXY") or None
        self.max_retries = settings.getint("OPTOUT_MAX_RETRIES", 5)
        self.wait_cap = settings.getfloat("OPTOUT_RETRY_AFTER_MAX", 60.0)
        assert crawler.stats is not None
        self.stats: StatsCollector = crawler.stats
        from twisted.internet import reactor

        self.reactor: Any = reactor

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> OptoutDownloaderMiddleware:
        return cls(crawler)

    def process_request(self, request: Request, spider: Spider | None = None) -> None:
        if self.proxy and "proxy" not in request.meta:
            request.meta["proxy"] = self.proxy
        return None

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        reason = response.headers.get(REASON)
        if reason is None:
            return response  # the origin's own answer, whatever its status
        code = reason.decode("latin-1")
        if response.status == REFUSED:
            self.stats.inc_value("optout/refused")
            self.stats.inc_value(f"optout/refused/{code}")
            record = (response.headers.get(RECORD) or b"-").decode("latin-1")
            logger.debug("optout-proxy refused %s: %s (record %s)", request.url, code, record)
            raise OptoutRefused(code, record, request.url)
        if response.status in NOT_NOW:
            tries = int(request.meta.get("optout_retries", 0))
            if tries >= self.max_retries:
                self.stats.inc_value("optout/gave_up")
                self.stats.inc_value(f"optout/gave_up/{code}")
                raise OptoutRefused(code, "-", request.url)
            wait = retry_after(response.headers.get(b"Retry-After"))
            wait = min(self.wait_cap, 1.0 if wait is None else wait)
            self.stats.inc_value("optout/retry_after")
            logger.debug("optout-proxy: %s for %s; again in %.1f s", code, request.url, wait)
            await maybe_deferred_to_future(task.deferLater(self.reactor, wait, lambda: None))
            again = request.replace(dont_filter=True)
            again.meta["optout_retries"] = tries + 1
            return again
        return response
