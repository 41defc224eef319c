"""What a provider adapter is: pure translation between the gateway's OpenAI-shaped
requests and one provider's wire format. Adapters own no I/O: they build an
`HttpRequest`, and parse the `HttpResponse` or the stream bytes the shared sender
(`services/router/sender.py`) hands back. Tested on recorded payloads, no network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest


@dataclasses.dataclass(slots=True)
class Usage:
    """Token counts of one request. `estimated` when the gateway counted them itself
    because the provider's own count never arrived (an interrupted stream)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the sender waits, in seconds (see `sender.py`)."""

    connect: float  # the TCP (and TLS) connection
    first_byte: float  # from sending the request to the answer's status and headers
    total: float  # the whole answer, a stream included
    idle: float  # the longest silence between two pieces of a stream

    @classmethod
    def of(cls, dep: Deployment) -> Timeouts:
        c = dep.config
        return cls(c.connect_timeout_s, c.first_byte_timeout_s, c.timeout_s, c.stream_idle_timeout_s)


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """One provider call, fully built: the sender only performs it."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    timeouts: Timeouts
    method: str = "POST"


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookups
    body: bytes


@dataclasses.dataclass(slots=True)
class Completion:
    """A finished answer in OpenAI's wire format: `body` goes to the client as is,
    `data` is the same object parsed (for the cache and the record)."""

    body: bytes
    usage: Usage
    data: dict[str, Any]


class StreamDecoder(Protocol):
    """Turns one provider stream into OpenAI chunks, bytes in, chunks out.

    `usage` is the provider's own count once it has sent one; `error` an error the
    provider reported inside the stream; `done` whether the stream ended properly
    (a stream cut without its end marker is not a complete answer).
    """

    usage: Usage | None
    error: GatewayError | None
    done: bool

    def feed(self, data: bytes) -> list[ChatCompletionChunk]: ...
    def finish(self) -> list[ChatCompletionChunk]: ...


class Adapter(Protocol):
    """One provider wire format."""

    stream_media_type: str  # what a streaming answer must be served as

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest: ...
    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion: ...
    def chat_stream(self, dep: Deployment) -> StreamDecoder: ...
    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest: ...
    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion: ...
    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        """Map a provider error answer (status ≥ 400) to what the client sees."""
        ...
