"""What the non-OpenAI adapters share: refusing what a provider cannot honour, and
reading the OpenAI request's messages, images, tools and stop sequences.

A parameter a provider cannot honour is a 400 that names it; nothing is dropped
silently. `user` is the one exception: it identifies the caller to the provider's
abuse monitoring and changes nothing in the answer; adapters pass it where the
provider has a field for it.
"""

from __future__ import annotations

import array
import base64
import binascii
import mimetypes
import re
from collections.abc import Iterable
from typing import Any

import orjson

from services.kernel.config import Deployment
from services.kernel.errors import InvalidRequest
from services.router.providers.base import Completion, Usage

# Always understood: the gateway reads or strips them itself.
COMMON = frozenset({"model", "messages", "stream", "stream_options", "user"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def unsupported(dep: Deployment, param: str, why: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' is not supported by the {dep.provider} provider (model '{dep.public_model}')"
        + (f": {why}" if why else "."),
        param=param,
        code="unsupported_parameter",
    )


def refuse_unknown(dep: Deployment, body: dict[str, Any], supported: Iterable[str]) -> None:
    """400 for the first set parameter that is neither common nor `supported`."""
    allowed = COMMON | set(supported)
    for name, value in body.items():
        if name not in allowed and value is not None:
            raise unsupported(dep, name[:64])
    n = body.get("n")
    if n not in (None, 1) and "n" not in supported:
        raise unsupported(dep, "n", "only one choice per request")


def max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def stops(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def sampling(
    body: dict[str, Any], max_tokens_as: str, renamed: Iterable[tuple[str, str]], stop_as: str
) -> dict[str, Any]:
    """The set generation parameters under the provider's names, in this order: the token
    limit (`max_completion_tokens` or `max_tokens`) as `max_tokens_as`, each `(ours, theirs)`
    of `renamed`, then the stop sequences (always a list) as `stop_as`."""
    out: dict[str, Any] = {}
    limit = max_tokens(body)
    if limit is not None:
        out[max_tokens_as] = limit
    for ours, theirs in renamed:
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = stops(body)
    if stop:
        out[stop_as] = stop
    return out


def text_of(content: Any) -> str:
    """The text of a message content (a string, or the text parts of an array)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def image_of(dep: Deployment, part: dict[str, Any], param: str) -> tuple[str, str | None, str]:
    """An `image_url` part as (media type, base64 data or None, url)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{param}.image_url.url' must be a string.", param=f"{param}.image_url")
    match = _DATA_URL.match(url)
    if match:
        data = match.group("data")
        try:
            base64.b64decode(data[:4096] + "=" * (-len(data[:4096]) % 4), validate=True)
        except binascii.Error:
            raise InvalidRequest(f"'{param}' is not valid base64 image data.", param=param) from None
        return match.group("mime"), data, url
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"'{param}.image_url.url' must be a data: or http(s) URL.", param=param)
    return mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg", None, url


def parts_of(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    """Content as OpenAI parts (text and image_url); anything else is refused."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if (kind == "text" and isinstance(part.get("text"), str)) or kind == "image_url":
            out.append(part)
        else:
            raise unsupported(dep, f"{param}[{j}].type", f"content of type {str(kind)[:40]!r}")
    return out


def arguments_of(call: dict[str, Any], param: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as an object, for providers that want one."""
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"'{param}.function.arguments' is not valid JSON.", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}.function.arguments' must encode an object.", param=param)
    return value


def functions_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `tools` of type function as `{name, description?, parameters?}`."""
    out = []
    for i, tool in enumerate(body.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"'tools[{i}]' must be a function tool.", param=f"tools[{i}]")
        if not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"'tools[{i}].function.name' must be a string.", param=f"tools[{i}].function.name"
            )
        out.append(function)
    return out


def tool_choice_of(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """`tool_choice` as (mode, function name): mode is auto, none, required or function."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice, None
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        return "function", choice["function"]["name"]
    raise InvalidRequest("'tool_choice' must be auto, none, required or a function.", param="tool_choice")


def json_mode(dep: Deployment, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """`response_format` as ("json_object", None) or ("json_schema", schema); None for text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
        return "json_schema", schema if isinstance(schema, dict) else {}
    raise InvalidRequest(
        "'response_format.type' must be text, json_object or json_schema.", param="response_format"
    )


def count(value: Any) -> int:
    """A token count from a provider, or 0 when absent or malformed."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31 - 1:
        return value
    return 0


def usage_body(usage: Usage) -> dict[str, Any]:
    """A `Usage` as OpenAI's `usage` object, with the details the provider reported."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
    return out


def completion_body(
    cid: str,
    created: int,
    model: str,
    content: str | None,
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: Usage,
) -> dict[str, Any]:
    """An OpenAI `chat.completion` with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_body(usage),
    }


class ChunkMaker:
    """Builds the `chat.completion.chunk`s of one streamed answer."""

    def __init__(self, cid: str, created: int, model: str) -> None:
        self.base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        self.tool_index = -1

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> Any:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.base, "choices": [choice]}

    def tool_start(self, call_id: str, name: str) -> Any:
        self.tool_index += 1
        call = {
            "index": self.tool_index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self.delta({"tool_calls": [call]})

    def tool_arguments(self, fragment: str) -> Any:
        return self.delta(
            {"tool_calls": [{"index": max(self.tool_index, 0), "function": {"arguments": fragment}}]}
        )

    def usage(self, usage: Usage) -> Any:
        return {**self.base, "choices": [], "usage": usage_body(usage)}


def embeddings_completion(model: str, vectors: list[list[float]], prompt_tokens: int | None) -> Completion:
    """OpenAI's embeddings list. Without the provider's token count, usage is marked
    estimated (the call stage fills in its own count)."""
    usage = Usage(prompt_tokens or 0, 0, estimated=prompt_tokens is None)
    out = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return Completion(orjson.dumps(out), usage, out)


def finish_embeddings(completion: Completion, encoding_format: Any, prompt_estimate: int) -> Completion:
    """Apply what only the gateway can for providers without them: OpenAI's base64
    `encoding_format` (float32, little-endian) and an estimated token count."""
    changed = False
    if completion.usage.estimated and not completion.usage.prompt_tokens:
        completion.usage.prompt_tokens = prompt_estimate
        completion.data["usage"] = {"prompt_tokens": prompt_estimate, "total_tokens": prompt_estimate}
        changed = True
    if encoding_format == "base64":
        for item in completion.data.get("data") or ():
            if isinstance(item.get("embedding"), list):
                packed = array.array("f", item["embedding"]).tobytes()
                item["embedding"] = base64.b64encode(packed).decode()
                changed = True
    if changed:
        completion.body = orjson.dumps(completion.data)
    return completion
