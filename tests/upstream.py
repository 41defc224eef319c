"""A local stand-in for OpenAI's HTTP API, speaking its real wire format.

Tests point OpenAI-compatible deployments at it and check what the gateway sent
(`MockUpstream.requests`) and how the gateway relays each kind of answer. The
upstream `model` name picks the behaviour, so one server covers every case:

- `error-<status>`: that status with an OpenAI error body (429 adds `retry-after`;
  401 echoes the key it received, as a careless provider might).
- `slow`: answers only once the server stops (longer than any deployment timeout).
- `non-json`: 200 with an HTML body.
- `break-stream`: streams two chunks, then drops the connection.
- `gated-start`: sends the stream's headers, then waits for `gate(name).set()`
  before the first chunk (the same `name` and `abandoned` rules as `gated`).
- `gated`: streams the first content chunk, then waits for `gate(name).set()`,
  where `name` is the content of the last message; if the gateway hangs up
  meanwhile, `name` is added to `abandoned`.
- `usage-inline`: attaches `usage` to the finishing chunk whether or not it was
  asked for (as some OpenAI-compatible hosts do) and sends no usage-only chunk.
- `no-usage`: never reports usage, even when asked (as some self-hosted servers do).
- `echo-key-<status>`: that status with an error message quoting the whole
  Authorization header it received (`Bearer sk-...`), as careless hosts do.
- `redirect`: 307 to `/v1/elsewhere/...` on the same server; a request that follows
  it is recorded in `redirected`.
- `error-event`: streams one content chunk, then an in-band `{"error": ...}` event at
  once (the gateway sees the error before it relayed anything).
- `error-event-gated`: the same, the error only once `gate(name)` is set (the gateway
  has relayed the first chunk by then).
- anything else: a deterministic answer built from the messages.

Run it with `with run_upstream() as upstream: ...`; it serves on a free
127.0.0.1 port from a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
ERROR_STATUS = re.compile(r"^error-(\d{3})$")
ECHO_STATUS = re.compile(r"^echo-key-(\d{3})$")
RETRY_AFTER = "7"
GATE_LIMIT_S = 60.0  # a gate nobody opens ends the stream instead of hanging the suite

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid value for 'temperature': expected a number.", "invalid_request_error", "invalid_value"),
    401: ("Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "permission_denied"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", None),
    429: ("Rate limit reached for requests per minute.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream saw it: lower-cased headers and the parsed JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class StreamDropped(Exception):
    """Raised mid-stream so the server closes the connection without ending the body."""


def reply_words(messages: Any) -> list[str]:
    """The deterministic answer for `messages`, one word per streamed chunk."""
    seed = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()
    n = 3 + seed[0] % 6
    return [("" if i == 0 else " ") + WORDS[seed[i + 1] % len(WORDS)] for i in range(n)]


def prompt_tokens(messages: Any) -> int:
    text = orjson.dumps(messages).decode()
    return len(re.findall(r"\w+", text))


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic vector whose values are exact in float32, so both encodings agree."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(dimensions)]


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _json(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


class MockUpstream:
    """The app and what it has seen; `base_url` is set once the server listens."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[Received] = []
        self.abandoned: list[str] = []  # last message content of streams the gateway hung up on
        self.redirected: list[Received] = []  # requests that followed the `redirect` answer
        self.closing = threading.Event()
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/elsewhere/{path:path}", self.elsewhere, methods=["POST", "GET"]),
            ]
        )

    def gate(self, name: str) -> threading.Event:
        """The event a `gated` stream whose last message is `name` waits for."""
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def requests_for(self, model: str) -> list[Received]:
        """Requests whose body named this upstream model, oldest first."""
        return [r for r in list(self.requests) if isinstance(r.body, dict) and r.body.get("model") == model]

    def release_all(self) -> None:
        self.closing.set()
        with self._lock:
            for event in self._gates.values():
                event.set()

    async def _wait(self, event: threading.Event, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not event.is_set() and not self.closing.is_set():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return event.is_set()

    async def _receive(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            Received(
                request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body
            )
        )
        if not isinstance(body, dict):
            err = error_body(
                "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
            return None, _json(err, 400)
        model = body.get("model")
        match = ERROR_STATUS.match(model) if isinstance(model, str) else None
        if match:
            return None, self._error(int(match.group(1)), request)
        echo = ECHO_STATUS.match(model) if isinstance(model, str) else None
        if echo:
            message = f"Request rejected; you sent authorization: {request.headers.get('authorization')}"
            return None, _json(error_body(message, "invalid_request_error", None), int(echo.group(1)))
        if model == "redirect":
            target = f"{str(request.base_url).rstrip('/')}/v1/elsewhere{request.url.path.removeprefix('/v1')}"
            return None, Response(status_code=307, headers={"location": target})
        if model == "slow":
            await self._wait(self.closing, GATE_LIMIT_S)
        if model == "non-json":
            return None, Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")
        return body, None

    async def elsewhere(self, request: Request) -> Response:
        self.redirected.append(
            Received(request.method, request.url.path, dict(request.headers), await request.body())
        )
        return _json({"followed": True})

    def _error(self, status: int, request: Request) -> Response:
        message, type_, code = _ERRORS.get(status, ("Upstream failure.", "server_error", None))
        if status == 401:
            auth = request.headers.get("authorization", "")
            message = message.format(key=auth.removeprefix("Bearer "))
        headers = (
            {"retry-after": RETRY_AFTER, "x-ratelimit-remaining-requests": "0"} if status == 429 else None
        )
        return _json(error_body(message, type_, code), status, headers)

    async def chat(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        assert body is not None
        messages = body.get("messages")
        words = reply_words(messages)
        usage = {
            "prompt_tokens": prompt_tokens(messages),
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens(messages) + len(words),
        }
        if body.get("stream") is True:
            return StreamingResponse(self._stream(body, words, usage), media_type="text/event-stream")
        return _json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": "fp_upstream",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                **({} if body["model"] == "no-usage" else {"usage": usage}),
            }
        )

    async def _stream(
        self, body: dict[str, Any], words: list[str], usage: dict[str, int]
    ) -> AsyncIterator[bytes]:
        model = body["model"]
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        inline = model == "usage-inline"
        if model == "no-usage":
            include_usage = False
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_upstream",
        }
        if include_usage and not inline:
            base["usage"] = None  # OpenAI sends `"usage": null` on every chunk but the last

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        name = str(body["messages"][-1].get("content"))
        if model == "gated-start":
            yield b": waiting\n\n"  # makes the server send the headers now
            try:
                if not await self._wait(self.gate(name), GATE_LIMIT_S):
                    return
            except asyncio.CancelledError:
                self.abandoned.append(name)
                raise
        yield _sse(chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, word in enumerate(words):
            yield _sse(chunk({"content": word}))
            if i == 0 and model in ("gated", "error-event-gated"):
                try:
                    opened = await self._wait(self.gate(name), GATE_LIMIT_S)
                except asyncio.CancelledError:  # the server saw the client disconnect
                    self.abandoned.append(name)
                    raise
                if not opened:
                    return
            if i == 1 and model == "break-stream":
                raise StreamDropped("the upstream drops the connection mid-stream")
            if i == 0 and model in ("error-event", "error-event-gated"):
                yield _sse(error_body("The model is overloaded; try again.", "server_error", None))
                return
        last = chunk({}, "stop")
        if inline:
            last["usage"] = usage
        yield _sse(last)
        if include_usage and not inline:
            yield _sse({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        assert body is not None
        raw = body.get("input")
        texts = (
            [raw]
            if isinstance(raw, str)
            else [x if isinstance(x, str) else orjson.dumps(x).decode() for x in raw or []]
        )
        dimensions = body.get("dimensions") or 8
        data = []
        for i, text in enumerate(texts):
            vector = embedding(text, dimensions)
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(re.findall(r"\w+", t)) for t in texts)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _not_a_drop(record: logging.LogRecord) -> bool:
    """Keep uvicorn's log quiet about the connections dropped on purpose."""
    return not (record.exc_info and isinstance(record.exc_info[1], StreamDropped))


@contextlib.contextmanager
def run_upstream() -> Iterator[MockUpstream]:
    """Serve a `MockUpstream` on a free 127.0.0.1 port until the block ends."""
    upstream = MockUpstream()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        upstream.app,
        loop="asyncio",
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="mock-upstream", daemon=True
    )
    logging.getLogger("uvicorn.error").addFilter(_not_a_drop)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the mock upstream did not start")
            time.sleep(0.01)
        upstream.base_url = f"http://127.0.0.1:{port}/v1"
        yield upstream
    finally:
        upstream.release_all()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        logging.getLogger("uvicorn.error").removeFilter(_not_a_drop)
