"""The cache service's Prometheus metrics and the counters it shares through storage.

Label values are fixed sets from this module, never from a request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("exact", "semantic", "miss")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "gateway_cache_lookups_total",
            "Lookups by outcome: exact hit, semantic hit, miss",
            ["outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_cache_candidates_rejected_total",
            "Semantic candidates turned down, by the stage that did (rules:<why>, model, stale)",
            ["stage"],
            registry=registry,
        )
        self.semantic_skipped = Counter(
            "gateway_cache_semantic_skipped_total",
            "Lookups that stayed exact-only, by reason (model_loading, not_text, disabled)",
            ["reason"],
            registry=registry,
        )
        self.stores = Counter(
            "gateway_cache_stores_total",
            "Answers stored, by kind (semantic, exact_only)",
            ["kind"],
            registry=registry,
        )
        self.refused = Counter(
            "gateway_cache_stores_refused_total",
            "Answers not stored, by reason",
            ["reason"],
            registry=registry,
        )
        self.evictions = Counter(
            "gateway_cache_evictions_total",
            "Entries removed by TTL or a cap (seen by this replica)",
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_cache_lookup_seconds",
            "Lookup time in the cache service, by outcome",
            ["outcome"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.index_entries = Gauge(
            "gateway_cache_index_entries", "Vectors in this replica's in-process index", registry=registry
        )
        self.index_namespaces = Gauge(
            "gateway_cache_index_namespaces", "Namespaces in this replica's index", registry=registry
        )
        self.sync_changes = Counter(
            "gateway_cache_sync_changes_total",
            "Changes applied from other replicas and rebuilds",
            ["source"],
            registry=registry,
        )
        self.sync_errors = Counter(
            "gateway_cache_sync_errors_total", "Failures following the change stream", registry=registry
        )
        self.pending: dict[str, int] = {}  # shared counters not yet added to storage
        self.totals: dict[str, int] = {}  # the same counters, this replica since start

    def count(self, name: str, value: int = 1) -> None:
        """A counter that all replicas add up in storage (read by GET /v1/cache/stats)."""
        self.pending[name] = self.pending.get(name, 0) + value
        self.totals[name] = self.totals.get(name, 0) + value

    def take(self) -> dict[str, int]:
        out, self.pending = self.pending, {}
        return out

    def give_back(self, counts: dict[str, int]) -> None:
        """Counters that could not be published, kept for the next try."""
        for name, value in counts.items():
            self.pending[name] = self.pending.get(name, 0) + value
