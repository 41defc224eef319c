"""The real process server (`build_server`) on free ports, in a thread of the test process,
around small inline apps; and raw-socket helpers to misbehave as a client would."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.kernel.config import ServerConfig
from services.kernel.lifecycle import Lifecycle
from services.kernel.server import GatewayServer, ServerOptions, bind, build_server
from services.kernel.service import ServiceApp, build_app

DEADLINE_S = 30.0  # generous: a slow machine waits longer, it never fails for it


class RecordingEndpoint:
    """A raw ASGI endpoint that reads the whole body and puts every message it received
    on `messages` (a thread-safe queue: the server runs in another thread)."""

    def __init__(self) -> None:
        self.messages: queue.Queue[list[dict[str, Any]]] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: list[dict[str, Any]] = []
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        self.messages.put(seen)
        if seen[-1]["type"] == "http.disconnect":
            return  # a real app gives up here: nothing to answer
        body = orjson.dumps({"received": sum(len(m.get("body", b"")) for m in seen)})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def small_app(
    recording: RecordingEndpoint | None = None, *, extra_routes: list[Route] | None = None
) -> ServiceApp:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    routes = [Route("/hello", hello, methods=["GET"])]
    if recording is not None:
        routes.append(Route("/upload", recording, methods=["POST"]))
    return build_app("test", routes=[*routes, *(extra_routes or [])], lifespan=lifespan)


@dataclasses.dataclass
class Running:
    server: GatewayServer
    port: int
    metrics_port: int | None
    lifecycle: Lifecycle


@contextlib.contextmanager
def serving(
    app: ServiceApp | Callable[[Lifecycle], ServiceApp],
    config: ServerConfig | None = None,
    *,
    metrics_port: bool = False,
    metrics_key: str | None = None,
) -> Iterator[Running]:
    """Run `build_server` for `app` on a free port until the block ends."""
    config = config or ServerConfig()
    sock = bind("127.0.0.1", 0)
    metrics_sock = bind("127.0.0.1", 0) if metrics_port else None
    options = ServerOptions(
        service="test",
        host="127.0.0.1",
        port=sock.getsockname()[1],
        config=config,
        metrics_port=metrics_sock.getsockname()[1] if metrics_sock else None,
        metrics_key=metrics_key,
    )
    lifecycles: list[Lifecycle] = []

    def build(lifecycle: Lifecycle) -> ServiceApp:
        lifecycles.append(lifecycle)
        return app(lifecycle) if not isinstance(app, ServiceApp) else app

    server = build_server(options, build, metrics_sock=metrics_sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE_S
    while not (server.started and (metrics_sock is None or server.metrics_server is not None)):
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield Running(server, options.port, options.metrics_port, lifecycles[0])
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE_S)
        assert not thread.is_alive(), "the server did not stop"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        body = body[: int(length)]
    return RawResponse(int(status_line.split()[1]), headers, body)


def assert_openai_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
