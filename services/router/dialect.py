"""The client-facing format of a model endpoint: how its requests become the gateway's
OpenAI-shaped request, and how answers, streams and errors are written back.

Every endpoint runs the same `Pipeline` (authenticate, resolve, admit, cache, call,
respond, settle) on an OpenAI-shaped `Exchange`; a dialect is only the edges. The
OpenAI dialect is the identity (a provider's OpenAI body goes out byte for byte);
`messages.py` is Anthropic's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from services.kernel.errors import GatewayError
from services.kernel.wire import ChatCompletionChunk
from services.router.providers.base import Completion
from services.router.providers.sse import DONE
from services.router.relay import replay

RawFrames = dict[int, tuple[ChatCompletionChunk, bytes]]
"""id(chunk) → (chunk, the JSON it was parsed from), kept by a stream decoder whose chunks
are OpenAI's as received; the writer takes out the entries of the chunks it writes."""


class StreamWriter(Protocol):
    """Encodes one answer's stream for the client, chunk by chunk."""

    def chunks(self, chunks: list[ChatCompletionChunk], raw: RawFrames | None = None) -> bytes: ...
    def error(self, err: GatewayError) -> bytes:
        """An error once the stream has started (in-band)."""
        ...

    def end(self) -> bytes:
        """The stream's end, after its last chunk or its error."""
        ...


class Dialect(Protocol):
    name: str

    def headers(self, headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """The request headers as the authenticate stage expects them."""
        ...

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client's body as an OpenAI chat request (raise `InvalidRequest` naming the field)."""
        ...

    def answer(self, completion: Completion) -> bytes:
        """A complete answer's body."""
        ...

    def cached(self, completion: dict[str, Any]) -> bytes:
        """A stored `chat.completion` as this dialect's answer body."""
        ...

    def stream(self, include_usage: bool) -> StreamWriter: ...
    def replay(self, completion: dict[str, Any], include_usage: bool) -> bytes:
        """A stored `chat.completion` as this dialect's whole stream (a cache hit)."""
        ...

    def error(self, err: GatewayError, message: str) -> bytes:
        """An error answer's body, with the (redacted) `message`."""
        ...


class OpenAIStreamWriter:
    """`data: <chunk>` events and `data: [DONE]`."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def chunks(self, chunks: list[ChatCompletionChunk], raw: RawFrames | None = None) -> bytes:
        out = []
        for chunk in chunks:
            received = raw.pop(id(chunk), None) if raw else None
            if not self.include_usage and "usage" in chunk:
                # The gateway asked for usage; the client did not: OpenAI then sends no usage key.
                if not chunk.get("choices"):
                    continue
                del chunk["usage"]
                received = None
            if received is not None and received[0] is chunk:  # unchanged: sent as it came
                out.append(b"data: " + received[1] + b"\n\n")
            else:
                out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        return b"data: " + orjson.dumps(err.body()) + b"\n\n"

    def end(self) -> bytes:
        return DONE


class OpenAIDialect:
    """OpenAI's own format: nothing to translate."""

    name = "openai"

    def headers(self, headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return headers

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def answer(self, completion: Completion) -> bytes:
        return completion.body

    def cached(self, completion: dict[str, Any]) -> bytes:
        return orjson.dumps(completion)

    def stream(self, include_usage: bool) -> OpenAIStreamWriter:
        return OpenAIStreamWriter(include_usage)

    def replay(self, completion: dict[str, Any], include_usage: bool) -> bytes:
        return replay(completion, include_usage)

    def error(self, err: GatewayError, message: str) -> bytes:
        body = err.body()
        body["error"]["message"] = message  # type: ignore[index]
        return orjson.dumps(body)


OPENAI = OpenAIDialect()


def dialects() -> Mapping[str, Dialect]:
    """Endpoint → dialect; endpoints not named here speak OpenAI's."""
    from services.router.messages import AnthropicDialect

    return {"messages": AnthropicDialect(), "messages.count_tokens": AnthropicDialect(counting=True)}
