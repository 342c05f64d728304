"""The service's Prometheus metrics, in a registry of their own: requests by route template and
status, stage latency, refusals, fallbacks, index reloads, the embedding cache, live events and
the user store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.recommender import Recommender


class _CacheCollector(Collector):
    """The user encoder's embedding-cache counters, read at scrape time (none without one)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def collect(self) -> Iterator[Metric]:
        stats = self.recommender.cache_stats()
        if stats is None:
            return
        lookups = CounterMetricFamily(
            "duorank_cache_lookups",
            "Embedding-cache lookups by outcome (error: Redis unreachable, computed anyway)",
            labels=["outcome"],
        )
        for outcome in ("hits", "misses", "errors", "corrupt"):
            lookups.add_metric([outcome], float(stats[outcome]))
        yield lookups
        yield GaugeMetricFamily(
            "duorank_cache_hit_ratio", "Embedding-cache hits / lookups", value=stats["hit_ratio"]
        )


class _StoreCollector(Collector):
    """User-store reads that failed, and the live events this process counts on top of its
    version's tables (none without a store)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def collect(self) -> Iterator[Metric]:
        if self.recommender.users is None:
            return
        yield CounterMetricFamily(
            "duorank_user_store_errors",
            "User-store reads that failed (Redis down, a corrupt record): the dataset's "
            "history served, or the item counts without the newest live events",
            value=float(self.recommender.store_errors),
        )
        tail = self.recommender.tail
        if tail is not None:
            yield GaugeMetricFamily(
                "duorank_live_stream_entries",
                "Live events this process has read from the events stream, counted on top of "
                "its version's tables (since the fold those were built on)",
                value=float(tail.count),
            )


class ServerMetrics:
    """The service's Prometheus metrics, in a registry of their own.

    Args:
        shared_dir: with several worker processes, the folder where prometheus_client keeps
            every worker's values (``PROMETHEUS_MULTIPROC_DIR``, set before any worker
            starts): :meth:`exposition` then sums counters and histograms over the workers.
    """

    def __init__(self, recommender: Recommender, shared_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = shared_dir
        self._version: str | None = None
        registry = self.registry
        self.requests = Counter(
            "duorank_requests",
            "Requests by route template and status",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "duorank_stage_seconds",
            "Latency per stage",
            ["stage"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rejected = Counter(
            "duorank_rejected", "Requests refused by the overload policy", registry=registry
        )
        self.version_info = Gauge(
            "duorank_index_version_info",
            "Serving index version (with several workers: 1 while any worker serves it)",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.degraded = Gauge(
            "duorank_index_degraded",
            "1 while serving an older verified version because CURRENT failed verification",
            registry=registry,
            multiprocess_mode="max",
        )
        self.worker_requests = Gauge(
            "duorank_worker_requests",
            "Requests answered by this worker process (one series per pid with several)",
            registry=registry,
            multiprocess_mode="all",
        )
        self.reloads = Counter(
            "duorank_index_reloads", "Index hot reloads by outcome", ["outcome"], registry=registry
        )
        self.fallbacks = Counter(
            "duorank_fallbacks", "Responses served by a fallback", ["kind"], registry=registry
        )
        self.events = Counter(
            "duorank_live_events",
            "Live events by outcome (duplicate: a retried delivery, accepted once before)",
            ["outcome"],
            registry=registry,
        )
        self.recommender = recommender
        registry.register(_CacheCollector(recommender))
        registry.register(_StoreCollector(recommender))

    def count(self, route: str, status: str) -> None:
        """One response of ``route`` (a template) with ``status``."""
        self.requests.labels(route, status).inc()
        self.worker_requests.inc()

    def serving(self, recommender: Recommender) -> None:
        """The version that serves, and whether it is a fallback."""
        version = recommender.index_version
        if self.shared_dir is not None and self._version not in (None, version):
            self.version_info.labels(self._version).set(0)  # the workers' files keep every label
        elif self.shared_dir is None:
            self.version_info.clear()
        self._version = version
        self.version_info.labels(version).set(1)
        self.degraded.set(1 if recommender.degraded else 0)

    def exposition(self) -> bytes:
        """The text exposition format: this process's registry, or with several workers
        every worker's values summed (and this worker's cache and store counters)."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.shared_dir))  # type: ignore[no-untyped-call]
        merged.register(_CacheCollector(self.recommender))
        merged.register(_StoreCollector(self.recommender))
        return generate_latest(merged)
