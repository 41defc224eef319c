"""OpenTelemetry traces of model requests, with the GenAI semantic conventions.

Off by default (`tracing.enabled: false`), and then free: the tracing SDK and the
exporter are not even imported, and the settle stage skips one `None` check. On, each settled
request becomes a server span (`chat {model}` / `embeddings {model}`) from its arrival
to its end, with one client span per upstream attempt, written after the fact from
the exchange (start times and durations are recorded anyway): the request path
itself runs no tracing code. A `traceparent` header from the client makes the span
a child of the client's trace. Spans go to an OTLP/HTTP collector when
`tracing.otlp_endpoint` is set (batched, off the event loop).

Attributes (https://opentelemetry.io/docs/specs/semconv/gen-ai/): gen_ai.operation.name,
gen_ai.provider.name (and the older gen_ai.system), gen_ai.request.model,
gen_ai.response.model, gen_ai.response.id, gen_ai.response.finish_reasons,
gen_ai.usage.input_tokens / output_tokens, gen_ai.request.max_tokens / temperature /
top_p, error.type, http.response.status_code; and the gateway's own gateway.*.
No prompt or completion text is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.kernel.config import TracingConfig
from services.router.exchange import Exchange

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

_OPERATIONS = {"chat.completions": "chat", "embeddings": "embeddings"}
_NS = 1_000_000_000


class _BytesGetter:
    """Reads W3C trace context from the ASGI headers (bytes → str)."""

    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode())
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [k.decode("latin-1") for k in carrier]


class Tracing:
    """Turns settled exchanges into spans; built only when tracing is enabled."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        if exporter is not None:  # tests: every span, at once
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
        self.tracer = self.provider.get_tracer("llm-gateway.router")
        self.propagator = TraceContextTextMapPropagator()
        self.getter = _BytesGetter()
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._in_context = set_span_in_context

    def record(self, ex: Exchange, end_perf: float, cost: float | None) -> None:
        """The spans of one settled exchange (`end_perf`: its end, perf_counter clock)."""

        def wall(perf: float) -> int:
            return int((ex.created_at + (perf - ex.started)) * _NS)

        operation = _OPERATIONS.get(ex.endpoint, ex.endpoint)
        model = ex.route.model if ex.route is not None else ""
        parent = self.propagator.extract(ex.headers, getter=self.getter)  # type: ignore[arg-type]
        span = self.tracer.start_span(
            f"{operation} {model}".strip(),
            context=parent,
            kind=self._server,
            start_time=int(ex.created_at * _NS),
            attributes=self._attributes(ex, operation, model, cost),
        )
        context = self._in_context(span)
        for attempt in ex.attempts:
            dep = attempt.deployment
            child = self.tracer.start_span(
                f"{operation} {dep.model}",
                context=context,
                kind=self._client,
                start_time=wall(attempt.started),
                attributes={
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": dep.provider,
                    "gen_ai.system": dep.provider,
                    "gen_ai.request.model": dep.model,
                    "gateway.deployment": dep.name,
                    "http.response.status_code": attempt.status,
                },
            )
            if attempt.error_code or not 200 <= attempt.status < 300:
                child.set_attribute("error.type", attempt.error_code or str(attempt.status))
                child.set_status(self._error)
            child.end(end_time=wall(attempt.started + attempt.seconds))
        if ex.status >= 500:
            span.set_status(self._error)
        span.end(end_time=wall(end_perf))

    @staticmethod
    def _attributes(ex: Exchange, operation: str, model: str, cost: float | None) -> dict[str, Any]:
        dep = ex.deployment
        body = ex.body
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model or ex.requested_model,
            "gen_ai.usage.input_tokens": ex.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": ex.usage.completion_tokens,
            "http.response.status_code": ex.status,
            "gateway.request_id": ex.request_id,
            "gateway.stream": ex.stream,
            "gateway.attempts": len(ex.attempts),
        }
        if dep is not None:
            attrs |= {"gen_ai.provider.name": dep.provider, "gen_ai.system": dep.provider}
            attrs["gateway.deployment"] = dep.name
        if ex.principal is not None:
            attrs["gateway.key_id"] = ex.principal.key_id
            if ex.principal.team_id:
                attrs["gateway.team_id"] = ex.principal.team_id
        if ex.cache is not None:
            attrs["gateway.cache"] = ex.cache
        if cost is not None:
            attrs["gateway.cost"] = cost
        for name, key in (
            ("max_tokens", "gen_ai.request.max_tokens"),
            ("max_completion_tokens", "gen_ai.request.max_tokens"),
            ("temperature", "gen_ai.request.temperature"),
            ("top_p", "gen_ai.request.top_p"),
        ):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[key] = value
        completion = ex.completion
        if completion is not None:
            if isinstance(completion.get("model"), str):
                attrs["gen_ai.response.model"] = completion["model"]
            if isinstance(completion.get("id"), str):
                attrs["gen_ai.response.id"] = completion["id"]
            reasons = [
                c.get("finish_reason")
                for c in completion.get("choices") or []
                if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
            ]
            if reasons:
                attrs["gen_ai.response.finish_reasons"] = reasons
        if ex.error_code is not None:
            attrs["error.type"] = ex.error_code
        return attrs

    def shutdown(self) -> None:
        """Flush what is batched (shutdown order: after the last request settled)."""
        self.provider.shutdown()
