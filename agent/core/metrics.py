"""Prometheus metrics for one agent: counters the workers bump, gauges read at scrape time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """One registry per agent (tests run several agents in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sends = Counter(
            "till_agent_sends", "Send attempts by outcome", ["destination", "outcome"], registry=r
        )
        self.throttled = Counter(
            "till_agent_throttled",
            "429 answers (and 503 with Retry-After)",
            ["destination"],
            registry=r,
        )
        self.retries = Counter(
            "till_agent_retries",
            "Transient failures that will be retried",
            ["destination"],
            registry=r,
        )
        self.dead_letters = Counter(
            "till_agent_dead_letters", "Items dead-lettered", ["destination", "reason"], registry=r
        )
        self.purge_runs = Counter("till_agent_purge_runs", "Purge runs", registry=r)
        self.commit_seconds = Histogram(
            "till_agent_commit_seconds",
            "Durable commit latency of intake writes",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )

    def add_status(self, report: Callable[[], Mapping[str, Any]]) -> None:
        """Gauges from the status answer, read when Prometheus scrapes."""
        self.registry.register(_StatusCollector(report))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    def __init__(self, report: Callable[[], Mapping[str, Any]]) -> None:
        self._report = report

    def collect(self) -> Iterable[GaugeMetricFamily]:
        status = self._report()
        depth = GaugeMetricFamily("till_agent_queue_depth", "Items waiting", labels=["destination"])
        oldest = GaugeMetricFamily(
            "till_agent_queue_oldest_age_seconds",
            "Age of the oldest waiting item",
            labels=["destination"],
        )
        for d in status["destinations"]:
            depth.add_metric([d["name"]], d["depth"])
            oldest.add_metric([d["name"]], d["oldestAgeSeconds"] or 0.0)
        full = GaugeMetricFamily(
            "till_agent_store_full_in_hours",
            "At the last hour's intake rate, hours until the store is full (+Inf: not filling)",
        )
        full.add_metric([], _hours(status.get("forecast", {}).get("hoursToFull")))
        cache = status.get("contacts", {})
        size = GaugeMetricFamily("till_agent_cache_contacts", "Contacts in the local cache")
        size.add_metric([], cache.get("contacts", 0))
        lag = GaugeMetricFamily("till_agent_cache_sync_lag_seconds", "Seconds since the last sync")
        lag.add_metric([], cache.get("syncLagSeconds") or 0.0)
        yield from (depth, oldest, size, lag, full)


def _hours(value: float | None) -> float:
    return math.inf if value is None else float(value)
