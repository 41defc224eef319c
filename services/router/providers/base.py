"""What every provider adapter offers the router."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError
from services.router.upstream import Upstream


@dataclasses.dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass(slots=True)
class Completion:
    """A finished response, already in OpenAI's wire format."""

    body: bytes
    usage: Usage


class ChatStream(Protocol):
    """An open streaming response: SSE frames in OpenAI's chunk format.

    `usage` and `first_chunk_at` (a `time.perf_counter()` value) are filled in
    while `frames()` is iterated. `aclose` releases the upstream connection.
    """

    usage: Usage
    first_chunk_at: float | None
    error: GatewayError | None

    def frames(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Provider(Protocol):
    async def chat(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion: ...

    async def chat_stream(
        self,
        dep: Deployment,
        body: dict[str, Any],
        *,
        http: Upstream,
        include_usage: bool,
    ) -> ChatStream: ...

    async def embeddings(self, dep: Deployment, body: dict[str, Any], *, http: Upstream) -> Completion: ...
