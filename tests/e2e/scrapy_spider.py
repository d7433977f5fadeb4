"""A real Scrapy crawl for tests/e2e/test_scrapy.py, run in its own process (Twisted's reactor
starts once per process): python scrapy_spider.py PROXY_URL URLS_FILE OUT_JSON [extra settings JSON]."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess


class ListSpider(scrapy.Spider):
    name = "list"

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls = urls
        self.reached: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []

    async def start(self) -> Any:
        for url in self.urls:
            yield scrapy.Request(url, callback=self.parse, errback=self.failure, dont_filter=True)

    def start_requests(self) -> Any:  # Scrapy before 2.13 asks for this instead of start()
        for url in self.urls:
            yield scrapy.Request(url, callback=self.parse, errback=self.failure, dont_filter=True)

    def parse(self, response: scrapy.http.Response) -> None:
        self.reached.append({"url": response.url, "status": response.status, "body": response.text})

    def failure(self, failure: Any) -> None:
        self.failed.append({"url": failure.request.url, "type": type(failure.value).__name__})


def main() -> None:
    proxy, urls_file, out = sys.argv[1:4]
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    urls = [u for u in Path(urls_file).read_text(encoding="utf-8").split() if u]
    settings = {
        "DOWNLOADER_MIDDLEWARES": {"proxy.scrapy_middleware.OptoutDownloaderMiddleware": 600},
        "OPTOUT_PROXY": proxy,
        "ROBOTSTXT_OBEY": False,  # the proxy decides; Scrapy's own robots check would hide it
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        "CONCURRENT_REQUESTS": 4,
        "DOWNLOAD_TIMEOUT": 30,
        **extra,
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(ListSpider)
    process.crawl(crawler, urls=urls)
    process.start()
    spider = crawler.spider
    assert spider is not None and crawler.stats is not None
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"reached": spider.reached, "failed": spider.failed,  # type: ignore[attr-defined]
                   "stats": {k: v for k, v in crawler.stats.get_stats().items() if isinstance(v, int | float | str)}},
                  f, default=str)  # fmt: skip


if __name__ == "__main__":
    main()
