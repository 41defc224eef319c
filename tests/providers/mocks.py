"""Local stand-ins for Anthropic, Gemini, Cohere, Bedrock and Azure OpenAI, each
speaking its provider's real wire format: paths, auth headers, bodies, streams
(Anthropic's and Cohere's SSE grammars, Gemini's `alt=sse`, Bedrock's binary
event-stream) and error bodies.

The upstream model name picks the behaviour, as in tests/upstream.py:
- `error-<status>`: that status with the provider's error body (429 adds `retry-after: 3`);
- `slow-first-byte`: waits `SLOW_S` before the status line;
- `reset-mid-stream`: streams the first text piece, then drops the connection;
- `malformed-json`: 200 with a body (or stream event) that is not JSON;
- `wrong-content-type`: a stream answered as text/html;
- `flaky`: fails with 500 half the time (a seeded random sequence per server);
- anything else: a deterministic answer (`tests.upstream.reply_words`); when the request
  offers tools and the last user text mentions "weather", a call of the first tool with
  `{"city": "Paris"}`.

Usage is reported with cached-prompt and reasoning counts where the format has them,
so tests can check the mapping: `CACHED` cached prompt tokens, `THOUGHTS` thinking tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
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

from tests.providers import eventstream
from tests.upstream import MockUpstream, StreamDropped, _not_a_drop, prompt_tokens, reply_words

KEY = "sk-provider-mock-key-0123456789"
AWS_KEY_ID = "AKIAMOCKMOCKMOCK1234"
AWS_SECRET = "mock-secret-access-key-0123456789abcdef"
RETRY_AFTER = "3"
SLOW_S = 5.0
CACHED = 2
THOUGHTS = 3
_STATUS = re.compile(r"^error-(\d{3})$")


def _json(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v.get("text", "")) if isinstance(v, dict) else _text(v) for v in value)
    if isinstance(value, dict):
        return _text(value.get("text") or value.get("parts") or value.get("content") or "")
    return ""


class Answer:
    """What the mock says to one request, whatever the format."""

    def __init__(self, messages: Any, wants_tool: str | None) -> None:
        self.words = reply_words(messages)
        self.prompt = prompt_tokens(messages) + CACHED
        self.tool = wants_tool  # the name of the tool to call, if any
        self.completion = len(self.words)

    @property
    def text(self) -> str:
        return "".join(self.words)


def _wants_tool(tools: Any, last_user: str, name_of: Any) -> str | None:
    if tools and "weather" in last_user:
        return name_of(tools[0])
    return None


class ProviderMocks:
    """One Starlette app serving every format; `requests` records (path, headers, body)."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.rng = random.Random(6)
        self.closing = threading.Event()
        self.openai = MockUpstream()
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.anthropic, methods=["POST"]),
                Route("/{version}/models/{target:path}", self.gemini, methods=["POST"]),
                Route("/v2/chat", self.cohere_chat, methods=["POST"]),
                Route("/v2/embed", self.cohere_embed, methods=["POST"]),
                Route("/model/{model}/{action}", self.bedrock, methods=["POST"]),
                Route("/openai/deployments/{name}/{path:path}", self.azure, methods=["POST"]),
            ]
        )

    # -- shared ---------------------------------------------------------------------

    async def _receive(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            (request.url.path + ("?" + request.url.query if request.url.query else ""), headers, body)
        )
        return body

    async def _fault(self, model: str) -> int | None:
        """The status a fault model asks for (after its delay), or None."""
        if model == "slow-first-byte":
            deadline = time.monotonic() + SLOW_S
            while time.monotonic() < deadline and not self.closing.is_set():
                await asyncio.sleep(0.01)
        if model == "flaky" and self.rng.random() < 0.5:
            return 500
        match = _STATUS.match(model)
        return int(match.group(1)) if match else None

    @staticmethod
    def _html() -> Response:
        return Response(b"<html><body>oops</body></html>", media_type="text/html")

    # -- Anthropic ------------------------------------------------------------------

    async def anthropic(self, request: Request) -> Response:
        body = await self._receive(request)
        # Anthropic takes the key as `x-api-key` or, as its newer SDKs send it, a bearer token.
        if KEY not in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:]):
            return self._anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return self._anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        model = str(body.get("model"))
        status = await self._fault(model)
        if status is not None:
            if status == 400:
                return self._anthropic_error(
                    400, "invalid_request_error", "prompt is too long: 300000 tokens > 200000 maximum"
                )
            kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}.get(
                status, "api_error"
            )
            return self._anthropic_error(status, kind, f"mock failure {status}")
        if model == "malformed-json":
            return Response(b"{not json", media_type="application/json")
        user = [m for m in body["messages"] if m["role"] == "user"]
        answer = Answer(
            body["messages"],
            _wants_tool(body.get("tools"), _text(user[-1]["content"]) if user else "", lambda t: t["name"]),
        )
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        usage = {
            "input_tokens": answer.prompt - CACHED,
            "output_tokens": answer.completion,
            "cache_read_input_tokens": CACHED,
            "cache_creation_input_tokens": 0,
        }
        stop = "tool_use" if answer.tool else "end_turn"
        content: list[dict[str, Any]] = [{"type": "text", "text": answer.text}]
        if answer.tool:
            content.append(
                {"type": "tool_use", "id": "toolu_mock1", "name": answer.tool, "input": {"city": "Paris"}}
            )
        if not body.get("stream"):
            return _json(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        if model == "wrong-content-type":
            return self._html()

        def sse(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            start = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }
            yield sse("message_start", {"type": "message_start", "message": start})
            yield sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield sse("ping", {"type": "ping"})
            for i, word in enumerate(answer.words):
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                }
                yield sse("content_block_delta", delta)
                if i == 0 and model == "reset-mid-stream":
                    raise StreamDropped("reset")
                if i == 0 and model == "stream-error":
                    yield sse(
                        "error",
                        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                    )
                    return
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            if answer.tool:
                block = {"type": "tool_use", "id": "toolu_mock1", "name": answer.tool, "input": {}}
                yield sse(
                    "content_block_start", {"type": "content_block_start", "index": 1, "content_block": block}
                )
                for piece in ('{"city": ', '"Paris"}'):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield sse(
                        "content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta}
                    )
                yield sse("content_block_stop", {"type": "content_block_stop", "index": 1})
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": answer.completion},
            }
            yield sse("message_delta", end)
            yield sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    @staticmethod
    def _anthropic_error(status: int, kind: str, message: str) -> Response:
        headers = {"retry-after": RETRY_AFTER} if status == 429 else None
        return _json({"type": "error", "error": {"type": kind, "message": message}}, status, headers)

    # -- Gemini ---------------------------------------------------------------------

    async def gemini(self, request: Request) -> Response:
        body = await self._receive(request)
        model, _, action = request.path_params["target"].partition(":")
        if request.headers.get("x-goog-api-key") != KEY:
            return self._gemini_error(
                400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"
            )
        if not isinstance(body, dict):
            return self._gemini_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        status = await self._fault(model)
        if status is not None:
            if status == 400:
                return self._gemini_error(
                    400,
                    "The input token count (300000) exceeds the maximum number of tokens allowed (1048576).",
                    "INVALID_ARGUMENT",
                )
            text = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")
            return self._gemini_error(status, f"mock failure {status}", text)
        if model == "malformed-json":
            return Response(b"{not json", media_type="application/json")
        if action == "batchEmbedContents":
            vectors = []
            for item in body.get("requests") or ():
                text = _text(item["content"])
                size = item.get("outputDimensionality") or 8
                vectors.append({"values": [((hash(text) >> i) % 100) / 100 for i in range(size)]})
            return _json({"embeddings": vectors})
        contents = body.get("contents") or []
        users = [c for c in contents if c.get("role") == "user"]
        declarations = [d for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
        answer = Answer(
            contents,
            _wants_tool(declarations, _text(users[-1]["parts"]) if users else "", lambda d: d["name"]),
        )
        usage = {
            "promptTokenCount": answer.prompt,
            "candidatesTokenCount": answer.completion,
            "cachedContentTokenCount": CACHED,
            "thoughtsTokenCount": THOUGHTS,
            "totalTokenCount": answer.prompt + answer.completion + THOUGHTS,
        }
        parts: list[dict[str, Any]] = [{"text": answer.text}]
        if answer.tool:
            parts.append({"functionCall": {"name": answer.tool, "args": {"city": "Paris"}}})

        def response(parts: list[dict[str, Any]], finish: str | None, with_usage: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            out: dict[str, Any] = {
                "candidates": [candidate],
                "modelVersion": model,
                "responseId": "resp-mock",
            }
            if with_usage:
                out["usageMetadata"] = usage
            return out

        if action == "generateContent":
            return _json(response(parts, "STOP", True))
        if model == "wrong-content-type":
            return self._html()

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(answer.words):
                yield b"data: " + orjson.dumps(response([{"text": word}], None, False)) + b"\r\n\r\n"
                if i == 0 and model == "reset-mid-stream":
                    raise StreamDropped("reset")
            tail = (
                [{"functionCall": {"name": answer.tool, "args": {"city": "Paris"}}}]
                if answer.tool
                else [{"text": ""}]
            )
            yield b"data: " + orjson.dumps(response(tail, "STOP", True)) + b"\r\n\r\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @staticmethod
    def _gemini_error(status: int, message: str, code: str) -> Response:
        headers = {"retry-after": RETRY_AFTER} if status == 429 else None
        return _json({"error": {"code": status, "message": message, "status": code}}, status, headers)

    # -- Cohere ---------------------------------------------------------------------

    async def _cohere_check(self, request: Request) -> tuple[Any, Response | None]:
        body = await self._receive(request)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return body, _json({"message": "invalid api token"}, 401)
        if not isinstance(body, dict):
            return body, _json({"message": "invalid request: body is not JSON"}, 400)
        status = await self._fault(str(body.get("model")))
        if status is not None:
            message = (
                "too many tokens: the prompt exceeds the context length"
                if status == 400
                else f"mock failure {status}"
            )
            headers = {"retry-after": RETRY_AFTER} if status == 429 else None
            return body, _json({"message": message}, status, headers)
        if body.get("model") == "malformed-json":
            return body, Response(b"{not json", media_type="application/json")
        return body, None

    async def cohere_embed(self, request: Request) -> Response:
        body, failure = await self._cohere_check(request)
        if failure is not None:
            return failure
        size = body.get("output_dimension") or 8
        vectors = [[((hash(t) >> i) % 100) / 100 for i in range(size)] for t in body["texts"]]
        tokens = sum(len(t.split()) for t in body["texts"])
        return _json(
            {
                "id": str(uuid.uuid4()),
                "embeddings": {"float": vectors},
                "texts": body["texts"],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
                "response_type": "embeddings_by_type",
            }
        )

    async def cohere_chat(self, request: Request) -> Response:
        body, failure = await self._cohere_check(request)
        if failure is not None:
            return failure
        messages = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        answer = Answer(
            messages,
            _wants_tool(
                body.get("tools"),
                _text(users[-1].get("content")) if users else "",
                lambda t: t["function"]["name"],
            ),
        )
        usage = {
            "billed_units": {"input_tokens": answer.prompt, "output_tokens": answer.completion},
            "tokens": {"input_tokens": answer.prompt, "output_tokens": answer.completion},
            "cached_tokens": CACHED,
        }
        finish = "TOOL_CALL" if answer.tool else "COMPLETE"
        call = {
            "id": "call_mock1",
            "type": "function",
            "function": {"name": answer.tool, "arguments": '{"city": "Paris"}'},
        }
        cid = str(uuid.uuid4())
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": [{"type": "text", "text": answer.text}],
            }
            if answer.tool:
                message["tool_calls"] = [call]
                message["tool_plan"] = "I will look up the weather."
            return _json({"id": cid, "finish_reason": finish, "message": message, "usage": usage})
        if body.get("model") == "wrong-content-type":
            return self._html()

        def sse(data: dict[str, Any]) -> bytes:
            return f"event: {data['type']}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            yield sse(
                {
                    "id": cid,
                    "type": "message-start",
                    "delta": {
                        "message": {
                            "role": "assistant",
                            "content": [],
                            "tool_plan": "",
                            "tool_calls": [],
                            "citations": [],
                        }
                    },
                }
            )
            yield sse(
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "text", "text": ""}}},
                }
            )
            for i, word in enumerate(answer.words):
                yield sse(
                    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": word}}}}
                )
                if i == 0 and body.get("model") == "reset-mid-stream":
                    raise StreamDropped("reset")
            yield sse({"type": "content-end", "index": 0})
            if answer.tool:
                start = {**call, "function": {"name": answer.tool, "arguments": ""}}
                yield sse(
                    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": start}}}
                )
                for piece in ('{"city": ', '"Paris"}'):
                    yield sse(
                        {
                            "type": "tool-call-delta",
                            "index": 0,
                            "delta": {"message": {"tool_calls": {"function": {"arguments": piece}}}},
                        }
                    )
                yield sse({"type": "tool-call-end", "index": 0})
            yield sse({"id": cid, "type": "message-end", "delta": {"finish_reason": finish, "usage": usage}})

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- Bedrock --------------------------------------------------------------------

    async def bedrock(self, request: Request) -> Response:
        body = await self._receive(request)
        model, action = request.path_params["model"], request.path_params["action"]
        auth = request.headers.get("authorization", "")
        if (
            not auth.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
            or "/bedrock/aws4_request" not in auth
        ):
            return self._bedrock_error(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if not request.headers.get("x-amz-date"):
            return self._bedrock_error(403, "MissingAuthenticationTokenException", "Missing X-Amz-Date")
        if not isinstance(body, dict):
            return self._bedrock_error(400, "ValidationException", "Malformed input request")
        status = await self._fault(model)
        if status is not None:
            if status == 400:
                return self._bedrock_error(
                    400, "ValidationException", "Input is too long for requested model."
                )
            name = {429: "ThrottlingException", 503: "ServiceUnavailableException"}.get(
                status, "InternalServerException"
            )
            return self._bedrock_error(status, name, f"mock failure {status}")
        if model == "malformed-json":
            return Response(b"{not json", media_type="application/json")
        messages = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        specs = [t["toolSpec"] for t in (body.get("toolConfig") or {}).get("tools") or ()]
        answer = Answer(
            messages, _wants_tool(specs, _text(users[-1]["content"]) if users else "", lambda s: s["name"])
        )
        usage = {
            "inputTokens": answer.prompt - CACHED,
            "outputTokens": answer.completion,
            "totalTokens": answer.prompt + answer.completion,
            "cacheReadInputTokens": CACHED,
            "cacheWriteInputTokens": 0,
        }
        stop = "tool_use" if answer.tool else "end_turn"
        if action == "converse":
            content: list[dict[str, Any]] = [{"text": answer.text}]
            if answer.tool:
                content.append(
                    {
                        "toolUse": {
                            "toolUseId": "tooluse_mock1",
                            "name": answer.tool,
                            "input": {"city": "Paris"},
                        }
                    }
                )
            out = {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop,
                "usage": usage,
                "metrics": {"latencyMs": 5},
            }
            return _json(out)
        if model == "wrong-content-type":
            return self._html()

        async def frames() -> AsyncIterator[bytes]:
            yield eventstream.event("messageStart", {"role": "assistant"})
            for i, word in enumerate(answer.words):
                yield eventstream.event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}
                )
                if i == 0 and model == "reset-mid-stream":
                    raise StreamDropped("reset")
                if i == 0 and model == "stream-error":
                    yield eventstream.exception("modelStreamErrorException", "the model stopped")
                    return
            yield eventstream.event("contentBlockStop", {"contentBlockIndex": 0})
            if answer.tool:
                start = {
                    "contentBlockIndex": 1,
                    "start": {"toolUse": {"toolUseId": "tooluse_mock1", "name": answer.tool}},
                }
                yield eventstream.event("contentBlockStart", start)
                for piece in ('{"city": ', '"Paris"}'):
                    yield eventstream.event(
                        "contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}}
                    )
                yield eventstream.event("contentBlockStop", {"contentBlockIndex": 1})
            yield eventstream.event("messageStop", {"stopReason": stop})
            yield eventstream.event("metadata", {"usage": usage, "metrics": {"latencyMs": 5}})

        return StreamingResponse(frames(), media_type="application/vnd.amazon.eventstream")

    @staticmethod
    def _bedrock_error(status: int, name: str, message: str) -> Response:
        headers = {"x-amzn-errortype": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
        if status == 429:
            headers["retry-after"] = RETRY_AFTER
        return _json({"message": message}, status, headers)

    # -- Azure OpenAI ---------------------------------------------------------------

    async def azure(self, request: Request) -> Response:
        if request.headers.get("api-key") != KEY:
            await self._receive(request)
            return _json(
                {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}, 401
            )
        if not request.query_params.get("api-version"):
            await self._receive(request)
            return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
        path = request.path_params["path"]
        if path == "chat/completions":
            return await self.openai.chat(request)
        if path == "embeddings":
            return await self.openai.embeddings(request)
        return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)


@contextlib.contextmanager
def run_mocks() -> Iterator[ProviderMocks]:
    """Serve `ProviderMocks` on a free 127.0.0.1 port from a thread until the block ends."""
    mocks = ProviderMocks()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(mocks.app, loop="asyncio", log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="provider-mocks", daemon=True
    )
    logging.getLogger("uvicorn.error").addFilter(_not_a_drop)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the provider mocks did not start")
            time.sleep(0.01)
        mocks.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield mocks
    finally:
        mocks.closing.set()
        mocks.openai.release_all()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        logging.getLogger("uvicorn.error").removeFilter(_not_a_drop)
