"""The router's Prometheus metrics (one registry per app, no globals)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.router.providers.base import Usage

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by endpoint, model, provider and status",
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
            "Upstream failures by provider and error code",
            ["provider", "code"],
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
        self._children: dict[tuple[str, str, str, int], tuple[Any, ...]] = {}

    def record(
        self,
        endpoint: str,
        model: str,
        provider: str,
        status: int,
        latency: float,
        ttft: float | None,
        usage: Usage,
    ) -> None:
        """Count one finished request. Label children are looked up once per combination."""
        key = (endpoint, model, provider, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # bounded: labels come from configured names
                self._children.clear()
            children = (
                self.requests.labels(endpoint, model, provider, str(status)),
                self.duration.labels(endpoint, model),
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
        if usage.prompt_tokens:
            prompt.inc(usage.prompt_tokens)
        if usage.completion_tokens:
            completion.inc(usage.completion_tokens)
