"""The respond stage of a stream: chunks go to the client as they arrive, and are
assembled on the way into the complete answer (for the cache and exact usage).

A stream ends in one of these ways, each recorded once: the upstream finishes
(`[DONE]`); the upstream fails or reports an error in-band (the client gets an
error event and `[DONE]`); the client goes away (499); the process drains for
shutdown past its deadline (an error event and `[DONE]`, 503). Whenever the
provider's own token count is missing, usage is counted from what was sent and
received and marked as estimated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Send

from services.kernel.errors import ClientClosed, GatewayError, ShuttingDown, UpstreamError
from services.kernel.lifecycle import Lifecycle
from services.kernel.redact import Redactor
from services.kernel.wire import ChatCompletionChunk
from services.router.dispatch import OpenStream, transport_error
from services.router.exchange import Exchange
from services.router.providers.base import StreamDecoder, Usage
from services.router.providers.sse import DONE
from services.router.providers.tokens import count_messages, count_text
from services.router.sender import TransportError

if TYPE_CHECKING:
    from services.router.dialect import RawFrames, StreamWriter

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Choice:
    __slots__ = ("content", "finish_reason", "logprobs", "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprobs: list[Any] = []


class ChatAssembler:
    """Builds the `chat.completion` a stream of `chat.completion.chunk`s amounts to."""

    def __init__(self) -> None:
        self.head: dict[str, Any] | None = None
        self.choices: dict[int, _Choice] = {}

    def add(self, chunk: ChatCompletionChunk) -> None:
        if self.head is None:
            self.head = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
            for k in ("system_fingerprint", "service_tier"):
                if chunk.get(k) is not None:
                    self.head[k] = chunk[k]
        for c in chunk.get("choices") or ():
            index = c.get("index", 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = _Choice()
            delta = c.get("delta") or {}
            if (role := delta.get("role")) is not None:
                state.role = role
            if content := delta.get("content"):
                state.content.append(content)
            if refusal := delta.get("refusal"):
                state.refusal.append(refusal)
            for call in delta.get("tool_calls") or ():
                self._tool_call(state, call)
            if c.get("finish_reason") is not None:
                state.finish_reason = c["finish_reason"]
            logprobs = c.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                state.logprobs.extend(logprobs["content"])

    @staticmethod
    def _tool_call(state: _Choice, call: Any) -> None:
        if not isinstance(call, dict):
            return
        slot = state.tool_calls.get(call.get("index", 0))
        if slot is None:
            slot = state.tool_calls[call.get("index", 0)] = {
                "id": "",
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    def completion(self, usage: Usage | None) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {
                "role": state.role,
                "content": "".join(state.content) if state.content or not state.tool_calls else None,
                "refusal": "".join(state.refusal) or None,
            }
            if state.tool_calls:
                message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": {"content": state.logprobs} if state.logprobs else None,
                    "finish_reason": state.finish_reason,
                }
            )
        out: dict[str, Any] = {"object": "chat.completion", **(self.head or {}), "choices": choices}
        if usage is not None:
            out["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return out

    def completion_tokens(self) -> int:
        """Tokens of what was generated so far, counted by the gateway's approximation."""
        total = 0
        for state in self.choices.values():
            total += count_text("".join(state.content)) + count_text("".join(state.refusal))
            for call in state.tool_calls.values():
                total += count_text(call["function"]["name"]) + count_text(call["function"]["arguments"])
        return total


def estimate(ex: Exchange, assembler: ChatAssembler) -> Usage:
    """Usage counted by the gateway: the prompt it forwarded, the completion it relayed."""
    messages = ex.body.get("messages")
    prompt = count_messages(messages) if isinstance(messages, list) else 0
    return Usage(prompt, assembler.completion_tokens(), estimated=True)


def _ended(decoder: StreamDecoder) -> bool:
    """The stream reported an error or its end (a call: the decoder changes as it is fed)."""
    return decoder.error is not None or decoder.done


class ClientWatch:
    """Notices a client that goes away while its stream is being prepared or relayed.

    uvicorn's `send()` returns silently once the client is gone; only `receive()` says
    so. A task waits on it for the whole streaming request (from the call that opens
    the upstream stream, which reads ahead until the first text, to the last chunk)
    and cancels the request's task when the client disconnects, so the upstream call
    is closed at once instead of generating for nobody.
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self.done = False
        self._watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> ClientWatch:
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while (await self.receive())["type"] != "http.disconnect":
                pass
            if not self.done:
                self.gone = True
                task.cancel()

        self._watcher = asyncio.get_running_loop().create_task(watch())
        return self

    def __exit__(self, *exc: object) -> None:
        self.done = True
        if self._watcher is not None:
            self._watcher.cancel()

    def closed(self) -> ClientClosed:
        """The error to raise after catching the cancellation `gone` caused."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return ClientClosed("the client closed the connection during the stream")


class Relay:
    """Streams an upstream answer to the client; see the module docstring."""

    def __init__(self, lifecycle: Lifecycle, redact: Redactor) -> None:
        self.lifecycle = lifecycle
        self.redact = redact

    async def run(
        self,
        ex: Exchange,
        opened: OpenStream,
        headers: list[tuple[bytes, bytes]],
        watch: ClientWatch,
        send: Send,
        writer: StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        assembler = ChatAssembler()
        decoder = opened.decoder
        try:
            with self.lifecycle.track():
                ex.responded = True
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
                try:
                    await self._pump(ex, opened, assembler, send, writer)
                except asyncio.CancelledError:
                    if watch.gone:
                        raise watch.closed() from None
                    if self.lifecycle.interrupted(task):
                        task.uncancel()
                        err: GatewayError = ShuttingDown(
                            "The gateway is shutting down and interrupted this stream; retry the request."
                        )
                        ex.fail(err.status, err.code)
                        await send({"type": "http.response.body", "body": writer.error(err) + writer.end()})
                        return
                    raise
                watch.done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.done = True
            ex.usage = decoder.usage or estimate(ex, assembler)
            if ex.status == 200 and decoder.done:
                ex.completion = assembler.completion(ex.usage)
            with contextlib.suppress(Exception):
                await opened.response.aclose()

    async def _pump(
        self, ex: Exchange, opened: OpenStream, assembler: ChatAssembler, send: Send, writer: StreamWriter
    ) -> None:
        decoder = opened.decoder
        raw: RawFrames | None = getattr(decoder, "raw", None)  # chunks that can go out as received
        err: GatewayError | None = None
        try:
            out = self._frames(ex, opened.ready, assembler, writer, raw)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if decoder.error is None and not decoder.done:
                async for data in opened.pieces:
                    out = self._frames(ex, decoder.feed(data), assembler, writer, raw)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if _ended(decoder):
                        break
                else:
                    out = self._frames(ex, decoder.finish(), assembler, writer, raw)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
        except TransportError as exc:
            err = transport_error(opened.deployment, exc)
        if err is None and decoder.error is not None:
            err = decoder.error
        if err is None and not decoder.done:
            err = UpstreamError(f"{opened.deployment.name} ended the stream before it was complete")
        if err is not None:
            err.message = self.redact(err.message)
            ex.fail(err.status, err.code)
            await send({"type": "http.response.body", "body": writer.error(err), "more_body": True})
        if err is None:
            # The writer's end may carry the final usage (Anthropic's message_delta).
            ex.usage = decoder.usage or estimate(ex, assembler)
        await send({"type": "http.response.body", "body": writer.end(), "more_body": True})

    @staticmethod
    def _frames(
        ex: Exchange,
        chunks: list[ChatCompletionChunk],
        assembler: ChatAssembler,
        writer: StreamWriter,
        raw: RawFrames | None,
    ) -> bytes:
        if not chunks:
            return b""
        for chunk in chunks:
            assembler.add(chunk)
        if ex.first_byte_at is None and any(chunk.get("choices") for chunk in chunks):
            ex.first_byte_at = time.perf_counter()
        out = writer.chunks(chunks, raw)
        if raw:  # a writer that does not send chunks as received (Messages) leaves them here
            raw.clear()
        return out


def replay(completion: dict[str, Any], include_usage: bool) -> bytes:
    """A stored `chat.completion` as the SSE stream that would have produced it (a cache
    hit for a streaming request): a content chunk per choice, its finish, usage if asked."""
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    out = []
    choices = completion.get("choices") or []
    for choice in choices:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        first = {"index": choice.get("index", 0), "delta": delta, "logprobs": None, "finish_reason": None}
        out.append(b"data: " + orjson.dumps({**base, "choices": [first]}) + b"\n\n")
        last = {
            "index": choice.get("index", 0),
            "delta": {},
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        }
        out.append(b"data: " + orjson.dumps({**base, "choices": [last]}) + b"\n\n")
    if include_usage and completion.get("usage"):
        out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": completion["usage"]}) + b"\n\n")
    out.append(DONE)
    return b"".join(out)
