"""The per-request metrics of the router, counted with plain integers.

Every model request updates a request counter, a latency histogram, a
time-to-first-token histogram and two token counters, and each of its upstream
tries a try counter and a duration histogram (a stream also a per-deployment
time-to-first-token histogram). With prometheus_client's metric objects that is
eight or more locked updates per request (about a tenth of the router's own CPU in
bench/); here it is a few dictionary operations on the event loop, and the
Prometheus families are built only when `/metrics` is scraped. Label values come
from the configuration and fixed sets in code only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

_K = TypeVar("_K", bound=tuple[str, ...])
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


def _observe(table: dict[_K, _Histogram], key: _K, value: float) -> None:
    hist = table.get(key)
    if hist is None:
        hist = table[key] = _Histogram()
    hist.observe(value)


def _histograms(
    name: str, documentation: str, labels: list[str], table: dict[_K, _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, hist in list(table.items()):
        family.add_metric(list(key), hist.buckets(), hist.sum)
    return family


class Tally:
    """A labelled counter kept as plain numbers: `add` is one dictionary update."""

    __slots__ = ("documentation", "labels", "name", "values")

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name = name  # without `_total`, which the exposition adds
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value)
        return family


class RequestStats(Collector):
    """Counters and histograms of finished model requests, exposed as Prometheus families."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.ttfts: dict[tuple[str], _Histogram] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.in_flight = 0
        # Upstream tries, by (provider, deployment, outcome), and first tokens by (provider, deployment).
        self.upstream: dict[tuple[str, str, str], _Histogram] = {}
        self.deployment_ttfts: dict[tuple[str, str], _Histogram] = {}
        self.tallies: list[Tally] = []

    def tally(self, name: str, documentation: str, labels: list[str]) -> Tally:
        """A counter exposed with these families (`name` without `_total`)."""
        counter = Tally(name, documentation, labels)
        self.tallies.append(counter)
        return counter

    def upstream_duration(self, provider: str, deployment: str, outcome: str, seconds: float) -> None:
        _observe(self.upstream, (provider, deployment, outcome), seconds)

    def deployment_ttft(self, provider: str, deployment: str, seconds: float) -> None:
        _observe(self.deployment_ttfts, (provider, deployment), seconds)

    def record(
        self,
        endpoint: str,
        model: str,
        provider: str,
        status: str,
        latency: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        key = (endpoint, model, provider, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        _observe(self.durations, (endpoint, model), latency)
        if ttft is not None:
            _observe(self.ttfts, (model,), ttft)
        if prompt_tokens:
            self.tokens[(model, "prompt")] = self.tokens.get((model, "prompt"), 0) + prompt_tokens
        if completion_tokens:
            self.tokens[(model, "completion")] = self.tokens.get((model, "completion"), 0) + completion_tokens

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "gateway_requests",
            "Model requests answered, by endpoint, model, provider and status",
            labels=["endpoint", "model", "provider", "status"],
        )
        for key, count in list(self.requests.items()):
            requests.add_metric(list(key), count)
        yield requests
        yield _histograms(
            "gateway_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["endpoint", "model"],
            self.durations,
        )
        yield _histograms(
            "gateway_time_to_first_token_seconds",
            "Streaming: time from request to the first chunk sent",
            ["model"],
            self.ttfts,
        )
        tokens = CounterMetricFamily(
            "gateway_tokens",
            "Tokens by model and direction (prompt, completion)",
            labels=["model", "direction"],
        )
        for labels, value in list(self.tokens.items()):
            tokens.add_metric(list(labels), value)
        yield tokens
        yield GaugeMetricFamily(
            "gateway_requests_in_flight", "Model requests being answered now", value=self.in_flight
        )
        for counter in self.tallies:
            yield counter.family()
        yield _histograms(
            "gateway_upstream_request_duration_seconds",
            "Time of one upstream attempt, by provider, deployment and outcome (ok, error)",
            ["provider", "deployment", "outcome"],
            self.upstream,
        )
        yield _histograms(
            "gateway_deployment_time_to_first_token_seconds",
            "Streaming: time from request to the first chunk sent, by provider and deployment",
            ["provider", "deployment"],
            self.deployment_ttfts,
        )
