"""Prometheus metrics: counted always, served only when `optout_metrics` names an address.

Every metric lives in the Enforcer's own registry (no global state), so two
addons in one process, or the tests, never share counts. README.md
("Metrics") documents each one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.cache import CacheStats
from proxy.counting import OUTCOMES


class _CacheCollector(Collector):
    """Reads the origin cache's own counters at scrape time (nothing on the hot path)."""

    def __init__(self, stats: Callable[[], CacheStats], size: Callable[[], int]) -> None:
        self._stats = stats
        self._size = size

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        events = CounterMetricFamily(
            "optout_cache_events", "Origin policy-document cache events.", labels=["event"]
        )
        events.add_metric(["hit"], s.hits)
        events.add_metric(["miss"], s.misses)
        events.add_metric(["eviction"], s.evictions)
        yield events
        size = GaugeMetricFamily("optout_cache_origins", "Origins whose policy documents are cached.")
        size.add_metric([], self._size())
        yield size


class Tally:
    """A counter by label values for what every request counts: plain integers added on the event
    loop's thread (prometheus_client takes a lock and validates on every increment), read as one
    counter family at scrape time."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(self.counts.items()):  # one C-level copy: safe beside the loop's adds
            family.add_metric(list(key), value)
        return family


class _TallyCollector(Collector):
    def __init__(self, tallies: list[Tally]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Any]:
        for tally in self._tallies:
            yield tally.family()


class Metrics:
    """The proxy's counters and histograms, and the optional HTTP endpoint that serves them."""

    def __init__(self, cache_stats: Callable[[], CacheStats], cache_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Tally(
            "optout_decisions", "Decisions by phase, deciding signal, decision and whether enforced.",
            ["phase", "signal", "decision", "enforced"],
        )  # fmt: skip
        self.requests = Tally(
            "optout_requests",
            "Requests by outcome, each counted once: blocked (before the fetch), "
            "withheld (after it), delivered, would-block (monitor mode).",
            ["outcome"],
        )  # fmt: skip
        for outcome in OUTCOMES:  # every outcome is exported from the start, at 0
            self.requests.counts[(outcome,)] = 0
        self.registry.register(_TallyCollector([self.decisions, self.requests]))
        self.documents = Counter(
            "optout_documents_fetched", "Policy documents fetched, by document and outcome.",
            ["document", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.fetch_seconds = Histogram(
            "optout_fetch_seconds", "Time to fetch one origin's policy documents (concurrently).",
            registry=self.registry, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.reloads = Counter(
            "optout_policy_reloads", "Policy changes picked up from disk, by result.", ["result"],
            registry=self.registry,
        )  # fmt: skip
        self.audit_failures = Counter(
            "optout_audit_write_failures", "Audit records that could not be written (the flow got 503).",
            registry=self.registry,
        )  # fmt: skip
        self.shared_state_up = Gauge(
            "optout_shared_state_up", "1 while the shared state (Redis) answers, 0 while workers fetch "
            "and pace on their own.", registry=self.registry,
        )  # fmt: skip
        self.shared_state_up.set(1)
        self.shared_state_outages = Counter(
            "optout_shared_state_outages", "Times the shared state stopped answering.", registry=self.registry
        )
        self.registry.register(_CacheCollector(cache_stats, cache_size))
        self._server: Any = None

    def shared_state_changed(self, up: bool) -> None:
        """The shared state went down (False) or answers again (True)."""
        self.shared_state_up.set(1 if up else 0)
        if not up:
            self.shared_state_outages.inc()

    def serve(self, address: str) -> str:
        """Start the endpoint on `address` (`PORT` or `HOST:PORT`; the host defaults to 127.0.0.1)."""
        host, _, port = address.rpartition(":")
        self._server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        bound = self._server.server_address
        return f"http://{bound[0]}:{bound[1]}/metrics"

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on, while it does."""
        return int(self._server.server_address[1]) if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
