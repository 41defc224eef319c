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


CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

# Error codes of admission refusals (the rate-limit and budget stages) → a bounded label.
_REJECTIONS = {
    "rate_limit_exceeded": "rate_limit",
    "budget_exceeded": "budget",
    "insufficient_quota": "budget",
}


_STATUS_LABELS = {status: str(status) for status in _STATUSES}


def status_label(status: int) -> str:
    label = _STATUS_LABELS.get(status)
    if label is not None:
        return label
    return "other_4xx" if 400 <= status < 500 else "other"


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
            "Optional stages that did not run as asked: skipped (overload), failed, timed out,"
            " outside_region (cache left out to keep a request in its regions)",
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
        self.attempts = self.stats.tally(
            "gateway_upstream_attempts",
            "Tries of a deployment, by the status they ended with",
            ["provider", "deployment", "status"],
        )
        self.retries = Counter(
            "gateway_upstream_retries_total",
            "Tries of the same deployment again after a backoff",
            ["provider", "deployment"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "gateway_deployment_circuit_state",
            "Circuit breaker of each deployment: 0 closed, 1 half-open (probing), 2 open",
            ["provider", "deployment"],
            registry=registry,
        )
        self.cross_region = Counter(
            "gateway_cross_region_requests_total",
            "Requests answered by a deployment placed in another region than the router's"
            " (a failover, or a model with no deployment in the router's region)",
            ["region", "deployment_region"],
            registry=registry,
        )
        self.residency_refusals = Counter(
            "gateway_residency_refusals_total",
            "Requests refused to keep them in their regions: no_region (the key's and the team's"
            " regions have none in common), no_deployment (none of the model's deployments is in"
            " them), unavailable (those in them failed; others were not tried)",
            ["reason"],
            registry=registry,
        )
        self.cost = self.stats.tally(
            "gateway_cost",
            "What answered requests cost, in the configured price's currency (USD by convention)",
            ["model", "provider"],
        )
        self.saved_cost = self.stats.tally(
            "gateway_saved_cost",
            "What cache hits would have cost upstream",
            ["model"],
        )
        self.unpriced = self.stats.tally(
            "gateway_unpriced_requests",
            "Requests whose deployment has no configured price (their cost is unknown, not zero)",
            ["model"],
        )
        self.cache_results = self.stats.tally(
            "gateway_cache_requests",
            "Chat requests looked up in the response cache, by result: exact, semantic, miss",
            ["result"],
        )
        self.admission_rejections = self.stats.tally(
            "gateway_admission_rejections",
            "Requests refused before any upstream call by rate limits or budgets, by reason",
            ["reason"],
        )

    def record(self, ex: Exchange, latency: float, ttft: float | None) -> None:
        """Count one finished model request."""
        dep = ex.deployment
        usage = ex.usage
        self.stats.record(
            ex.endpoint,
            ex.route.model if ex.route is not None else NONE,
            dep.provider if dep is not None else NONE,
            status_label(ex.status),
            latency,
            ttft,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        stats = self.stats
        for attempt in ex.attempts:
            d = attempt.deployment
            outcome = "ok" if 200 <= attempt.status < 300 else "error"
            stats.upstream_duration(d.provider, d.name, outcome, attempt.seconds)
        if ttft is not None and dep is not None and ex.cache is None:
            stats.deployment_ttft(dep.provider, dep.name, ttft)
        if ex.status == 429 and not ex.attempts and ex.cache is None:
            self.admission_rejections.add((_REJECTIONS.get(ex.error_code or "", "other"),))

    def account(self, ex: Exchange, cost: float | None, saved: float | None, cache_enabled: bool) -> None:
        """Cost and cache outcome of a settled request (label values from configuration)."""
        if ex.route is None:
            return
        model = ex.route.model
        dep = ex.deployment
        if cost is None:
            if ex.status == 200:
                self.unpriced.add((model,))
        elif cost:
            self.cost.add((model, dep.provider if dep is not None else NONE), cost)
        if saved:
            self.saved_cost.add((model,), saved)
        if cache_enabled and ex.endpoint == "chat.completions" and (ex.cache is not None or ex.status == 200):
            self.cache_results.add((ex.cache if ex.cache in ("exact", "semantic") else "miss",))

    def attempt(self, dep: Deployment, status: int) -> None:
        self.attempts.add((dep.provider, dep.name, status_label(status)))

    def circuit(self, dep: Deployment, state: str) -> None:
        self.circuit_state.labels(dep.provider, dep.name).set(CIRCUIT_STATES[state])

    def cross_region_answer(self, dep: Deployment, local: str) -> None:
        # Both values come from the configuration (the router's region is validated at start).
        self.cross_region.labels(local, dep.config.region or NONE).inc()

    def residency_refusal(self, reason: str) -> None:
        self.residency_refusals.labels(reason).inc()

    def upstream_error(self, dep: Deployment, code: str | None) -> None:
        self.upstream_errors.labels(dep.provider, dep.name, code or NONE).inc()

    def stage_outcome(self, stage: str, outcome: str) -> None:
        self.stage_outcomes.labels(stage, outcome).inc()
