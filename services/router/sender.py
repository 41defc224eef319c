"""The one place the router performs provider I/O.

Adapters build an `HttpRequest`; the `Sender` performs it and hands back an
`HttpResponse` or an `UpstreamStream`, with every transport failure mapped onto a
small exception tree. Redirects are never followed: a provider URL that answers
3xx must not get the request body, credentials included, sent to another host.

The network transport is `httpclient.NativeTransport` (why not aiohttp or httpx:
see that module and bench/clients.py). Service-to-service calls keep httpx (its
ASGITransport runs embedded services in-process). URLs with the `mock://` scheme go
to the built-in mock provider, which answers in-process in OpenAI's wire format.

Timeouts (per deployment, `Timeouts`): `connect` (the transport's), `first_byte` (the
status and headers), `total` (the whole answer, a stream included) and `idle` (the
longest silence inside a stream). All but `connect` are applied here with
`asyncio.timeout`, so the in-process mock is held to them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Protocol

from services.router.providers.base import HttpRequest, HttpResponse, Timeouts


class TransportError(Exception):
    """The upstream could not be reached or the connection failed."""


class ConnectFailed(TransportError):
    pass


class ConnectTimedOut(TransportError):
    pass


class ReadTimedOut(TransportError):
    """A timeout after the connection was made; `which` says which one."""

    def __init__(self, which: str, seconds: float) -> None:
        super().__init__(f"{which} timeout of {seconds:g} s")
        self.which = which  # "first_byte", "total" or "idle"
        self.seconds = seconds


class ConnectionLost(TransportError):
    pass


class UpstreamStream(Protocol):
    """An answer whose body is read as it arrives."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def read(self, limit: int = ...) -> bytes: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse: ...
    async def open(self, request: HttpRequest) -> UpstreamStream: ...


ERROR_BODY_LIMIT = 64 * 1024  # enough for any real error message; the rest is dropped


class TimedStream:
    """A stream held to its total deadline and its idle timeout, whatever the transport."""

    def __init__(self, inner: UpstreamStream, timeouts: Timeouts, deadline: float) -> None:
        self.inner = inner
        self.status = inner.status
        self.headers = inner.headers
        self.timeouts = timeouts
        self.deadline = deadline

    def _limit(self) -> tuple[float, str, float]:
        left = self.deadline - asyncio.get_running_loop().time()
        t = self.timeouts
        return (left, "total", t.total) if left < t.idle else (t.idle, "idle", t.idle)

    async def chunks(self) -> AsyncIterator[bytes]:
        pieces = self.inner.chunks()
        try:
            while True:
                wait, which, seconds = self._limit()
                try:
                    async with asyncio.timeout(max(wait, 0)):
                        chunk = await anext(pieces)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ReadTimedOut(which, seconds) from None
                yield chunk
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def read(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        wait, which, seconds = self._limit()
        try:
            async with asyncio.timeout(max(wait, 0)):
                return await self.inner.read(limit)
        except TimeoutError:
            raise ReadTimedOut(which, seconds) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


class Sender:
    """Performs every provider call: over the network, or in-process for `mock://` URLs."""

    def __init__(self, network: Transport, mock: Transport) -> None:
        self.network = network
        self.mock = mock

    def _transport(self, url: str) -> Transport:
        return self.mock if url.startswith("mock://") else self.network

    def send(self, request: HttpRequest) -> Awaitable[HttpResponse]:
        """The whole answer within `total` and its headers within `first_byte`."""
        transport = self._transport(request.url)
        if getattr(transport, "holds_timeouts", False):
            # With timers of its own, cheaper than a scope; its call is awaited as it is.
            return transport.send(request)
        return self._send_timed(transport, request)

    @staticmethod
    async def _send_timed(transport: Transport, request: HttpRequest) -> HttpResponse:
        try:
            async with asyncio.timeout(request.timeouts.total):
                return await transport.send(request)
        except TimeoutError:
            raise ReadTimedOut("total", request.timeouts.total) from None

    async def open(self, request: HttpRequest) -> TimedStream:
        """A streaming answer: headers within `first_byte`; then no silence longer than
        `idle`, and the end within `total` of the start."""
        t = request.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total
        try:
            async with asyncio.timeout(min(t.first_byte, t.total)):
                opened = await self._transport(request.url).open(request)
        except TimeoutError:
            which = "first_byte" if t.first_byte <= t.total else "total"
            raise ReadTimedOut(which, min(t.first_byte, t.total)) from None
        return TimedStream(opened, t, deadline)
