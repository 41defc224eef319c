"""The floor: a bare relay of the fake upstream, the least a Python proxy can cost.

    .venv/bin/python bench/floor.py --port 18300 \\
        --upstream http://127.0.0.1:18001 --stream-upstream http://127.0.0.1:18002

One uvicorn process (uvloop + httptools, as the gateway runs) serving a raw ASGI
app that reads the request body, forwards it with the router's own provider client
(`services/router/httpclient.py`, opened in the lifespan; `--client aiohttp` uses
aiohttp instead) and relays status, content-type and body; event streams are relayed
chunk by chunk as they arrive. Nothing else: no validation, no authentication, no
usage, no metrics, no logging. What the gateway costs beyond this row is what its
own code costs: the floor and the gateway forward with the same client, so a faster
client makes the floor faster too.

The benchmark's upstream answers JSON on one port and SSE on another, so the relay
picks the upstream by a byte search for `"stream": true` in the body; it does not
parse the JSON. `GET /readyz` answers 200 once the client is open.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

from services.router.httpclient import NativeTransport
from services.router.providers.base import HttpRequest, Timeouts
from services.router.sender import TransportError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')
UPSTREAM_HEADERS = {"content-type": "application/json"}
# Generous: the relay must never be the one that gives up first in a run.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
NATIVE_TIMEOUTS = Timeouts(connect=10, first_byte=300, total=300, idle=300)


def create_app(upstream: str, stream_upstream: str, client: str = "native") -> ASGIApp:
    """The relay as an ASGI app; `upstream`/`stream_upstream` are base URLs; `client` is the
    HTTP client that forwards: `native` (the gateway's own provider client,
    services/router/httpclient.py, so the floor is what the gateway could cost at least) or
    `aiohttp` (what a typical Python relay uses)."""
    plain_url = upstream.rstrip("/") + "/v1/chat/completions"
    stream_url = stream_upstream.rstrip("/") + "/v1/chat/completions"
    clients: list[Any] = []

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if client == "native":
                    clients.append(NativeTransport())
                else:
                    connector = aiohttp.TCPConnector(
                        limit=4096, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
                    )
                    clients.append(
                        aiohttp.ClientSession(
                            connector=connector,
                            timeout=TIMEOUT,
                            skip_auto_headers=("User-Agent",),
                            headers={"user-agent": "llm-gateway-floor"},
                        )
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for opened in clients:
                    await (opened.aclose() if client == "native" else opened.close())
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def plain(send: Send, status: int, content_type: bytes, body: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def read(receive: Receive) -> bytes | None:
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return body

    async def relay_native(receive: Receive, send: Send) -> None:
        body = await read(receive)
        if body is None:
            return
        url = stream_url if STREAM_FLAG.search(body) else plain_url
        request = HttpRequest(url, UPSTREAM_HEADERS, body, NATIVE_TIMEOUTS)
        transport: NativeTransport = clients[0]
        started = False
        try:
            if url is plain_url:
                response = await transport.send(request)
                content_type = response.headers.get("content-type", "application/octet-stream").encode()
                await plain(send, response.status, content_type, response.body)
                return
            stream = await transport.open(request)
            try:
                content_type = stream.headers.get("content-type", "application/octet-stream").encode()
                headers = [(b"content-type", content_type)]
                await send({"type": "http.response.start", "status": stream.status, "headers": headers})
                started = True
                async for chunk in stream.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await stream.aclose()
        except TransportError as exc:
            if started:
                raise  # a stream cut midway: uvicorn closes the connection
            error = f'{{"error":{{"message":"upstream: {type(exc).__name__}","type":"api_error"}}}}'
            await plain(send, 502, b"application/json", error.encode())

    async def relay_aiohttp(receive: Receive, send: Send) -> None:
        body = await read(receive)
        if body is None:
            return
        url = stream_url if STREAM_FLAG.search(body) else plain_url
        started = False
        try:
            async with clients[0].post(url, data=body, headers=UPSTREAM_HEADERS) as response:
                content_type = response.headers.get("content-type", "application/octet-stream").encode()
                if not content_type.startswith(b"text/event-stream"):
                    await plain(send, response.status, content_type, await response.read())
                    return
                headers = [(b"content-type", content_type)]
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                started = True
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (TimeoutError, aiohttp.ClientError) as exc:
            if started:
                raise  # a stream cut midway: uvicorn closes the connection
            error = f'{{"error":{{"message":"upstream: {type(exc).__name__}","type":"api_error"}}}}'
            await plain(send, 502, b"application/json", error.encode())

    relay = relay_native if client == "native" else relay_aiohttp

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["method"] == "GET" and scope["path"] == "/readyz":
                await plain(send, 200 if clients else 503, b"text/plain", b"ok")
            else:
                await relay(receive, send)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL answering JSON")
    parser.add_argument("--stream-upstream", required=True, help='base URL for "stream": true')
    parser.add_argument("--client", choices=("native", "aiohttp"), default="native")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.stream_upstream, args.client),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
        backlog=4096,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
