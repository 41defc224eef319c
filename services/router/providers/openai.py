"""OpenAI's wire format, for OpenAI itself and every OpenAI-compatible host
(Azure OpenAI's v1 API, Groq, Mistral, Together, DeepSeek, OpenRouter, vLLM, Ollama, …).

Requests pass through untouched except `model` (the deployment's upstream name)
and, when streaming, `stream_options.include_usage` (always asked for, so usage
is recorded; the usage chunk is dropped again if the client did not ask for it).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson

from services.kernel.config import Deployment
from services.kernel.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from services.router.providers.base import Completion, Usage
from services.router.providers.sse import DONE, EventSplitter, data_of, frame
from services.router.upstream import (
    ConnectFailed,
    ConnectTimedOut,
    ReadTimedOut,
    Timeouts,
    TransportError,
    Upstream,
    UpstreamStream,
)

T = TypeVar("T")


def _headers(dep: Deployment) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if dep.api_key:
        headers["authorization"] = f"Bearer {dep.api_key}"
    return headers


def _timeouts(dep: Deployment) -> Timeouts:
    return Timeouts(read=dep.timeout_s, connect=dep.connect_timeout_s)


def _upstream_message(content: bytes) -> str:
    try:
        data = orjson.loads(content)
        message = data["error"]["message"]
        if isinstance(message, str):
            return message[:500]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return content[:200].decode("utf-8", "replace")


def upstream_error(dep: Deployment, status: int, content: bytes, retry_after: str | None) -> GatewayError:
    """Map a provider's error status to what the client should see."""
    where = f"{dep.provider} deployment of {dep.public_model!r}"
    if status in (401, 403):
        # The provider key is wrong: not the client's fault, and never echoed.
        hint = f" (check {dep.api_key_env})" if dep.api_key_env else ""
        return UpstreamError(f"upstream rejected the gateway's credentials for the {where}{hint}")
    if status == 429:
        headers = {"retry-after": retry_after} if retry_after else {}
        err: GatewayError = RateLimited(
            f"upstream rate limit for the {where}: {_upstream_message(content)}", headers=headers
        )
        err.retryable = True
        return err
    if status in (400, 404, 409, 413, 422):
        err = InvalidRequest(f"upstream rejected the request: {_upstream_message(content)}")
        err.status = 400 if status in (404, 409, 422) else status
        return err
    err = UpstreamError(f"upstream returned HTTP {status} for the {where}: {_upstream_message(content)}")
    err.retryable = status >= 500 or status == 408
    return err


def transport_error(dep: Deployment, exc: TransportError) -> GatewayError:
    where = f"{dep.provider} deployment of {dep.public_model!r}"
    if isinstance(exc, ConnectTimedOut):
        err: GatewayError = UpstreamTimeout(f"timed out connecting to the {where}")
        err.retryable = True
        return err
    if isinstance(exc, ReadTimedOut):
        return UpstreamTimeout(f"the {where} did not answer within {dep.timeout_s:g} s")
    err = UpstreamError(f"could not reach the {where}: {type(exc).__name__}")
    err.retryable = isinstance(exc, ConnectFailed)
    return err


def _usage_of(obj: Any) -> Usage | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


class OpenAIStream:
    def __init__(self, response: UpstreamStream, dep: Deployment, include_usage: bool) -> None:
        self.response = response
        self.dep = dep
        self.include_usage = include_usage
        self.usage = Usage()
        self.first_chunk_at: float | None = None
        self.error: GatewayError | None = None

    def _rewrite(self, event: bytes) -> bytes | None:
        data = data_of(event)
        if data is None or data == b"[DONE]":
            return event + b"\n\n"
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event + b"\n\n"
        if not isinstance(obj, dict):
            return event + b"\n\n"
        if self.first_chunk_at is None and obj.get("choices"):
            self.first_chunk_at = time.perf_counter()
        usage = _usage_of(obj)
        if usage is not None:
            self.usage = usage
        if self.include_usage or "usage" not in obj:
            return event + b"\n\n"
        # The gateway asked for usage; the client did not: OpenAI then sends no usage key.
        if not obj.get("choices"):
            return None  # the usage-only chunk
        del obj["usage"]
        return frame(obj)

    async def frames(self) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        try:
            async for chunk in self.response.chunks():
                out = [f for e in splitter.feed(chunk) if (f := self._rewrite(e)) is not None]
                if out:
                    yield b"".join(out)
            tail = splitter.rest().strip()
            if tail and (f := self._rewrite(tail)) is not None:
                yield f
        except TransportError as exc:
            # Headers are sent already: report in-band, as OpenAI does, and end the stream.
            self.error = transport_error(self.dep, exc)
            yield frame(self.error.body())
            yield DONE

    async def aclose(self) -> None:
        await self.response.aclose()


class OpenAIProvider:
    """The generic OpenAI-compatible adapter."""

    async def chat(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion:
        return await _post_json(dep, "chat/completions", body, http)

    async def chat_stream(
        self,
        dep: Deployment,
        body: dict[str, Any],
        *,
        http: Upstream,
        include_usage: bool,
    ) -> OpenAIStream:
        payload = dict(body)
        payload["model"] = dep.model
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options or {}), "include_usage": True}
        response = await _send(http.open_stream, dep, "chat/completions", payload)
        if response.status >= 400:
            try:
                content = await response.read()
            except TransportError:
                content = b""
            finally:
                await response.aclose()
            raise upstream_error(dep, response.status, content, response.headers.get("retry-after"))
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(
                "upstream answered a streaming request with something other than an event stream"
            )
        return OpenAIStream(response, dep, include_usage)

    async def embeddings(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion:
        return await _post_json(dep, "embeddings", body, http)


async def _send(
    method: Callable[..., Awaitable[T]], dep: Deployment, path: str, payload: dict[str, Any]
) -> T:
    """One upstream call (plain or streaming) with transport failures mapped for the client."""
    try:
        return await method(
            f"{dep.base_url}/{path}",
            content=orjson.dumps(payload),
            headers=_headers(dep),
            timeouts=_timeouts(dep),
        )
    except TransportError as exc:
        raise transport_error(dep, exc) from None


async def _post_json(dep: Deployment, path: str, body: dict[str, Any], http: Upstream) -> Completion:
    """One plain request; the answer goes back to the client byte for byte."""
    payload = dict(body)
    payload["model"] = dep.model
    response = await _send(http.post, dep, path, payload)
    if response.status >= 400:
        raise upstream_error(dep, response.status, response.content, response.headers.get("retry-after"))
    try:
        obj = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream answered with a body that is not JSON") from None
    return Completion(response.content, _usage_of(obj) or Usage())
