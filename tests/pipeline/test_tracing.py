"""OpenTelemetry spans of model requests: GenAI attributes, one client span per upstream
attempt, the client's trace continued, OTLP/HTTP export; and nothing at all when off."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.kernel.config import TracingConfig
from services.router import app as router_app
from services.router.tracing import Tracing
from tests.pipeline.conftest import serve_router
from tests.upstream import MockUpstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def exported():
    return InMemorySpanExporter()


async def test_spans_carry_the_genai_attributes_and_continue_the_callers_trace(
    tmp_path, upstream: MockUpstream, exported
):
    tracing = Tracing(TracingConfig(enabled=True), exporter=exported)
    stages = router_app.Stages(tracing=tracing)
    async with serve_router(tmp_path, upstream, stages=stages) as router, router.client() as http:
        body = {"model": "up-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
        response = await http.post("/v1/chat/completions", json=body, headers={"traceparent": PARENT})
        assert response.status_code == 200
        failed = {"model": "up-error-500", "messages": [{"role": "user", "content": "hi"}]}
        assert (await http.post("/v1/chat/completions", json=failed)).status_code == 502
        await router.usage.of(response.headers["x-request-id"])
    spans = exported.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["chat up-chat", "chat up-error-500"]
    ok, bad = server
    assert format(ok.context.trace_id, "032x") == TRACE_ID  # the client's trace, continued
    assert format(ok.parent.span_id, "016x") == "00f067aa0ba902b7"
    attrs = dict(ok.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "up-chat"
    assert attrs["gen_ai.response.model"] == response.json()["model"]
    assert attrs["gen_ai.response.id"] == response.json()["id"]
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["gen_ai.usage.input_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == response.json()["usage"]["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["http.response.status_code"] == 200
    assert attrs["gateway.cost"] > 0  # priced deployments in this configuration
    assert ok.end_time > ok.start_time
    [attempt] = [s for s in spans if s.parent is not None and s.parent.span_id == ok.context.span_id]
    assert attempt.kind == SpanKind.CLIENT
    assert attempt.attributes["gen_ai.request.model"] == "upstream-chat-v1"
    assert ok.start_time <= attempt.start_time <= attempt.end_time <= ok.end_time
    assert bad.status.status_code == StatusCode.ERROR
    assert bad.attributes["error.type"] == "upstream_error"
    assert all("hi" not in str(v) for s in spans for v in s.attributes.values())  # no prompt text


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.received.append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()
                outer.arrived.set()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


async def test_spans_are_exported_over_otlp_http(tmp_path, upstream: MockUpstream):
    collector = Collector()
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        tracing = Tracing(TracingConfig(enabled=True, otlp_endpoint=endpoint, service_name="gw-test"))
        stages = router_app.Stages(tracing=tracing)
        async with serve_router(tmp_path, upstream, stages=stages) as router, router.client() as http:
            body = {"model": "mock-small", "messages": [{"role": "user", "content": "x"}], "stream": True}
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        # The router's shutdown flushed the batch.
        assert collector.arrived.wait(10), "nothing reached the collector"
    finally:
        collector.shutdown()
        collector.server_close()
    request = ExportTraceServiceRequest.FromString(collector.received[0])
    [resource] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    assert service == "gw-test"
    names = [span.name for scope in resource.scope_spans for span in scope.spans]
    assert "chat mock-small" in names


def test_tracing_off_loads_no_sdk():
    """Off (the default), neither the tracing SDK nor an exporter is even imported. (The
    API package may be: redis imports it for its own, optional, instrumentation.)"""
    code = (
        "import sys, services.gateway, services.router.app, services.router.settle;"
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
