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

import orjson

from services.kernel.config import AnthropicDeployment, Deployment
from services.kernel.errors import GatewayError, InvalidRequest, UpstreamError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers import params
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Timeouts, Usage
from services.router.providers.openai import map_error
from services.router.providers.sse import EventSplitter, data_of

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
    raw = raw if isinstance(raw, dict) else {}
    read = params.count(raw.get("cache_read_input_tokens"))
    written = params.count(raw.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=params.count(raw.get("input_tokens")) + read + written,
        completion_tokens=params.count(raw.get("output_tokens")),
        cached_tokens=read,
    )


def _content(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    blocks = []
    for j, part in enumerate(params.parts_of(dep, content, param)):
        if part["type"] == "text":
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
            continue
        media, data, url = params.image_of(dep, part, f"{param}[{j}]")
        source = (
            {"type": "base64", "media_type": media, "data": data}
            if data is not None
            else {"type": "url", "url": url}
        )
        blocks.append({"type": "image", "source": source})
    return blocks


def _messages(dep: Deployment, messages: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        role, param = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(params.text_of(message.get("content")))
        elif role == "user":
            add("user", _content(dep, message.get("content"), f"{param}.content"))
        elif role == "assistant":
            blocks = _content(dep, message.get("content"), f"{param}.content")
            for k, call in enumerate(message.get("tool_calls") or ()):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": (call.get("function") or {}).get("name", ""),
                        "input": params.arguments_of(call, f"{param}.tool_calls[{k}]"),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": params.text_of(message.get("content")),
            }
            add("user", [result])
        else:
            raise params.unsupported(dep, f"{param}.role", f"role {role!r}")
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
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
            )
    return params.completion_body(
        str(data.get("id", "")),
        int(time.time()),
        str(data.get("model") or dep.model),
        "".join(text) if text or not calls else None,
        calls,
        FINISH.get(str(data.get("stop_reason")), "stop"),
        usage_of(data.get("usage")),
    )


class AnthropicStreamDecoder:
    """Anthropic's SSE events as OpenAI chunks; usage from message_start and message_delta."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.done = False
        self.chunks = params.ChunkMaker("", int(time.time()), dep.model)
        self.raw_usage: dict[str, Any] = {}

    def _event(self, event: bytes, out: list[ChatCompletionChunk]) -> None:
        data = data_of(event)
        if data is None:
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(f"{self.dep.name} sent a stream event that is not JSON")
            self.error.retryable = True
            return
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
            raw_message = error.get("message") if isinstance(error, dict) else None
            message = raw_message if isinstance(raw_message, str) else "no message"
            self.error = UpstreamError(
                f"upstream error during the stream from {self.dep.name}: {message[:500]}"
            )
            self.error.retryable = error.get("type") in ("overloaded_error", "api_error", "rate_limit_error")

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


class AnthropicAdapter:
    stream_media_type = "text/event-stream"

    def _request(self, dep: Deployment, path: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, AnthropicDeployment)
        return HttpRequest(
            url=f"{config.base_url}/v1/{path}",
            headers={
                "content-type": "application/json",
                "x-api-key": dep.secrets["api_key"],
                "anthropic-version": config.anthropic_version,
            },
            body=orjson.dumps(payload),
            timeouts=Timeouts.of(dep),
        )

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        return self._request(dep, "messages", request_body(dep, body, stream=stream))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        try:
            data = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{dep.name} answered with a body that is not JSON") from None
        if not isinstance(data, dict) or data.get("type") != "message":
            raise UpstreamError(f"{dep.name} answered with JSON that is not a message")
        out = completion_of(dep, data)
        return Completion(orjson.dumps(out), usage_of(data.get("usage")), out)

    def chat_stream(self, dep: Deployment) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        raise InvalidRequest(
            f"'{dep.public_model}' is an Anthropic model, and Anthropic has no embeddings API.", param="model"
        )

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        raise AssertionError("no embeddings request is ever made")

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return map_error(dep, response)
