"""A lean HTTP/1.1 client for provider calls: keep-alive pool, TLS, streaming, no redirects.

Why not aiohttp: per request it spends about 100 µs of CPU on this machine (request
and response objects, header multidicts, payload wrappers, timer contexts); this
client, built on the same `httptools` parser uvicorn serves with, spends about 10
(bench/clients.py). Provider calls are the gateway's hottest I/O, so that
difference is most of what separates the gateway from a bare relay.

What it does: one pool of keep-alive connections per origin, bounded in total,
LIFO reuse, idle connections closed after `idle_s`; requests are written in one
`write` call; responses are parsed as they arrive, whole (bounded by
`max_body_bytes`) or streamed with backpressure (reading pauses while the consumer
is behind). A reused connection that the server closed while it sat idle fails
before any byte of the answer arrives; such a request is sent once more on a new
connection (nothing reached the provider's application). What it does not do, on
purpose: follow redirects, decompress (it sends no `accept-encoding`), proxies,
cookies, HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from services.router.providers.base import HttpRequest, HttpResponse
from services.router.sender import ConnectFailed, ConnectionLost, ConnectTimedOut, ReadTimedOut

USER_AGENT = b"llm-gateway"
HIGH_WATER = 256 * 1024  # stream bytes buffered before reading pauses
MAX_BODY = 64 * 1024 * 1024


class Headers(dict[str, str]):
    """Response headers; names lower-cased, lookups case-insensitive."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class _Stale(Exception):
    """A reused connection closed before any byte of the answer: safe to send again."""


Origin = tuple[str, str, int]  # scheme, host, port


def _split(url: str) -> tuple[Origin, bytes, bytes]:
    """(origin, request target, host header) of an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectFailed(f"unsupported URL: {parts.scheme}://")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    host_header = host if default else f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), target.encode(), host_header.encode()


class _Connection(asyncio.Protocol):
    """One connection and the exchange running on it (at most one at a time)."""

    def __init__(self, origin: Origin, max_body: int) -> None:
        self.origin = origin
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.streaming = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # -- protocol callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"malformed response: {type(exc).__name__}"))
            self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.headers_done and not self._delimited():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.got_bytes and self.uses > 1:  # a reused connection, closed while idle
            self._fail(_Stale())
        else:
            self._fail(ConnectionLost("the upstream closed the connection before the answer was complete"))

    def pause_writing(self) -> None:  # requests are small; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- parser callbacks ----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if self.streaming:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if not self.streaming and self.size > self.max_body:
            self._fail(ConnectionLost(f"the answer is larger than {self.max_body} bytes"))
            self.close()
            return
        self.body.append(body)
        if self.streaming:
            if self.size > HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- helpers -------------------------------------------------------------

    def _delimited(self) -> bool:
        for name, value in self.headers:
            low = name.lower()
            if low == b"content-length" or (low == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def response_headers(self) -> Headers:
        out: dict[str, str] = {}  # a plain dict while filling: no case folding per lookup
        for name, value in self.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            seen = out.get(key)
            out[key] = text if seen is None else f"{seen}, {text}"
        return Headers(out)

    async def wait(self) -> None:
        """Until the parser has something new (or the connection fails)."""
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def start(self, data: bytes, *, streaming: bool) -> None:
        self._reset()
        self.streaming = streaming
        self.uses += 1
        assert self.transport is not None
        self.transport.write(data)

    def take_chunks(self) -> bytes:
        data = b"".join(self.body)
        self.body.clear()
        self.size = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


class _Stream:
    """A streaming answer: status and headers now, the body as it arrives."""

    def __init__(self, client: NativeTransport, conn: _Connection) -> None:
        self.client = client
        self.conn = conn
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.response_headers()
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        try:
            while True:
                if conn.body:
                    yield conn.take_chunks()
                    continue
                if conn.complete:
                    self._finish()
                    return
                await conn.wait()  # the sender holds each wait to the idle and total timeouts
        except _Stale:
            raise ConnectionLost("the upstream closed the connection") from None

    async def read(self, limit: int = MAX_BODY) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
        return b"".join(parts)[:limit]

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.client._release(self.conn)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            if self.conn.complete:
                self.client._release(self.conn)
            else:
                self.client._discard(self.conn)  # the rest of the body is not wanted


class NativeTransport:
    """The provider transport: see the module docstring. Opened in the router's lifespan.

    It holds plain answers to all their timeouts itself (`connect`, `first_byte`,
    `total`: one timer at a time, no task); streams to `connect` and `first_byte`, the
    `Sender` applying `idle` and `total` to their chunks."""

    holds_timeouts = True

    def __init__(
        self,
        *,
        max_connections: int = 4096,
        idle_s: float = 30.0,
        max_body_bytes: int = MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.max_body_bytes = max_body_bytes
        self.ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = collections.defaultdict(list)
        self._open = 0
        self._freed: asyncio.Event | None = None
        self._urls: dict[str, tuple[Origin, bytes, bytes]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    # -- pool ----------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    async def _connect(self, origin: Origin, connect_s: float) -> _Connection:
        while self._open >= self.max_connections:
            self._freed = self._freed or asyncio.Event()
            try:
                async with asyncio.timeout(connect_s):
                    await self._freed.wait()
            except TimeoutError:
                raise ConnectTimedOut("no free connection in the pool") from None
            self._freed.clear()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        self._open += 1
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, self.max_body_bytes),
                    host,
                    port,
                    ssl=self._ssl() if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            self._open -= 1
            raise ConnectTimedOut(f"connecting to {host}:{port} took longer than {connect_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            self._open -= 1
            raise ConnectFailed(type(exc).__name__) from None
        except BaseException:
            self._open -= 1
            raise
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_s, self._sweep)
        return conn

    async def _acquire(self, origin: Origin, connect_s: float) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < self.idle_s:
                return conn
            self._discard(conn)
        return await self._connect(origin, connect_s)

    def _release(self, conn: _Connection) -> None:
        if conn.complete and conn.keep_alive and conn.usable() and conn.error is None:
            conn.idle_since = time.monotonic()
            self._idle[conn.origin].append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        if self._freed is not None:
            self._freed.set()

    def _sweep(self) -> None:
        """Close connections idle for longer than `idle_s`; runs while any are open."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable() and now - c.idle_since < self.idle_s]
            for conn in idle:
                if conn not in keep:
                    self._discard(conn)
            self._idle[origin] = keep
        self._sweeper = (
            asyncio.get_running_loop().call_later(self.idle_s / 2, self._sweep) if self._open else None
        )

    # -- requests ------------------------------------------------------------

    def _encode(self, request: HttpRequest) -> tuple[Origin, bytes]:
        parsed = self._urls.get(request.url)
        if parsed is None:
            parsed = _split(request.url)
            if len(self._urls) < 10_000:  # URLs come from the configuration: few
                self._urls[request.url] = parsed
        origin, target, host = parsed
        lines = [
            request.method.encode(),
            b" ",
            target,
            b" HTTP/1.1\r\nhost: ",
            host,
            b"\r\nuser-agent: ",
            USER_AGENT,
            b"\r\ncontent-length: ",
            str(len(request.body)).encode(),
            b"\r\n",
        ]
        for name, value in request.headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ConnectFailed(f"header {name!r} holds a line break")
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        lines += [b"\r\n", request.body]
        return origin, b"".join(lines)

    async def _exchange(self, request: HttpRequest, *, streaming: bool) -> _Connection:
        """Send the request; return its connection once the status and headers are in
        (streaming) or the whole answer is (plain). Retries once on a stale connection."""
        origin, data = self._encode(request)
        t = request.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total
        first, which = (t.first_byte, "first_byte") if t.first_byte < t.total else (t.total, "total")
        for attempt in (0, 1):
            conn = await self._acquire(origin, t.connect)
            timer = loop.call_later(first, self._timed_out, conn, which, first)
            try:
                conn.start(data, streaming=streaming)
                # `conn.wait()` inlined: the answer usually comes in one read, so one wait.
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    conn.waiter = loop.create_future()
                    try:
                        await conn.waiter
                    finally:
                        conn.waiter = None
                if not streaming and not conn.complete:
                    timer.cancel()
                    timer = loop.call_at(deadline, self._timed_out, conn, "total", t.total)
                    while not conn.complete:
                        await conn.wait()
            except _Stale:
                self._discard(conn)
                if attempt == 0:
                    continue
                raise ConnectionLost("the upstream closed the connection") from None
            except BaseException:
                self._discard(conn)  # cancelled or failed midway: the connection's state is unknown
                raise
            finally:
                timer.cancel()
            return conn
        raise AssertionError("unreachable")

    @staticmethod
    def _timed_out(conn: _Connection, which: str, seconds: float) -> None:
        conn._fail(ReadTimedOut(which, seconds))
        conn.close()

    async def send(self, request: HttpRequest) -> HttpResponse:
        conn = await self._exchange(request, streaming=False)
        status, headers = conn.status, conn.response_headers()
        body = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
        self._release(conn)
        return HttpResponse(status, headers, body)

    async def open(self, request: HttpRequest) -> _Stream:
        return _Stream(self, await self._exchange(request, streaming=True))

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the transports close


def headers_of(mapping: Mapping[str, str]) -> Headers:
    """A `Headers` from any mapping (for tests and the mock)."""
    out = Headers()
    for key, value in mapping.items():
        out[key.lower()] = value
    return out
