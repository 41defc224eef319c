"""Anthropic's Messages API (`POST /v1/messages`, `x-api-key`, `anthropic-version`).

OpenAI's system/developer messages become `system`; tool results become `tool_result`
blocks of a user turn (consecutive turns of one role are merged, as Anthropic wants
them alternating); images become base64 or URL sources. The stream's grammar
(message_start, content_block_start / delta / stop, message_delta, message_stop,
ping, error) is decoded into OpenAI chunks, usage included: Anthropic's
`input_tokens` excludes cache reads and writes, OpenAI's `prompt_tokens` includes
them, with `cached_tokens` the reads.
"""

from __future__ import annotations

import time
from typing import Any

from services.kernel.config import AnthropicDeployment, Deployment
from services.kernel.errors import GatewayError, InvalidRequest, UpstreamError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers import params, translation
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Usage

SUPPORTED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "metadata",
    }
)
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def usage_of(raw: Any) -> Usage:
    return translation.cache_usage(
        raw,
        prompt="input_tokens",
        completion="output_tokens",
        read="cache_read_input_tokens",
        written="cache_creation_input_tokens",
    )


def _image(media: str, data: str | None, url: str, param: str) -> dict[str, Any]:
    source = (
        {"type": "base64", "media_type": media, "data": data}
        if data is not None
        else {"type": "url", "url": url}
    )
    return {"type": "image", "source": source}


def _content(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    return translation.content_blocks(
        dep, content, param, lambda text: {"type": "text", "text": text}, _image
    )


def _tool_use(call: dict[str, Any], param: str) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": (call.get("function") or {}).get("name", ""),
        "input": params.arguments_of(call, param),
    }


def _tool_result(message: dict[str, Any], param: str) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id", ""),
        "content": params.text_of(message.get("content")),
    }


def _messages(dep: Deployment, messages: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
    system, turns = translation.turns_of(
        dep,
        messages,
        content=lambda content, param: _content(dep, content, param),
        tool_use=_tool_use,
        tool_result=_tool_result,
    )
    return ("\n\n".join(system) if system else None), turns


def request_body(dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat request as a Messages request."""
    config = dep.config
    assert isinstance(config, AnthropicDeployment)
    raw: dict[str, Any] = dict(body)
    params.refuse_unknown(dep, raw, SUPPORTED)
    system, messages = _messages(dep, raw["messages"])
    out: dict[str, Any] = {
        "model": dep.model,
        "messages": messages,
        "max_tokens": params.max_tokens(raw) or config.default_max_tokens,
    }
    if system:
        out["system"] = system
    temperature = raw.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise params.unsupported(dep, "temperature", "Anthropic takes 0 to 1")
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if raw.get(name) is not None:
            out[name] = raw[name]
    stop = params.stops(raw)
    if stop:
        out["stop_sequences"] = stop
    if params.json_mode(dep, raw) is not None:
        raise params.unsupported(dep, "response_format", "Anthropic has no JSON mode")
    functions = params.functions_of(raw)
    if functions:
        out["tools"] = [
            {
                "name": f["name"],
                "description": f.get("description", ""),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in functions
        ]
    choice = params.tool_choice_of(raw)
    if choice is not None:
        mode, tool_name = choice
        out["tool_choice"] = (
            {"type": "tool", "name": tool_name}
            if mode == "function"
            else {"type": {"required": "any"}.get(mode, mode)}
        )
    if raw.get("parallel_tool_calls") is False:
        out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    if isinstance(raw.get("user"), str):
        out["metadata"] = {"user_id": raw["user"]}
    if stream:
        out["stream"] = True
    return out


def completion_of(dep: Deployment, data: dict[str, Any]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                translation.object_tool_call(block.get("id", ""), block.get("name", ""), block.get("input"))
            )
    return params.completion_body(
        str(data.get("id", "")),
        int(time.time()),
        str(data.get("model") or dep.model),
        translation.content_of(text, calls),
        calls,
        FINISH.get(str(data.get("stop_reason")), "stop"),
        usage_of(data.get("usage")),
    )


class AnthropicStreamDecoder(translation.SSEDecoder):
    """Anthropic's SSE events as OpenAI chunks; usage from message_start and message_delta."""

    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.chunks = params.ChunkMaker("", int(time.time()), dep.model)
        self.raw_usage: dict[str, Any] = {}

    def _object(self, obj: Any, out: list[ChatCompletionChunk]) -> None:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "message_start":
            message = obj.get("message") or {}
            self.chunks.base["id"] = str(message.get("id", ""))
            self.chunks.base["model"] = str(message.get("model") or self.dep.model)
            self.raw_usage.update(message.get("usage") or {})
            out.append(self.chunks.delta({"role": "assistant", "content": ""}))
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                out.append(self.chunks.tool_start(str(block.get("id", "")), str(block.get("name", ""))))
            elif block.get("type") == "text" and block.get("text"):
                out.append(self.chunks.delta({"content": block["text"]}))
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                out.append(self.chunks.delta({"content": delta.get("text", "")}))
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                out.append(self.chunks.tool_arguments(delta["partial_json"]))
        elif kind == "message_delta":
            usage = {k: v for k, v in (obj.get("usage") or {}).items() if v is not None}
            self.raw_usage.update(usage)
            reason = (obj.get("delta") or {}).get("stop_reason")
            out.append(self.chunks.delta({}, FINISH.get(str(reason), "stop")))
        elif kind == "message_stop":
            self.usage = usage_of(self.raw_usage)
            out.append(self.chunks.usage(self.usage))
            self.done = True
        elif kind == "error":
            error = obj.get("error") or {}
            self.error = translation.stream_error(self.dep, error)
            self.error.retryable = error.get("type") in ("overloaded_error", "api_error", "rate_limit_error")


class AnthropicAdapter:
    stream_media_type = "text/event-stream"

    def _request(self, dep: Deployment, path: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, AnthropicDeployment)
        headers = {"x-api-key": dep.secrets["api_key"], "anthropic-version": config.anthropic_version}
        return translation.json_request(dep, f"{config.base_url}/v1/{path}", payload, headers)

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        return self._request(dep, "messages", request_body(dep, body, stream=stream))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_body(dep, response)
        if not isinstance(data, dict) or data.get("type") != "message":
            raise UpstreamError(f"{dep.name} answered with JSON that is not a message")
        return translation.completion(completion_of(dep, data), usage_of(data.get("usage")))

    def chat_stream(self, dep: Deployment) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        raise InvalidRequest(
            f"'{dep.public_model}' is an Anthropic model, and Anthropic has no embeddings API.", param="model"
        )

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        raise AssertionError("no embeddings request is ever made")

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return translation.map_error(dep, response)
