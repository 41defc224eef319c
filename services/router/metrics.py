"""The router's Prometheus metrics (one registry per app, no globals).

Every label value comes from the configuration or from a fixed set in the code,
never from what a client sent: a request for an unknown model is counted under
model `none`, so no client can create a series (2,000 random model names once grew
the page from 9 KB to 10 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.kernel.config import Deployment

if TYPE_CHECKING:
    from services.router.exchange import Exchange

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
NONE = "none"
_STATUSES = frozenset(
    {200, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 499, 500, 502, 503, 504}
)


# Error codes of admission refusals (the rate-limit and budget stages) → a bounded label.
_REJECTIONS = {
    "rate_limit_exceeded": "rate_limit",
    "budget_exceeded": "budget",
    "insufficient_quota": "budget",
}


def status_label(status: int) -> str:
    return str(status) if status in _STATUSES else ("other_4xx" if 400 <= status < 500 else "other")


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests_total",
            "Model requests answered, by endpoint, model, provider and status",
            ["endpoint", "model", "provider", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streaming: time from request to the first chunk sent",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "gateway_tokens_total",
            "Tokens by model and direction (prompt, completion)",
            ["model", "direction"],
            registry=registry,
        )
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
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Model requests being answered now", registry=registry
        )
        self.cost = Counter(
            "gateway_cost_total",
            "What answered requests cost, in the configured price's currency (USD by convention)",
            ["model", "provider"],
            registry=registry,
        )
        self.saved_cost = Counter(
            "gateway_saved_cost_total",
            "What cache hits would have cost upstream",
            ["model"],
            registry=registry,
        )
        self.unpriced = Counter(
            "gateway_unpriced_requests_total",
            "Requests whose deployment has no configured price (their cost is unknown, not zero)",
            ["model"],
            registry=registry,
        )
        self.cache_results = Counter(
            "gateway_cache_requests_total",
            "Chat requests looked up in the response cache, by result: exact, semantic, miss",
            ["result"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time of one upstream attempt, by provider, deployment and outcome (ok, error)",
            ["provider", "deployment", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.deployment_ttft = Histogram(
            "gateway_deployment_time_to_first_token_seconds",
            "Streaming: time from request to the first chunk sent, by provider and deployment",
            ["provider", "deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.admission_rejections = Counter(
            "gateway_admission_rejections_total",
            "Requests refused before any upstream call by rate limits or budgets, by reason",
            ["reason"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, str, int], tuple[Any, ...]] = {}

    def record(self, ex: Exchange, latency: float, ttft: float | None) -> None:
        """Count one finished model request. Label children are looked up once per combination."""
        model = ex.route.model if ex.route is not None else NONE
        dep = ex.deployment
        key = (ex.endpoint, model, dep.provider if dep is not None else NONE, ex.status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(key[0], model, key[2], status_label(ex.status)),
                self.duration.labels(key[0], model),
                self.ttft.labels(model),
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
            )
            self._children[key] = children
        requests, duration, ttft_hist, prompt, completion = children
        requests.inc()
        duration.observe(latency)
        if ttft is not None:
            ttft_hist.observe(ttft)
        usage = ex.usage
        if usage.prompt_tokens:
            prompt.inc(usage.prompt_tokens)
        if usage.completion_tokens:
            completion.inc(usage.completion_tokens)
        for attempt in ex.attempts:
            d = attempt.deployment
            outcome = "ok" if 200 <= attempt.status < 300 else "error"
            self.upstream_duration.labels(d.provider, d.name, outcome).observe(attempt.seconds)
        if ttft is not None and dep is not None and ex.cache is None:
            self.deployment_ttft.labels(dep.provider, dep.name).observe(ttft)
        if ex.status == 429 and not ex.attempts and ex.cache is None:
            self.admission_rejections.labels(_REJECTIONS.get(ex.error_code or "", "other")).inc()

    def account(self, ex: Exchange, cost: float | None, saved: float | None, cache_enabled: bool) -> None:
        """Cost and cache outcome of a settled request (label values from configuration)."""
        if ex.route is None:
            return
        model = ex.route.model
        dep = ex.deployment
        if cost is None:
            if ex.status == 200:
                self.unpriced.labels(model).inc()
        elif cost:
            self.cost.labels(model, dep.provider if dep is not None else NONE).inc(cost)
        if saved:
            self.saved_cost.labels(model).inc(saved)
        if cache_enabled and ex.endpoint == "chat.completions" and (ex.cache is not None or ex.status == 200):
            self.cache_results.labels(ex.cache if ex.cache in ("exact", "semantic") else "miss").inc()

    def upstream_error(self, dep: Deployment, code: str | None) -> None:
        self.upstream_errors.labels(dep.provider, dep.name, code or NONE).inc()

    def stage_outcome(self, stage: str, outcome: str) -> None:
        self.stage_outcomes.labels(stage, outcome).inc()
