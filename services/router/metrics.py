"""The router's Prometheus metrics (one registry per app, no globals).

Every label value comes from the configuration or from a fixed set in the code,
never from what a client sent: a request for an unknown model is counted under
model `none`, so no client can create a series (2,000 random model names once grew
the page from 9 KB to 10 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.kernel.config import Deployment
from services.router.requeststats import RequestStats

if TYPE_CHECKING:
    from services.router.exchange import Exchange

NONE = "none"
_STATUSES = frozenset(
    {200, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 499, 500, 502, 503, 504}
)


def status_label(status: int) -> str:
    return str(status) if status in _STATUSES else ("other_4xx" if 400 <= status < 500 else "other")


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stats = RequestStats()
        registry.register(self.stats)
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures by provider, deployment and error code",
            ["provider", "deployment", "code"],
            registry=registry,
        )
        self.stage_outcomes = Counter(
            "gateway_stage_outcomes_total",
            "Optional stages that did not run as asked: skipped (overload), failed, timed out",
            ["stage", "outcome"],
            registry=registry,
        )
        self.usage_events = Counter(
            "gateway_usage_events_total",
            "Usage events by outcome: published, spooled (Redis down), replayed,"
            " dropped (Redis and the spool disk both refused, memory bound reached)",
            ["outcome"],
            registry=registry,
        )
        self.usage_failures = Counter(
            "gateway_usage_failures_total",
            "Failed usage writes by target: stream (Redis), spool (local disk)",
            ["target"],
            registry=registry,
        )
        self.usage_buffer = Gauge(
            "gateway_usage_events_buffered", "Usage events waiting to be published", registry=registry
        )
        self.helper_ready = Gauge(
            "gateway_helper_ready",
            "1 when a helper service answers its readiness probe, else 0",
            ["service"],
            registry=registry,
        )

    def record(self, ex: Exchange, latency: float, ttft: float | None) -> None:
        """Count one finished model request."""
        dep = ex.deployment
        usage = ex.usage
        self.stats.record(
            ex.endpoint,
            ex.route.model if ex.route is not None else NONE,
            dep.config.provider if dep is not None else NONE,
            status_label(ex.status),
            latency,
            ttft,
            usage.prompt_tokens,
            usage.completion_tokens,
        )

    def upstream_error(self, dep: Deployment, code: str | None) -> None:
        self.upstream_errors.labels(dep.provider, dep.name, code or NONE).inc()

    def stage_outcome(self, stage: str, outcome: str) -> None:
        self.stage_outcomes.labels(stage, outcome).inc()
