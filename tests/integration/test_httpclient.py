"""The provider HTTP client against real sockets: raw servers that answer exactly as
each case needs (chunked, close-delimited, stale keep-alive, malformed, slow, TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.router.httpclient import NativeTransport
from services.router.providers.base import HttpRequest, Timeouts
from services.router.sender import ConnectFailed, ConnectionLost, ConnectTimedOut, ReadTimedOut

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DEADLINE_S = 20.0


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    state = Server()
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                await handler(reader, writer)
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def request(
    port: int, *, read: float = 5.0, headers: dict[str, str] | None = None, scheme: str = "http"
) -> HttpRequest:
    return HttpRequest(
        url=f"{scheme}://127.0.0.1:{port}/v1/chat/completions",
        headers=headers or {"content-type": "application/json", "authorization": "Bearer k"},
        body=b'{"model": "m"}',
        timeouts=Timeouts(connect=2.0, first_byte=read, total=read * 2, idle=read),
    )


def answer(body: bytes, *, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


@pytest.fixture
async def client() -> AsyncIterator[NativeTransport]:
    transport = NativeTransport(max_body_bytes=1024 * 1024)
    yield transport
    await transport.aclose()


async def keep_answering(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        server.requests.append(await read_request(reader))
        writer.write(answer(b'{"ok": %d}' % len(server.requests)))
        await writer.drain()


async def test_plain_answers_reuse_one_keep_alive_connection(client):
    server_ref: list[Server] = []

    async def handler(reader, writer):
        await keep_answering(server_ref[0], reader, writer)

    async with serve(handler) as server:
        server_ref.append(server)
        first = await client.send(request(server.port))
        second = await client.send(request(server.port))
    assert (first.status, first.body, second.body) == (200, b'{"ok": 1}', b'{"ok": 2}')
    assert first.headers["Content-Type"] == "application/json"  # case-insensitive
    assert first.headers.get("CONTENT-TYPE") == "application/json"
    assert server.connections == 1
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer k\r\n" in sent
    assert b"accept-encoding" not in sent.lower()  # answers are never compressed
    assert sent.endswith(b'\r\n\r\n{"model": "m"}')


async def test_chunked_and_close_delimited_bodies(client):
    async def chunked(reader, writer):
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(DEADLINE_S)

    async def until_close(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\neverything until the end")
        await writer.drain()

    async with serve(chunked) as server:
        assert (await client.send(request(server.port))).body == b"hello world"
    async with serve(until_close) as server:
        assert (await client.send(request(server.port))).body == b"everything until the end"


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_transparently(client):
    async def one_answer_then_close(reader, writer):
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        # the server's keep-alive timeout: it closes the idle connection

    async with serve(one_answer_then_close) as server:
        await client.send(request(server.port))
        await asyncio.sleep(0.05)  # let the close arrive; the pool does not know yet
        again = await client.send(request(server.port))
    assert again.status == 200
    assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry(client):
    async def hang_up(reader, writer):
        await read_request(reader)

    async with serve(hang_up) as server:
        with pytest.raises(ConnectionLost):
            await client.send(request(server.port))
    assert server.connections == 1


async def test_no_answer_in_time_is_a_read_timeout_and_the_connection_is_not_reused(client):
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(DEADLINE_S)

    async with serve(silent) as server:
        with pytest.raises(ReadTimedOut):
            await client.send(request(server.port, read=0.2))
    assert client._open == 0


async def test_refused_connection_and_malformed_or_oversized_answers(client):
    async with serve(lambda r, w: asyncio.sleep(0)) as server:
        port = server.port
    with pytest.raises(ConnectFailed):
        await client.send(request(port))  # nothing listens there any more

    async def garbage(reader, writer):
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(DEADLINE_S)

    async with serve(garbage) as server:
        with pytest.raises(ConnectionLost, match="malformed"):
            await client.send(request(server.port))

    async def huge(reader, writer):
        await read_request(reader)
        writer.write(answer(b"x" * (2 * 1024 * 1024)))
        await writer.drain()

    async with serve(huge) as server:
        with pytest.raises(ConnectionLost, match="larger than"):
            await client.send(request(server.port))
    assert client._open == 0


async def test_a_redirect_is_returned_not_followed(client):
    server_ref: list[Server] = []

    async def redirect(reader, writer):
        server_ref[0].requests.append(await read_request(reader))
        writer.write(
            answer(b"", status=b"307 Temporary Redirect", extra=b"location: http://127.0.0.1:1/\r\n")
        )
        await writer.drain()
        await asyncio.sleep(DEADLINE_S)

    async with serve(redirect) as server:
        server_ref.append(server)
        response = await client.send(request(server.port))
    assert response.status == 307
    assert len(server.requests) == 1


async def test_a_header_with_a_line_break_is_refused_before_sending(client):
    with pytest.raises(ConnectFailed, match="line break"):
        await client.send(request(1, headers={"x-evil": "a\r\nhost: elsewhere"}))


async def test_streams_arrive_as_sent_and_reading_pauses_for_a_slow_consumer(client):
    release = asyncio.Event()
    big = b"y" * (4 * 1024 * 1024)

    async def stream(reader, writer):
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\nfirst\r\n" % 5)
        await writer.drain()
        await release.wait()
        writer.write(b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n")
        await writer.drain()

    async with serve(stream) as server:
        opened = await client.open(request(server.port))
        assert opened.status == 200
        assert opened.headers["content-type"] == "text/event-stream"
        pieces = opened.chunks()
        assert await asyncio.wait_for(anext(pieces), DEADLINE_S) == b"first"  # before the rest exists
        release.set()
        # The server pushes 4 MiB nobody reads yet: the client must stop reading.
        async with asyncio.timeout(DEADLINE_S):
            while not opened.conn.paused:
                await asyncio.sleep(0.01)
        assert opened.conn.size < 2 * 1024 * 1024
        total = 0
        async for piece in pieces:
            total += len(piece)
        assert total == len(big)
        await opened.aclose()
    assert client._open == 1  # complete: back in the pool


async def test_a_stream_closed_early_does_not_go_back_to_the_pool(client):
    async def endless(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"3\r\nabc\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with serve(endless) as server:
        opened = await client.open(request(server.port))
        await anext(opened.chunks())
        await opened.aclose()
    assert client._open == 0
    assert not any(client._idle.values())


async def test_a_full_pool_makes_callers_wait_and_then_time_out():
    client = NativeTransport(max_connections=1)

    async def endless(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(DEADLINE_S)

    try:
        async with serve(endless) as server:
            held = await client.open(request(server.port))
            quick = HttpRequest(
                url=f"http://127.0.0.1:{server.port}/",
                headers={},
                body=b"",
                timeouts=Timeouts(connect=0.2, first_byte=1, total=1, idle=1),
            )
            with pytest.raises(ConnectTimedOut, match="no free connection"):
                await client.send(quick)
            await held.aclose()
    finally:
        await client.aclose()


async def test_a_cancelled_request_leaves_nothing_open(client):
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(DEADLINE_S)

    async with serve(silent) as server:
        call = asyncio.create_task(client.send(request(server.port)))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert client._open == 0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_tls_is_verified(certificate):
    key, cert = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(answer(b'{"tls": true}'))
        await writer.drain()

    trusting = NativeTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = NativeTransport()
    try:
        async with serve(handler, tls=server_tls) as server:
            response = await trusting.send(request(server.port, scheme="https"))
            assert response.body == b'{"tls": true}'
            with pytest.raises(ConnectFailed):  # an unknown certificate authority
                await default.send(request(server.port, scheme="https"))
    finally:
        await trusting.aclose()
        await default.aclose()
