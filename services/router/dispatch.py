"""The call stage: attempts over a route's deployments through the adapters and the
one shared sender, with failures mapped, redacted, counted and logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from services.kernel.config import Deployment
from services.kernel.errors import GatewayError, UpstreamError, UpstreamTimeout
from services.kernel.redact import Redactor
from services.router.exchange import Attempt, Exchange
from services.router.metrics import RouterMetrics
from services.router.providers.base import Adapter, Completion, HttpResponse, StreamDecoder
from services.router.sender import (
    ConnectFailed,
    ConnectTimedOut,
    ReadTimedOut,
    Sender,
    TransportError,
    UpstreamStream,
)

log = logging.getLogger("gateway.router")
T = TypeVar("T")


def transport_error(dep: Deployment, exc: TransportError) -> GatewayError:
    """A failure to talk to the deployment at all, as the client sees it."""
    where = f"{dep.provider} deployment {dep.name}"
    if isinstance(exc, ConnectTimedOut):
        err: GatewayError = UpstreamTimeout(f"timed out connecting to {where}")
        err.retryable = True
        return err
    if isinstance(exc, ReadTimedOut):
        return UpstreamTimeout(f"{where} did not answer within {dep.config.timeout_s:g} s")
    err = UpstreamError(f"could not reach {where}: {type(exc).__name__}")
    err.retryable = isinstance(exc, ConnectFailed)
    return err


class OpenStream:
    """An upstream stream that answered 200: its decoder and the deployment behind it."""

    __slots__ = ("decoder", "deployment", "response")

    def __init__(self, deployment: Deployment, response: UpstreamStream, decoder: StreamDecoder) -> None:
        self.deployment = deployment
        self.response = response
        self.decoder = decoder


class Dispatcher:
    def __init__(
        self,
        sender: Sender,
        adapters: Mapping[str, Adapter],
        metrics: RouterMetrics,
        redact: Redactor,
    ) -> None:
        self.sender = sender
        self.adapters = adapters
        self.metrics = metrics
        self.redact = redact

    async def _attempts(self, ex: Exchange, once: Callable[[Deployment, Adapter], Awaitable[T]]) -> T:
        """Try the route's deployments in order; fall over on failures another may not have."""
        assert ex.route is not None
        last: GatewayError | None = None
        for dep in ex.route.deployments:
            attempt = Attempt(dep, time.perf_counter())
            ex.attempts.append(attempt)
            try:
                result = await once(dep, self.adapters[dep.provider])
            except TransportError as exc:
                err = transport_error(dep, exc)
            except GatewayError as exc:
                err = exc
            else:
                attempt.status, attempt.seconds = 200, time.perf_counter() - attempt.started
                return result
            err.message = self.redact(err.message)
            attempt.status, attempt.error_code = err.status, err.code
            attempt.seconds = time.perf_counter() - attempt.started
            if err.status >= 500 or err.status == 429:
                self.metrics.upstream_error(dep, err.code)
                log.warning(
                    "upstream failure",
                    extra={
                        "request_id": ex.request_id,
                        "deployment": dep.name,
                        "provider": dep.provider,
                        "status": err.status,
                        "code": err.code,
                        "detail": err.message,
                        "retryable": err.retryable,
                    },
                )
            if not err.retryable:
                raise err
            last = err
        assert last is not None
        raise last

    async def chat(self, ex: Exchange) -> tuple[Deployment, Completion]:
        async def once(dep: Deployment, adapter: Adapter) -> tuple[Deployment, Completion]:
            response = await self.sender.send(adapter.chat_request(dep, ex.body, stream=False))  # type: ignore[arg-type]
            if response.status >= 300:
                raise adapter.error(dep, response)
            return dep, adapter.chat_response(dep, response)

        return await self._attempts(ex, once)

    async def embeddings(self, ex: Exchange) -> tuple[Deployment, Completion]:
        async def once(dep: Deployment, adapter: Adapter) -> tuple[Deployment, Completion]:
            response = await self.sender.send(adapter.embeddings_request(dep, ex.body))  # type: ignore[arg-type]
            if response.status >= 300:
                raise adapter.error(dep, response)
            return dep, adapter.embeddings_response(dep, response)

        return await self._attempts(ex, once)

    async def chat_stream(self, ex: Exchange) -> OpenStream:
        """Open the stream; falls over only before any byte reached the client."""

        async def once(dep: Deployment, adapter: Adapter) -> OpenStream:
            response = await self.sender.open(adapter.chat_request(dep, ex.body, stream=True))  # type: ignore[arg-type]
            try:
                if response.status >= 300:
                    body = await response.read()
                    raise adapter.error(dep, HttpResponse(response.status, response.headers, body))
                media = response.headers.get("content-type", "")
                if not media.startswith(adapter.stream_media_type):
                    got = media.split(";")[0] or "no content type"
                    raise UpstreamError(
                        f"{dep.name} answered a streaming request with {got}"
                        f" instead of {adapter.stream_media_type}"
                    )
            except BaseException:
                await response.aclose()
                raise
            return OpenStream(dep, response, adapter.chat_stream(dep))

        return await self._attempts(ex, once)
