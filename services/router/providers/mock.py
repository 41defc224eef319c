"""The built-in mock provider: no network, deterministic text, honest token counts.

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
from collections.abc import AsyncIterator
from typing import Any

import orjson

from services.kernel.config import Deployment
from services.kernel.errors import InvalidRequest
from services.router.providers.base import Completion, Usage
from services.router.providers.sse import DONE, frame
from services.router.providers.tokens import count_messages, count_text
from services.router.upstream import Upstream

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


def _limit(dep: Deployment, body: dict[str, Any]) -> tuple[int, bool]:
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int) and asked < dep.mock.max_tokens:
        return asked, True
    return dep.mock.max_tokens, False


def _check(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise InvalidRequest("the mock provider supports only n=1", param="n")


def _ids() -> tuple[str, int]:
    return f"chatcmpl-mock-{uuid.uuid4().hex[:24]}", int(time.time())


class MockStream:
    def __init__(self, dep: Deployment, body: dict[str, Any], include_usage: bool) -> None:
        self.dep = dep
        self.body = body
        self.include_usage = include_usage
        messages = body["messages"]
        limit, self.truncated = _limit(dep, body)
        self.tokens = reply_tokens(messages, limit)
        self.usage = Usage(count_messages(messages), 0)
        self.first_chunk_at: float | None = None
        self.error = None

    async def frames(self) -> AsyncIterator[bytes]:
        params = self.dep.mock
        cid, created = _ids()
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.dep.model}
        if params.ttft_ms:
            await asyncio.sleep(params.ttft_ms / 1000)
        gap = 1 / params.tokens_per_second if params.tokens_per_second else 0.0
        for i, token in enumerate(self.tokens):
            if i and gap:
                await asyncio.sleep(gap)
            delta: dict[str, Any] = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
            }
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self.usage.completion_tokens = i + 1
            yield frame(chunk)
        finish = "length" if self.truncated else "stop"
        yield frame(
            {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        )
        if self.include_usage:
            yield frame({**base, "choices": [], "usage": _usage_body(self.usage)})
        yield DONE

    async def aclose(self) -> None:
        return None


def _usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


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


class MockProvider:
    """Answers in-process; `http` is accepted for the common interface and unused."""

    async def chat(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion:
        _check(body)
        messages = body["messages"]
        limit, truncated = _limit(dep, body)
        tokens = reply_tokens(messages, limit)
        params = dep.mock
        delay = (
            params.latency_ms / 1000
            if params.latency_ms
            else params.ttft_ms / 1000
            + ((len(tokens) - 1) / params.tokens_per_second if params.tokens_per_second else 0.0)
        )
        if delay > 0:
            await asyncio.sleep(delay)
        usage = Usage(count_messages(messages), len(tokens))
        cid, created = _ids()
        body_out = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": dep.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": _usage_body(usage),
        }
        return Completion(orjson.dumps(body_out), usage)

    async def chat_stream(
        self,
        dep: Deployment,
        body: dict[str, Any],
        *,
        http: Upstream,
        include_usage: bool,
    ) -> MockStream:
        _check(body)
        return MockStream(dep, body, include_usage)

    async def embeddings(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion:
        raw = body["input"]
        texts: list[str]
        if isinstance(raw, str):
            texts = [raw]
        elif all(isinstance(x, str) for x in raw):
            texts = list(raw)
        else:  # token arrays: embed their textual form
            texts = [" ".join(map(str, x)) if isinstance(x, list) else str(x) for x in raw]
            if all(isinstance(x, int) for x in raw):
                texts = [" ".join(map(str, raw))]
        dimensions = body.get("dimensions") or 256
        if dimensions > MAX_DIMENSIONS:
            raise InvalidRequest(
                f"the mock provider makes at most {MAX_DIMENSIONS} dimensions", param="dimensions"
            )
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
            "model": dep.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Completion(orjson.dumps(out), Usage(tokens, 0))
