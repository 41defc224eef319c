"""Anthropic's Messages format at the gateway's door: `POST /v1/messages` and
`/v1/messages/count_tokens`, for any configured model.

A Messages request becomes the gateway's OpenAI-shaped chat request (so it takes the
same path: authenticate, resolve, admit, cache, call, settle, with the same usage
events and limits); the answer, its stream and errors are written back in Anthropic's
format. Fields that cannot be carried to every provider are refused with a 400 naming
the field, never dropped. The key may come as `x-api-key` (what Anthropic's SDKs send)
or as a bearer token.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson

from services.kernel.errors import GatewayError, InvalidRequest
from services.kernel.wire import ChatCompletionChunk
from services.router.providers.base import Completion

if TYPE_CHECKING:  # the dialect module imports this one
    from services.router.dialect import RawFrames

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
    }
)


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _text_of(blocks: Any, param: str) -> str:
    """A `system` prompt or a tool result: a string or text blocks."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"'{param}' must be a string or an array of text blocks.", param)
    parts = []
    for i, block in enumerate(blocks):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise _bad(f"'{param}[{i}]' must be a text block.", f"{param}[{i}]")
        parts.append(block["text"])
    return "\n".join(parts)


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"'{param}.source' must be a base64 or url image source.", f"{param}.source")


def _message(i: int, message: Any) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages (tool results become `tool` messages)."""
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _bad(f"'{param}' must be an object.", param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"'{param}.role' must be 'user' or 'assistant'.", f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"'{param}.content' must be a string or an array of blocks.", f"{param}.content")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image(block, where))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad(f"'{where}' needs a string 'id' and 'name'.", where)
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"'{where}.tool_use_id' must be a string.", f"{where}.tool_use_id")
            text = _text_of(block.get("content", ""), f"{where}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        else:
            raise _bad(
                f"'{where}': a block of type {str(kind)[:40]!r} is not supported here.", f"{where}.type"
            )
    out: list[dict[str, Any]] = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        entry: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad(f"'tools[{i}]' must be an object with a 'name'.", f"tools[{i}]")
        if tool.get("type") not in (None, "custom"):
            raise _bad(
                f"'tools[{i}]': server tools are not supported through the gateway.", f"tools[{i}].type"
            )
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise _bad("'tool_choice' must be an object.", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("'tool_choice.type' must be auto, any, tool (with a name) or none.", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        body["parallel_tool_calls"] = False


def to_chat(body: dict[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """A Messages request as an OpenAI chat request."""
    for name in body:
        if name not in _KNOWN:
            raise _bad(f"'{name[:64]}' is not supported by the gateway's Messages endpoint.", name[:64])
    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    if "system" in body:
        messages.append({"role": "system", "content": _text_of(body["system"], "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array.", "messages")
    for i, message in enumerate(raw):
        messages.extend(_message(i, message))
    out["messages"] = messages
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not counting:
        raise _bad("'max_tokens' is required.", "max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not 0 <= temperature <= 1
        ):
            raise _bad("'temperature' must be a number from 0 to 1.", "temperature")
        out["temperature"] = temperature
    for name in ("top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("top_k") is not None:
        # Not an OpenAI field: carried as an extension the adapters of providers that
        # have it translate (an OpenAI upstream judges it itself).
        out["top_k"] = body["top_k"]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("'stop_sequences' must be an array of strings.", "stop_sequences")
        out["stop"] = stops
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("'metadata' must be an object.", "metadata")
        if isinstance(metadata.get("user_id"), str):
            out["user"] = metadata["user_id"]
    if body.get("tools") is not None:
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    return out


def _message_id(completion_id: Any) -> str:
    return (
        f"msg_{completion_id}"
        if isinstance(completion_id, str) and completion_id
        else f"msg_{uuid.uuid4().hex}"
    )


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0 if isinstance(details, dict) else 0
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}  # a model that wrote invalid JSON: kept, not lost
    return value if isinstance(value, dict) else {"value": value}


def to_message(completion: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `chat.completion` as an Anthropic `message`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": _input(function.get("arguments", "")),
            }
        )
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStreamWriter:
    """OpenAI chunks as Anthropic's event grammar: message_start, content_block_start /
    delta / stop per text or tool_use block, message_delta (stop reason, usage), message_stop."""

    def __init__(self) -> None:
        self.started = False
        self.block: int = -1  # index of the open block
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool call index → block index
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = _usage(None)
        self.failed = False

    def _start(self, chunk: ChatCompletionChunk | None) -> bytes:
        self.started = True
        head: dict[str, Any] = dict(chunk or {})
        message: dict[str, Any] = {
            "id": _message_id(head.get("id")),
            "type": "message",
            "role": "assistant",
            "model": head.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.block_kind is None:
            return b""
        self.block_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block += 1
        self.block_kind = kind
        start = {"type": "content_block_start", "index": self.block, "content_block": block}
        return out + _event("content_block_start", start)

    def chunks(self, chunks: list[ChatCompletionChunk], raw: RawFrames | None = None) -> bytes:
        out = []
        for chunk in chunks:
            if not self.started:
                out.append(self._start(chunk))
            if chunk.get("usage"):
                self.usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # Messages has one answer per request
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    if self.block_kind != "text":
                        out.append(self._open("text", {"type": "text", "text": ""}))
                    data = {"type": "text_delta", "text": text}
                    out.append(
                        _event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": self.block, "delta": data},
                        )
                    )
                for call in delta.get("tool_calls") or ():
                    out.append(self._tool(call))
                if choice.get("finish_reason") is not None:
                    self.stop_reason = STOP_REASONS.get(choice["finish_reason"] or "", "end_turn")
        return b"".join(out)

    def _tool(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            return b""
        out = b""
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tool_blocks:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open("tool_use", block)
            self.tool_blocks[position] = self.block
        arguments = function.get("arguments")
        if arguments:
            data = {"type": "input_json_delta", "partial_json": arguments}
            index = self.tool_blocks[position]
            out += _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": data}
            )
        return out

    def error(self, err: GatewayError) -> bytes:
        self.failed = True
        kind = _ERROR_TYPES.get(err.status, "api_error")
        return _event("error", {"type": "error", "error": {"type": kind, "message": err.message}})

    def end(self) -> bytes:
        if self.failed:
            return b""
        out = b"" if self.started else self._start(None)
        out += self._close()
        delta = {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": self.usage})
        return out + _event("message_stop", {"type": "message_stop"})


class AnthropicDialect:
    """`POST /v1/messages` (and, with `counting`, `/v1/messages/count_tokens`)."""

    name = "anthropic"

    def __init__(self, *, counting: bool = False) -> None:
        self.counting = counting

    def headers(self, headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
        key = headers.get(b"x-api-key")
        if key is not None and b"authorization" not in headers:
            headers[b"authorization"] = b"Bearer " + key
        return headers

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.counting:
            body = {k: v for k, v in body.items() if k not in ("stream", "max_tokens")}
        return to_chat(body, counting=self.counting)

    def answer(self, completion: Completion) -> bytes:
        return orjson.dumps(to_message(completion.data))

    def cached(self, completion: dict[str, Any]) -> bytes:
        return orjson.dumps(to_message(completion))

    def stream(self, include_usage: bool) -> MessagesStreamWriter:
        return MessagesStreamWriter()

    def replay(self, completion: dict[str, Any], include_usage: bool) -> bytes:
        message = to_message(completion)
        writer = MessagesStreamWriter()
        head: Any = {"id": completion.get("id"), "model": completion.get("model", "")}
        out = writer._start(head)
        for block in message["content"]:
            if block["type"] == "text":
                out += writer._open("text", {"type": "text", "text": ""})
                data = {"type": "text_delta", "text": block["text"]}
                out += _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": writer.block, "delta": data},
                )
            else:
                out += writer._open("tool_use", {**block, "input": {}})
                data = {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}
                out += _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": writer.block, "delta": data},
                )
        writer.stop_reason = message["stop_reason"]
        writer.usage = message["usage"]
        return out + writer.end()

    def error(self, err: GatewayError, message: str) -> bytes:
        kind = _ERROR_TYPES.get(err.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
