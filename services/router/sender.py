"""The one place the router performs provider I/O.

Adapters build an `HttpRequest`; the `Sender` performs it and hands back an
`HttpResponse` or an `UpstreamStream`, with every transport failure mapped onto a
small exception tree. Redirects are never followed: a provider URL that answers
3xx must not get the request body, credentials included, sent to another host.

The network transport uses aiohttp: on this project's benchmark (bench/clients.py)
httpx's connection pool cost ~0.9 ms per request on one connection and collapsed to
~480 requests/s at 64 connections, where aiohttp ran 5-7k/s on the same core.
Service-to-service calls keep httpx (its ASGITransport runs embedded services
in-process). URLs with the `mock://` scheme go to the built-in mock provider,
which answers in-process in OpenAI's wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp

from services.router.providers.base import HttpRequest, HttpResponse, Timeouts


class TransportError(Exception):
    """The upstream could not be reached or the connection failed."""


class ConnectFailed(TransportError):
    pass


class ConnectTimedOut(TransportError):
    pass


class ReadTimedOut(TransportError):
    pass


class ConnectionLost(TransportError):
    pass


class UpstreamStream(Protocol):
    """An answer whose body is read as it arrives."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def read(self, limit: int = ...) -> bytes: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse: ...
    async def open(self, request: HttpRequest) -> UpstreamStream: ...


def _translate(exc: BaseException) -> TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimedOut(str(exc))
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ReadTimedOut(str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(type(exc).__name__)
    return ConnectionLost(type(exc).__name__)


ERROR_BODY_LIMIT = 64 * 1024  # enough for any real error message; the rest is dropped


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.headers = response.headers  # case-insensitive

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from None

    async def read(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        try:
            return await self.response.content.read(limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from None

    async def aclose(self) -> None:
        self.response.release()
        self.response.close()


class AiohttpTransport:
    """Keep-alive connection pool, opened once in the router's lifespan."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def _timeout(self, t: Timeouts) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(t)
        if timeout is None:
            timeout = self._timeouts[t] = aiohttp.ClientTimeout(
                total=None, sock_connect=t.connect, sock_read=t.read
            )
        return timeout

    @classmethod
    def create(cls, *, max_connections: int = 4096) -> AiohttpTransport:
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
        )
        return cls(
            aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "llm-gateway"},
            )
        )

    async def send(self, request: HttpRequest) -> HttpResponse:
        timeout = self._timeout(request.timeouts)
        try:
            async with self.session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from None

    async def open(self, request: HttpRequest) -> UpstreamStream:
        t = request.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
        try:
            response = await self.session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from None
        return _AiohttpStream(response)

    async def aclose(self) -> None:
        await self.session.close()


class Sender:
    """Performs every provider call: over the network, or in-process for `mock://` URLs."""

    def __init__(self, network: Transport, mock: Transport) -> None:
        self.network = network
        self.mock = mock

    def _transport(self, url: str) -> Transport:
        return self.mock if url.startswith("mock://") else self.network

    async def send(self, request: HttpRequest) -> HttpResponse:
        return await self._transport(request.url).send(request)

    async def open(self, request: HttpRequest) -> UpstreamStream:
        return await self._transport(request.url).open(request)
