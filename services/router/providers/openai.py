"""OpenAI's wire format, for OpenAI itself and every OpenAI-compatible host
(Azure OpenAI's v1 API, Groq, Mistral, Together, DeepSeek, OpenRouter, vLLM, Ollama, …).

Requests pass through untouched except `model` (the deployment's upstream name)
and, when streaming, `stream_options.include_usage` (always asked for, so usage is
recorded; the relay drops the usage chunk again if the client did not ask for it).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Timeouts, Usage
from services.router.providers.sse import EventSplitter, data_of

MAX_TOKENS = 2**31 - 1


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_of(obj: Any) -> Usage | None:
    """OpenAI's `usage` object (with cached-prompt and reasoning details), if well-formed."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    out = Usage(prompt, completion)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        out.cached_tokens = _count(details.get("cached_tokens")) or 0
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        out.reasoning_tokens = _count(details.get("reasoning_tokens")) or 0
    return out


def summarise_body(response: HttpResponse) -> str:
    """The provider's own error message, or a short description of a body that has none
    (an HTML error page is described, not pasted)."""
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if not isinstance(message, str):
            message = data.get("message") or data.get("detail")
        if isinstance(message, str) and message:
            return message[:500]
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return f"a {kind} body of {len(response.body)} bytes"


# How providers say a prompt is too long when they have no error code for it (Anthropic,
# Gemini, Bedrock, Cohere, vLLM, ...).
_CONTEXT = re.compile(
    r"context.length|context.window|prompt is too long|input is too long|too many (input )?tokens"
    r"|maximum (context|number of tokens)|exceeds the maximum|input token count",
    re.IGNORECASE,
)


def _error_field(response: HttpResponse, name: str) -> str | None:
    """A short string field of the provider's `error` object (`code`, `param`), if any."""
    try:
        value = orjson.loads(response.body)["error"][name]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and len(value) <= 128 else None


def map_error(dep: Deployment, response: HttpResponse) -> GatewayError:
    """A provider's error answer as the client should see it."""
    status = response.status
    where = f"{dep.provider} deployment {dep.name}"
    if status in (401, 403):
        # The gateway's provider credentials are wrong: not the client's fault, never echoed,
        # and a retry by the client cannot help.
        refs = ", ".join(dep.config.secret_refs().values())
        err: GatewayError = UpstreamError(
            f"upstream rejected the gateway's credentials for {where}" + (f" (check {refs})" if refs else ""),
            code="upstream_auth_failed",
            headers={"x-should-retry": "false"},
        )
        return err
    message = summarise_body(response)
    if status == 429:
        retry_after = response.headers.get("retry-after")
        err = RateLimited(
            f"upstream rate limit for {where}: {message}",
            headers={"retry-after": retry_after} if retry_after else None,
        )
        err.retryable = True
        return err
    if status in (400, 404, 413, 422):
        code = _error_field(response, "code")
        too_long = code == "context_length_exceeded" or bool(_CONTEXT.search(message))
        err = InvalidRequest(
            f"upstream rejected the request: {message}",
            code="context_length_exceeded" if too_long else None,
            param=_error_field(response, "param"),
        )
        err.status = 413 if status == 413 else 400
        return err
    if 300 <= status < 400:
        err = UpstreamError(
            f"{where} answered with a redirect (HTTP {status}), which the gateway does not follow"
        )
        err.retryable = True
        return err
    err = UpstreamError(f"upstream returned HTTP {status} for {where}: {message}")
    err.retryable = status >= 500 or status in (408, 409)
    return err


class OpenAIStreamDecoder:
    """SSE `data:` lines of `chat.completion.chunk` objects, ending with `[DONE]`."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.done = False

    def _event(self, event: bytes, out: list[ChatCompletionChunk]) -> None:
        data = data_of(event)
        if data is None:
            return
        if data == b"[DONE]":
            self.done = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(f"{self.dep.name} sent a stream event that is not JSON")
            return
        if not isinstance(obj, dict):
            return
        if "error" in obj and not obj.get("choices"):
            error = obj["error"]
            message = error.get("message") if isinstance(error, dict) else None
            self.error = UpstreamError(
                f"upstream error during the stream from {self.dep.name}: "
                + (message[:500] if isinstance(message, str) else "no message")
            )
            return
        usage = usage_of(obj)
        if usage is not None:
            self.usage = usage
        out.append(obj)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        for event in self.splitter.feed(data):
            self._event(event, out)
        return out

    def finish(self) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        tail = self.splitter.rest().strip()
        if tail:
            self._event(tail, out)
        return out


class OpenAIAdapter:
    """The generic OpenAI-compatible adapter."""

    stream_media_type = "text/event-stream"

    def _url(self, dep: Deployment, path: str) -> str:
        base = getattr(dep.config, "base_url", None)
        return f"{base}/{path}"

    def _headers(self, dep: Deployment) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = dep.secrets.get("api_key")
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _request(self, dep: Deployment, path: str, payload: dict[str, Any]) -> HttpRequest:
        return HttpRequest(
            url=self._url(dep, path),
            headers=self._headers(dep),
            body=orjson.dumps(payload),
            timeouts=Timeouts.of(dep),
        )

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        payload: dict[str, Any] = dict(body)
        payload["model"] = dep.model
        if stream:
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return self._request(dep, "chat/completions", payload)

    def _completion(self, dep: Deployment, response: HttpResponse) -> Completion:
        try:
            data = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{dep.name} answered with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"{dep.name} answered with JSON that is not an object")
        return Completion(response.body, usage_of(data) or Usage(), data)

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        return self._completion(dep, response)

    def chat_stream(self, dep: Deployment) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        payload: dict[str, Any] = dict(body)
        payload["model"] = dep.model
        return self._request(dep, "embeddings", payload)

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        return self._completion(dep, response)

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return map_error(dep, response)
