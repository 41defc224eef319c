"""What the adapters share once the OpenAI request is read (`params.py` reads it): the
turns of a conversation for providers that want roles alternating, tool calls and usage
in OpenAI's shape, JSON answers and SSE streams taken apart, and a provider's error
answer as the client sees it.

Each adapter keeps what is its own wire format (field names, roles, event grammars);
what is here is the logic that is the same across them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError
from services.kernel.wire import ChatCompletionChunk
from services.router.providers import params
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Timeouts, Usage
from services.router.providers.sse import EventSplitter, data_of

Block = dict[str, Any]


# -- Requests -------------------------------------------------------------------------


def json_request(
    dep: Deployment, url: str, payload: Mapping[str, Any], headers: Mapping[str, str]
) -> HttpRequest:
    """A JSON POST to `url` with the deployment's timeouts; `headers` carry the credentials."""
    return HttpRequest(
        url=url,
        headers={"content-type": "application/json", **headers},
        body=orjson.dumps(payload),
        timeouts=Timeouts.of(dep),
    )


def content_blocks(
    dep: Deployment,
    content: Any,
    param: str,
    text: Callable[[str], Block],
    image: Callable[[str, str | None, str, str], Block],
) -> list[Block]:
    """A message's content as provider blocks: `text(text)` for each non-empty text part,
    `image(media type, base64 data or None, url, param)` for each image."""
    out = []
    for j, part in enumerate(params.parts_of(dep, content, param)):
        if part["type"] == "text":
            if part["text"]:
                out.append(text(part["text"]))
            continue
        media, data, url = params.image_of(dep, part, f"{param}[{j}]")
        out.append(image(media, data, url, f"{param}[{j}]"))
    return out


def turns_of(
    dep: Deployment,
    messages: list[Any],
    *,
    content: Callable[[Any, str], list[Block]],
    tool_use: Callable[[dict[str, Any], str], Block],
    tool_result: Callable[[dict[str, Any], str], Block],
    assistant: str = "assistant",
    key: str = "content",
) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages as (system texts, turns) for providers that take the system prompt
    apart and want the turns alternating: consecutive turns of one role are merged.

    `content(content, param)` gives a message's blocks, `tool_use(call, param)` the block
    of one of the assistant's tool calls, `tool_result(message, param)` the block of a
    tool message (sent in a user turn); the assistant's turns have the role `assistant`
    and every turn keeps its blocks under `key`.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[Block]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1][key].extend(blocks)
        else:
            turns.append({"role": role, key: blocks})

    for i, message in enumerate(messages):
        role, param = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(params.text_of(message.get("content")))
        elif role == "user":
            add("user", content(message.get("content"), f"{param}.content"))
        elif role == "assistant":
            blocks = content(message.get("content"), f"{param}.content")
            for k, call in enumerate(message.get("tool_calls") or ()):
                blocks.append(tool_use(call, f"{param}.tool_calls[{k}]"))
            add(assistant, blocks)
        elif role == "tool":
            add("user", [tool_result(message, param)])
        else:
            raise params.unsupported(dep, f"{param}.role", f"role {role!r}")
    return system, turns


# -- Answers --------------------------------------------------------------------------


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for optional provider fields)."""
    return value if isinstance(value, dict) else {}


def cache_usage(raw: Any, *, prompt: str, completion: str, read: str, written: str) -> Usage:
    """Usage from a provider whose prompt count leaves out the tokens read from and written
    to its prompt cache (Anthropic, Bedrock): OpenAI's `prompt_tokens` includes both, with
    `cached_tokens` the reads."""
    raw = as_dict(raw)
    cache_read = params.count(raw.get(read))
    cache_written = params.count(raw.get(written))
    return Usage(
        prompt_tokens=params.count(raw.get(prompt)) + cache_read + cache_written,
        completion_tokens=params.count(raw.get(completion)),
        cached_tokens=cache_read,
    )


def tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """One OpenAI tool call; `arguments` is the JSON string OpenAI sends."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def object_tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """One OpenAI tool call from a provider that sends the arguments as an object."""
    return tool_call(call_id, name, orjson.dumps(arguments or {}).decode())


def content_of(text: list[str], calls: list[dict[str, Any]]) -> str | None:
    """An answer's `content`: its text, or null for an answer of tool calls alone."""
    return "".join(text) if text or not calls else None


def completion(data: dict[str, Any], usage: Usage) -> Completion:
    return Completion(orjson.dumps(data), usage, data)


def json_body(dep: Deployment, response: HttpResponse) -> Any:
    """A provider's answer parsed; not JSON is the provider's failure."""
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{dep.name} answered with a body that is not JSON") from None


def json_object(dep: Deployment, response: HttpResponse) -> dict[str, Any]:
    """A provider's answer that must be a JSON object."""
    data = json_body(dep, response)
    if not isinstance(data, dict):
        raise UpstreamError(f"{dep.name} answered with JSON that is not an object")
    return data


# -- Streams --------------------------------------------------------------------------


def stream_error(dep: Deployment, error: Any) -> UpstreamError:
    """An error object a provider sent inside a stream; its message is cut short."""
    message = error.get("message") if isinstance(error, dict) else None
    text = message[:500] if isinstance(message, str) else "no message"
    return UpstreamError(f"upstream error during the stream from {dep.name}: {text}")


class SSEDecoder:
    """The part of a `StreamDecoder` that every SSE stream shares: events are split as the
    bytes arrive, their `data` parsed as JSON and handed to `_object`; the tail of a
    stream that ends without a blank line is decoded too, then `_end` runs.

    A `data` that is not JSON stops the stream with an error (`bad_json_retryable`: whether
    another deployment may be tried); `_marker` may take a non-JSON end marker first.
    """

    bad_json_retryable = True
    keeps_raw = False  # whether a chunk passed on as parsed keeps its bytes in `raw`

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.done = False
        # id(chunk) → (chunk, its `data` as received): a writer that sends the chunk
        # unchanged sends these bytes instead of serialising it again (`raw_frames`).
        self.raw: dict[int, tuple[ChatCompletionChunk, bytes]] = {}

    def _marker(self, data: bytes) -> bool:
        """Whether `data` is a marker that is not JSON (and was taken)."""
        return False

    def _object(self, obj: Any, out: list[ChatCompletionChunk]) -> None:
        raise NotImplementedError

    def _end(self, out: list[ChatCompletionChunk]) -> None:
        """After the last bytes of the stream."""

    def _event(self, event: bytes, out: list[ChatCompletionChunk]) -> None:
        data = data_of(event)
        if data is None or self._marker(data):
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(f"{self.dep.name} sent a stream event that is not JSON")
            self.error.retryable = self.bad_json_retryable
            return
        before = len(out)
        self._object(obj, out)
        # One line of JSON, passed on as it was parsed: it can be sent again as it came.
        if (
            self.keeps_raw
            and len(out) == before + 1
            and out[-1] is obj
            and b"\n" not in data
            and b"\r" not in data
        ):
            self.raw[id(obj)] = (obj, data)

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
        self._end(out)
        return out


# -- Errors ---------------------------------------------------------------------------


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
    """A provider's error answer (status ≥ 300) as the client should see it."""
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
