"""SIGTERM in the middle of a stream through `python -m services gateway`: the server stops
accepting, drains, interrupts the stream, and exits within its shutdown timeout."""

import asyncio
import contextlib
import dataclasses
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from services.kernel.config import ServerConfig
from services.kernel.lifecycle import Lifecycle
from services.kernel.service import ServiceApp, build_app
from tests.conftest import MASTER_KEY
from tests.server.harness import serving
from tests.server.processes import running


@contextlib.asynccontextmanager
async def nothing(app: Starlette) -> AsyncIterator[None]:
    yield


DRAIN_S = 1.0
SHUTDOWN_TIMEOUT_S = 6.0
CONFIG = f"""
server: {{drain_s: {DRAIN_S}, shutdown_timeout_s: {SHUTDOWN_TIMEOUT_S}}}
models:
  - name: mock-long                # 8 to 31 tokens, one every 2 s: longer than the shutdown timeout
    deployments:
      - provider: mock
        model: mock-long
        mock: {{ttft_ms: 0, tokens_per_second: 0.5, max_tokens: 1000}}
"""


@dataclasses.dataclass
class Outcome:
    body: str  # what the client received of the stream
    ended_cleanly: bool  # the chunked body was complete (not cut by a closed connection)
    refused_while_streaming: bool  # a new connection was refused while the stream was open
    exit_code: int
    seconds_to_exit: float
    log: str


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    tmp_path = tmp_path_factory.mktemp("drain")
    with running(tmp_path, CONFIG) as gateway:
        body: list[str] = []
        ended = threading.Event()
        clean: list[bool] = []
        first_chunk = threading.Event()

        def stream() -> None:
            request = {
                "model": "mock-long",
                "messages": [{"role": "user", "content": "a long answer please"}],
                "stream": True,
            }
            headers = {"authorization": f"Bearer {MASTER_KEY}"}
            try:
                with httpx.stream(
                    "POST", f"{gateway.url}/v1/chat/completions", json=request, headers=headers, timeout=60
                ) as response:
                    assert response.status_code == 200
                    for text in response.iter_text():
                        body.append(text)
                        first_chunk.set()
                clean.append(True)
            except httpx.HTTPError:
                clean.append(False)
            finally:
                first_chunk.set()
                ended.set()

        client = threading.Thread(target=stream)
        client.start()
        assert first_chunk.wait(timeout=30)
        assert not ended.is_set()
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        refused = False
        while not ended.is_set() and time.monotonic() - signalled < 30:
            try:
                socket.create_connection(("127.0.0.1", gateway.port), timeout=5).close()
            except ConnectionRefusedError:
                refused = not ended.is_set()
                break
            time.sleep(0.05)
        try:
            code = gateway.proc.wait(timeout=SHUTDOWN_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - signalled
        client.join(timeout=30)
        assert code is not None, "the gateway did not exit"
        return Outcome("".join(body), clean == [True], refused, code, seconds, gateway.log_text())


def test_sigterm_stops_accepting_then_the_process_exits_in_time(outcome):
    assert outcome.refused_while_streaming
    assert outcome.exit_code in (0, -signal.SIGTERM)
    # drain_s, then the rest of shutdown_timeout_s for open connections, then the lifespan.
    assert outcome.seconds_to_exit < SHUTDOWN_TIMEOUT_S + 20
    assert "data: " in outcome.body
    assert "shutting down" in outcome.log
    assert "Application shutdown complete" in outcome.log


def test_no_traceback_is_logged_for_the_interrupted_stream(outcome):
    assert "Exception in ASGI application" not in outcome.log
    assert "Traceback" not in outcome.log


def test_the_interrupted_stream_ends_with_an_error_event_and_done(outcome):
    assert outcome.ended_cleanly
    events = [e for e in outcome.body.split("\n\n") if e.strip()]
    assert events[-1].strip() == "data: [DONE]"
    assert '"error"' in events[-2]
    assert outcome.seconds_to_exit < SHUTDOWN_TIMEOUT_S


# -- the server's side alone, with a stream that follows the Lifecycle contract ----------


def tracked_stream_app(lifecycle: Lifecycle, ticks: int) -> ServiceApp:
    """A stream of `ticks` events 50 ms apart that, interrupted by the drain, ends itself
    with an error event and [DONE], as the router is to do."""

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            with lifecycle.track():
                try:
                    for i in range(ticks):
                        yield f"data: {i}\n\n".encode()
                        await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    if not lifecycle.interrupted():
                        raise
                    yield b'data: {"error": {"message": "shutting down", "code": "server_shutdown"}}\n\n'
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return build_app("test", routes=[Route("/stream", stream)], lifespan=nothing)


def stream_then_stop(running, *, stop_after_first_chunk: bool = True) -> tuple[str, bool, bool]:
    """Read /stream; stop the server once it started. (body, ended cleanly, refused while open)"""
    chunks: list[str] = []
    started = threading.Event()
    ended = threading.Event()
    clean: list[bool] = []

    def read() -> None:
        try:
            with httpx.stream("GET", f"http://127.0.0.1:{running.port}/stream", timeout=60) as response:
                for text in response.iter_text():
                    chunks.append(text)
                    started.set()
            clean.append(True)
        except httpx.HTTPError:
            clean.append(False)
        finally:
            started.set()
            ended.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(timeout=30)
    running.server.should_exit = True  # what SIGTERM does
    refused = False
    while not ended.is_set():
        try:
            socket.create_connection(("127.0.0.1", running.port), timeout=5).close()
        except ConnectionRefusedError:
            refused = not ended.is_set()
            break
        time.sleep(0.02)
    reader.join(timeout=60)
    return "".join(chunks), clean == [True], refused


def test_the_drain_interrupts_tracked_streams_after_drain_s():
    config = ServerConfig(drain_s=0.5, shutdown_timeout_s=20)
    with serving(lambda lifecycle: tracked_stream_app(lifecycle, ticks=100_000), config) as running:
        body, clean, refused = stream_then_stop(running)
        assert refused  # no new connection once shutdown began
        assert clean  # a complete response, not a cut connection
        events = [e for e in body.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert '"server_shutdown"' in events[-2]
        assert running.lifecycle.draining


def test_a_stream_that_ends_within_drain_s_is_not_interrupted():
    config = ServerConfig(drain_s=10, shutdown_timeout_s=20)
    with serving(lambda lifecycle: tracked_stream_app(lifecycle, ticks=20), config) as running:
        body, clean, _ = stream_then_stop(running)
        assert clean
        events = [e for e in body.split("\n\n") if e]
        assert events[-2:] == ["data: 19", "data: [DONE]"]
        assert "error" not in body
