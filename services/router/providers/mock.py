"""The built-in mock provider: no network, deterministic text, honest token counts.

It is an in-process "server" speaking OpenAI's wire format (`mock://` URLs, which
the sender routes here), so a mock answer goes through the same adapter, relay and
usage accounting as one from a real host.

The reply depends only on the messages, so equal requests get equal answers.
Timing follows the deployment's `mock` settings: `ttft_ms` before the first
chunk, then `tokens_per_second`; a non-streaming answer waits `latency_ms` when
set, else the time the stream would have taken.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from multidict import CIMultiDict

from services.kernel.config import Catalog, Deployment, MockDeployment, MockParams
from services.router.providers.base import HttpRequest, HttpResponse
from services.router.providers.openai import OpenAIAdapter
from services.router.providers.sse import DONE, frame
from services.router.providers.tokens import count_messages, count_text

_WORDS = [
    "the",
    "gateway",
    "answers",
    "every",
    "request",
    "with",
    "a",
    "short",
    "deterministic",
    "reply",
    "so",
    "that",
    "tests",
    "and",
    "benchmarks",
    "see",
    "stable",
    "text",
    "token",
    "counts",
    "and",
    "timing",
    "while",
    "no",
    "real",
    "model",
    "runs",
    "behind",
    "it",
    "at",
    "all",
]


MAX_DIMENSIONS = 4096


def _seed(messages: list[dict[str, Any]]) -> bytes:
    return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()


def reply_tokens(messages: list[dict[str, Any]], limit: int) -> list[str]:
    """The reply as tokens; `len()` of it is the completion token count."""
    seed = _seed(messages)
    n = min(limit, 8 + seed[0] % 24)
    return [("" if i == 0 else " ") + _WORDS[(seed[i % 32] + i) % len(_WORDS)] for i in range(n)]


def _limit(params: MockParams, body: dict[str, Any]) -> tuple[int, bool]:
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int) and asked < params.max_tokens:
        return asked, True
    return params.max_tokens, False


def _ids() -> tuple[str, int]:
    return f"chatcmpl-mock-{uuid.uuid4().hex[:24]}", int(time.time())


def _usage_body(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 2:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(int.from_bytes(raw[2 * i : 2 * i + 2], "little") / 32767.5) - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


_JSON = CIMultiDict({"content-type": "application/json"})
_SSE = CIMultiDict({"content-type": "text/event-stream"})


def _error(status: int, message: str, param: str | None = None) -> HttpResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return HttpResponse(status, _JSON, orjson.dumps(body))


class MockStream:
    """A streaming answer produced chunk by chunk, at the configured pace."""

    def __init__(self, params: MockParams, model: str, body: dict[str, Any]) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = _SSE
        self.params = params
        self.model = model
        limit, self.truncated = _limit(params, body)
        self.messages = body["messages"]
        self.tokens = reply_tokens(self.messages, limit)

    async def chunks(self) -> AsyncIterator[bytes]:
        params = self.params
        cid, created = _ids()
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model}
        if params.ttft_ms:
            await asyncio.sleep(params.ttft_ms / 1000)
        gap = 1 / params.tokens_per_second if params.tokens_per_second else 0.0
        out = []
        for i, token in enumerate(self.tokens):
            delta: dict[str, Any] = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            out.append(frame({**base, "choices": [choice]}))
            if gap:
                yield out.pop()
                if i < len(self.tokens) - 1:
                    await asyncio.sleep(gap)
        finish = "length" if self.truncated else "stop"
        out.append(
            frame({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        )
        usage = _usage_body(count_messages(self.messages), len(self.tokens))
        out.append(frame({**base, "choices": [], "usage": usage}))
        out.append(DONE)
        yield b"".join(out)

    async def read(self, limit: int = 0) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        return None


class MockTransport:
    """The mock provider's "server": answers `mock://<deployment>/...` in-process,
    in OpenAI's wire format, so the mock exercises the same adapter as a real host."""

    def __init__(self, deployments: Mapping[str, tuple[MockParams, str]]) -> None:
        self.deployments = deployments  # deployment name → (params, upstream model name)

    def _parse(self, request: HttpRequest) -> tuple[MockParams, str, str, dict[str, Any]]:
        rest = request.url.removeprefix("mock://")
        name, _, path = rest.rpartition("/")
        if path == "completions":
            name, _, _ = name.rpartition("/")
            path = "chat/completions"
        params, model = self.deployments[name]
        return params, model, path, orjson.loads(request.body)

    async def send(self, request: HttpRequest) -> HttpResponse:
        params, model, path, body = self._parse(request)
        if path == "embeddings":
            return self._embeddings(model, body)
        if body.get("n") not in (None, 1):
            return _error(400, "the mock provider supports only n=1", "n")
        messages = body["messages"]
        limit, truncated = _limit(params, body)
        tokens = reply_tokens(messages, limit)
        delay = (
            params.latency_ms / 1000
            if params.latency_ms
            else params.ttft_ms / 1000
            + ((len(tokens) - 1) / params.tokens_per_second if params.tokens_per_second else 0.0)
        )
        if delay > 0:
            await asyncio.sleep(delay)
        cid, created = _ids()
        out = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": _usage_body(count_messages(messages), len(tokens)),
        }
        return HttpResponse(200, _JSON, orjson.dumps(out))

    async def open(self, request: HttpRequest) -> MockStream | _Answered:
        params, model, _path, body = self._parse(request)
        if body.get("n") not in (None, 1):
            return _Answered(_error(400, "the mock provider supports only n=1", "n"))
        return MockStream(params, model, body)

    def _embeddings(self, model: str, body: dict[str, Any]) -> HttpResponse:
        raw = body["input"]
        texts: list[str]
        if isinstance(raw, str):
            texts = [raw]
        elif all(isinstance(x, str) for x in raw):
            texts = list(raw)
        elif all(isinstance(x, int) for x in raw):
            texts = [" ".join(map(str, raw))]
        else:  # token arrays: embed their textual form
            texts = [" ".join(map(str, x)) if isinstance(x, list) else str(x) for x in raw]
        dimensions = body.get("dimensions") or 256
        if dimensions > MAX_DIMENSIONS:
            return _error(400, f"the mock provider makes at most {MAX_DIMENSIONS} dimensions", "dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = embedding(text, dimensions)
            value: Any = (
                base64.b64encode(array.array("f", vector).tobytes()).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_text(t) for t in texts)
        out = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return HttpResponse(200, _JSON, orjson.dumps(out))


class _Answered:
    """A complete answer presented as a stream (the mock's errors on the streaming path)."""

    def __init__(self, response: HttpResponse) -> None:
        self.status, self.headers, self.body = response.status, response.headers, response.body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    async def read(self, limit: int = 0) -> bytes:
        return self.body

    async def aclose(self) -> None:
        return None


class MockAdapter(OpenAIAdapter):
    """The OpenAI adapter, pointed at the in-process mock."""

    def _url(self, dep: Deployment, path: str) -> str:
        return f"mock://{dep.name}/{path}"

    def _headers(self, dep: Deployment) -> dict[str, str]:
        return {"content-type": "application/json"}


def mock_transport(catalog: Catalog) -> MockTransport:
    """The mock "server" for every mock deployment in the catalog."""
    return MockTransport(
        {
            dep.name: (dep.config.mock, dep.model)
            for deps in catalog.models.values()
            for dep in deps
            if isinstance(dep.config, MockDeployment)
        }
    )
