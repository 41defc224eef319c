"""Cohere's v2 API: `POST /v2/chat` (plain and SSE stream) and `POST /v2/embed`.

v2 chat messages are close to OpenAI's (system/user/assistant/tool roles, `tool_calls`
with JSON-string arguments, `image_url` parts); parameters are renamed (`p`, `k`,
`stop_sequences`) and the stream is Cohere's own event grammar (message-start,
content-start / delta / end, tool-call-start / delta / end, tool-plan-delta,
message-end with the finish reason and usage).
"""

from __future__ import annotations

import time
from typing import Any

from services.kernel.config import CohereDeployment, Deployment
from services.kernel.errors import GatewayError, UpstreamError
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
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "tools",
        "tool_choice",
    }
)
FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "stop",
    "TIMEOUT": "stop",
}
_RENAMED = (
    ("temperature", "temperature"),
    ("top_p", "p"),
    ("top_k", "k"),
    ("seed", "seed"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
)


def usage_of(raw: Any) -> Usage:
    raw = translation.as_dict(raw)
    tokens = raw.get("tokens") if isinstance(raw.get("tokens"), dict) else None
    billed = raw.get("billed_units") if isinstance(raw.get("billed_units"), dict) else {}
    source = tokens or billed
    return Usage(
        prompt_tokens=params.count(source.get("input_tokens")),
        completion_tokens=params.count(source.get("output_tokens")),
        cached_tokens=params.count(raw.get("cached_tokens")),
    )


def _messages(dep: Deployment, messages: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, message in enumerate(messages):
        role, param = message["role"], f"messages[{i}]"
        content = message.get("content")
        if role == "developer":
            role = "system"
        if role in ("system", "tool"):
            entry: dict[str, Any] = {"role": role, "content": params.text_of(content)}
            if role == "tool":
                entry["tool_call_id"] = message.get("tool_call_id", "")
        elif role in ("user", "assistant"):
            parts = params.parts_of(dep, content, f"{param}.content")
            only_text = all(p["type"] == "text" for p in parts)
            entry = {"role": role}
            if parts or role == "user":
                entry["content"] = "".join(p["text"] for p in parts) if only_text else parts
            if role == "assistant" and message.get("tool_calls"):
                entry["tool_calls"] = [
                    {"id": c.get("id", ""), "type": "function", "function": c.get("function") or {}}
                    for c in message["tool_calls"]
                ]
        else:
            raise params.unsupported(dep, f"{param}.role", f"role {role!r}")
        out.append(entry)
    return out


def request_body(dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
    raw: dict[str, Any] = dict(body)
    params.refuse_unknown(dep, raw, SUPPORTED)
    out: dict[str, Any] = {"model": dep.model, "messages": _messages(dep, raw["messages"]), "stream": stream}
    out.update(params.sampling(raw, "max_tokens", _RENAMED, "stop_sequences"))
    mode = params.json_mode(dep, raw)
    if mode is not None:
        out["response_format"] = {"type": "json_object"}
        if mode[0] == "json_schema":
            out["response_format"]["json_schema"] = mode[1]
    functions = params.functions_of(raw)
    if functions:
        out["tools"] = [{"type": "function", "function": f} for f in functions]
    choice = params.tool_choice_of(raw)
    if choice is not None:
        mode_, _ = choice
        if mode_ == "function":
            raise params.unsupported(dep, "tool_choice", "Cohere cannot be made to call one named function")
        if mode_ != "auto":
            out["tool_choice"] = mode_.upper()
    return out


def _calls(raw: Any) -> list[dict[str, Any]]:
    out = []
    for call in raw or ():
        function = call.get("function") or {}
        out.append(
            translation.tool_call(
                call.get("id", ""), function.get("name", ""), function.get("arguments") or "{}"
            )
        )
    return out


class CohereStreamDecoder(translation.SSEDecoder):
    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.chunks = params.ChunkMaker("", int(time.time()), dep.model)

    def _marker(self, data: bytes) -> bool:
        return data == b"[DONE]"

    def _object(self, obj: Any, out: list[ChatCompletionChunk]) -> None:
        kind = obj.get("type") if isinstance(obj, dict) else None
        delta = obj.get("delta") or {} if isinstance(obj, dict) else {}
        message = delta.get("message") or {}
        if kind == "message-start":
            self.chunks.base["id"] = str(obj.get("id", ""))
            out.append(self.chunks.delta({"role": "assistant", "content": ""}))
        elif kind == "content-delta":
            text = (message.get("content") or {}).get("text")
            if text:
                out.append(self.chunks.delta({"content": text}))
        elif kind == "tool-call-start":
            call = message.get("tool_calls") or {}
            function = call.get("function") or {}
            out.append(self.chunks.tool_start(str(call.get("id", "")), str(function.get("name", ""))))
            if function.get("arguments"):
                out.append(self.chunks.tool_arguments(function["arguments"]))
        elif kind == "tool-call-delta":
            arguments = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments")
            if arguments:
                out.append(self.chunks.tool_arguments(arguments))
        elif kind == "message-end":
            reason = delta.get("finish_reason")
            if reason == "ERROR":
                self.error = UpstreamError(f"{self.dep.name} ended the stream with an error")
                self.error.retryable = True
                return
            self.usage = usage_of(delta.get("usage"))
            out.append(self.chunks.delta({}, FINISH.get(str(reason), "stop")))
            out.append(self.chunks.usage(self.usage))
            self.done = True


class CohereAdapter:
    stream_media_type = "text/event-stream"

    def _request(self, dep: Deployment, path: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, CohereDeployment)
        headers = {"authorization": f"Bearer {dep.secrets['api_key']}"}
        return translation.json_request(dep, f"{config.base_url}/v2/{path}", payload, headers)

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        return self._request(dep, "chat", request_body(dep, body, stream=stream))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_object(dep, response)
        message = data.get("message") or {}
        text = "".join(
            c.get("text", "")
            for c in message.get("content") or ()
            if isinstance(c, dict) and c.get("type") == "text"
        )
        calls = _calls(message.get("tool_calls"))
        usage = usage_of(data.get("usage"))
        out = params.completion_body(
            str(data.get("id", "")),
            int(time.time()),
            dep.model,
            text if text or not calls else None,
            calls,
            FINISH.get(str(data.get("finish_reason")), "stop"),
            usage,
        )
        return translation.completion(out, usage)

    def chat_stream(self, dep: Deployment) -> CohereStreamDecoder:
        return CohereStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        config = dep.config
        assert isinstance(config, CohereDeployment)
        raw: dict[str, Any] = dict(body)
        params.refuse_unknown(dep, raw, {"input", "encoding_format", "dimensions"})
        value = raw["input"]
        texts = [value] if isinstance(value, str) else value
        if not all(isinstance(t, str) for t in texts):
            raise params.unsupported(dep, "input", "token arrays; send text")
        payload: dict[str, Any] = {
            "model": dep.model,
            "texts": texts,
            "input_type": config.embedding_input_type,
            "embedding_types": ["float"],
        }
        if raw.get("dimensions") is not None:
            payload["output_dimension"] = raw["dimensions"]
        return self._request(dep, "embed", payload)

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_object(dep, response)
        vectors = (data.get("embeddings") or {}).get("float")
        if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
            raise UpstreamError(f"{dep.name} answered without float embeddings")
        billed = ((data.get("meta") or {}).get("billed_units") or {}).get("input_tokens")
        tokens = params.count(billed) if billed is not None else None
        return params.embeddings_completion(dep.model, vectors, tokens)

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return translation.map_error(dep, response)
