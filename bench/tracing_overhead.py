"""What tracing costs per request in the settle stage, off (the default) and on.

    PYTHONPATH=. .venv/bin/python bench/tracing_overhead.py

Off, the settle stage checks one attribute; on, it writes a server span and one client
span per upstream attempt from the exchange (here to an exporter that keeps nothing,
so the figure is the SDK's work, not the network's).
"""

from __future__ import annotations

import time
import timeit

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.kernel.config import Deployment, MockDeployment, TracingConfig
from services.kernel.principal import ADMIN
from services.router.exchange import Attempt, Exchange, Route
from services.router.providers.base import Usage
from services.router.tracing import Tracing


class Discard(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def exchange() -> Exchange:
    dep = Deployment("mock-small", 0, MockDeployment(provider="mock", model="mock-small"), {})
    ex = Exchange("req-1", "chat.completions", headers={})
    ex.principal = ADMIN
    ex.route = Route("mock-small", (dep,))
    ex.body = {"model": "mock-small", "messages": [], "temperature": 0.5}
    ex.attempts = [Attempt(dep, ex.started, 200, None, 0.001)]
    ex.usage = Usage(prompt_tokens=12, completion_tokens=30)
    ex.completion = {"id": "chatcmpl-1", "model": "mock-small", "choices": [{"finish_reason": "stop"}]}
    return ex


def main() -> None:
    n = 20_000
    ex = exchange()
    end = time.perf_counter()
    simple = Tracing(TracingConfig(enabled=True), exporter=Discard())
    batched = Tracing(TracingConfig(enabled=True))  # as with an endpoint: batched, exported by a thread
    batched.provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=100_000))
    off: Tracing | None = None

    def settle_off() -> None:
        if off is not None:
            off.record(ex, end, 0.001)

    cases = {
        "off (default)": settle_off,
        "on, batched export": lambda: batched.record(ex, end, 0.001),
        "on, export in the request's settle": lambda: simple.record(ex, end, 0.001),
    }
    for label, fn in cases.items():
        fn()
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        print(f"tracing {label:<36} {best:8.3f} µs per request (best of 5 x {n:,})")
    simple.shutdown()
    batched.shutdown()


if __name__ == "__main__":
    main()
