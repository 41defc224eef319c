"""Request shape checks for the fields the gateway interprets.

Everything else (tools, tool_choice, response_format, seed, logprobs, …) passes
through untouched: the provider is the judge of those.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from services.kernel.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 100_000
MAX_DEPTH = 128  # JSON nesting; orjson cannot re-encode past 254 levels
_CONTAINERS = (dict, list)  # tuples: `dict | list` in isinstance builds a union on every call
_CONTENT = (str, list)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, _CONTAINERS))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, _CONTAINERS))
    return False


def parse_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    # Only a body with that many brackets can be that deep: the walk is rare.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth_exceeds(body, MAX_DEPTH):
        raise InvalidRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_value")
    return model


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is not None and (not _is_int(value) or not low <= value <= high):
        raise InvalidRequest(
            f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value"
        )


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise InvalidRequest(
            f"'{name}' must be a number from {low:g} to {high:g}.", param=name, code="invalid_value"
        )


def check_chat(body: dict[str, Any]) -> tuple[str, bool, bool]:
    """Validate a chat completion request; return (model, stream, include_usage)."""
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages", code="invalid_value")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' has more than {MAX_MESSAGES} items.", param="messages")
    for i, message in enumerate(messages):
        # The common case (an object, a known role, text content) costs no message formatting.
        if type(message) is dict:
            role = message.get("role")
            if type(role) is str and role in ROLES and type(message.get("content")) is str:
                continue
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param, code="invalid_value")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"'{param}.role' must be one of {', '.join(sorted(ROLES))}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, _CONTENT):
            raise InvalidRequest(
                f"'{param}.content' must be a string, an array of content parts, or null.",
                param=f"{param}.content",
                code="invalid_type",
            )
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise InvalidRequest(
                f"'{param}.content' parts must be objects.", param=f"{param}.content", code="invalid_type"
            )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        if not stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage"
            )
    for name, low, high in _CHAT_INTS:  # a lookup each; the checks run only for those present
        if body.get(name) is not None:
            _optional_int(body, name, low, high)
    for name, low, high in _CHAT_NUMBERS:
        if body.get(name) is not None:
            _optional_number(body, name, low, high)
    return model, stream, include_usage


_CHAT_INTS = (("max_tokens", 1, 10_000_000), ("max_completion_tokens", 1, 10_000_000), ("n", 1, 128))
_CHAT_NUMBERS = (
    ("temperature", 0, 2),
    ("top_p", 0, 1),
    ("presence_penalty", -2, 2),
    ("frequency_penalty", -2, 2),
)


def check_embeddings(body: dict[str, Any]) -> str:
    """Validate an embeddings request; return the model."""
    model = _model(body)
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list)
        and 0 < len(value) <= 2048
        and (
            all(isinstance(x, str) and x != "" for x in value)
            or all(_is_int(x) for x in value)
            or all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in value)
        )
    )
    if not ok:
        raise InvalidRequest(
            "'input' must be a non-empty string, an array of up to 2048 non-empty strings, or token arrays.",
            param="input",
            code="invalid_value",
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    _optional_int(body, "dimensions", 1, 65_536)
    return model
