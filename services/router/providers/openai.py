"""OpenAI's wire format, for OpenAI itself and every OpenAI-compatible host
(Azure OpenAI's v1 API, Groq, Mistral, Together, DeepSeek, OpenRouter, vLLM, Ollama, …).

Requests pass through untouched except `model` (the deployment's upstream name)
and, when streaming, `stream_options.include_usage` (always asked for, so usage is
recorded; the relay drops the usage chunk again if the client did not ask for it).
"""

from __future__ import annotations

from typing import Any

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Usage
from services.router.providers.translation import (
    SSEDecoder,
    json_object,
    json_request,
    map_error,
    stream_error,
)

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


class OpenAIStreamDecoder(SSEDecoder):
    """SSE `data:` lines of `chat.completion.chunk` objects, ending with `[DONE]`."""

    bad_json_retryable = False
    keeps_raw = True  # OpenAI's chunks are the client's chunks

    def _marker(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self.done = True
            return True
        return False

    def _object(self, obj: Any, out: list[ChatCompletionChunk]) -> None:
        if not isinstance(obj, dict):
            return
        if "error" in obj and not obj.get("choices"):
            self.error = stream_error(self.dep, obj["error"])
            return
        usage = usage_of(obj)
        if usage is not None:
            self.usage = usage
        out.append(obj)  # type: ignore[arg-type]


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
        return json_request(dep, self._url(dep, path), payload, self._headers(dep))

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        payload: dict[str, Any] = dict(body)
        payload["model"] = dep.model
        if stream:
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return self._request(dep, "chat/completions", payload)

    def _completion(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = json_object(dep, response)
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
