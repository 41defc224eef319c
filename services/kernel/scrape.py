"""The metrics page of a process: rendered off the event loop, and who may read it.

Rendering a registry is plain Python holding the GIL; a large page rendered on
the event loop stalls every request of the process for as long (a 22 MB page of
230,000 lines: 4-6 s here). `MetricsPage` renders in a thread, one render at a
time, so the loop keeps getting the GIL in slices (the switch interval, 5 ms)
while the page is built. The cyclic garbage collector is paused meanwhile: the
render allocates enough tuples to set off full collections, each of which walks
every label child of the registry and stops all threads (0.3 s apiece on that
page); the render's own objects are freed by reference counting anyway. With
both, the worst /healthz latency during that render fell from 3.6-7.1 s to
0.04-0.19 s.

Who reads it: on a metrics port, anyone who reaches that port (keep it off the
public network); on the public port, only a bearer of the metrics key; the
public port answers 404 on its metrics routes when a metrics port exists.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from services.kernel.errors import GatewayError, MethodNotAllowed, NotFound, Unauthorized
from services.kernel.service import ServiceApp

METRICS_PATH = "/metrics"


class MetricsPage:
    """Renders one process's page in a thread, one render at a time: a large page holds
    the GIL in slices, never the event loop for its whole length."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        self._render = render
        self._lock = asyncio.Lock()

    async def __call__(self) -> bytes:
        async with self._lock:
            return await asyncio.to_thread(self._render_without_gc)

    def _render_without_gc(self) -> bytes:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._render()
        finally:
            if enabled:
                gc.enable()


def process_page(app: ServiceApp, registry: CollectorRegistry) -> Callable[[], bytes]:
    return lambda: app.render_metrics() + generate_latest(registry)


async def _send_error(send: Send, exc: GatewayError) -> None:
    payload = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class MetricsEndpoint:
    """ASGI: `GET /metrics` from `page` (with a bearer `key` when given); 404 when `page` is None."""

    def __init__(self, page: Callable[[], Awaitable[bytes]] | None, *, key: str | None = None) -> None:
        self.page = page
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.page is None:
            await _send_error(send, NotFound(f"no route for {scope['method']} {scope['path']}"))
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send_error(
                send,
                MethodNotAllowed(f"method {scope['method']} is not allowed", headers={"allow": "GET, HEAD"}),
            )
            return
        if self.key is not None and not self._authorized(scope):
            await _send_error(send, Unauthorized("The metrics need 'Authorization: Bearer <key>'."))
            return
        body = await self.page()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        assert self.key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


def metrics_only(endpoint: MetricsEndpoint) -> ASGIApp:
    """The app of a metrics port: `/metrics`, and 404 for anything else."""
    missing = MetricsEndpoint(None)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS_PATH:
            await endpoint(scope, receive, send)
        else:
            await missing(scope, receive, send)

    return app


def metrics_paths(app: ServiceApp) -> frozenset[str]:
    """`/metrics` and the metrics route of every service app mounted in `app`."""
    paths = {METRICS_PATH}
    for route in app.routes:
        if isinstance(route, Mount) and isinstance(route.app, ServiceApp):
            paths.add(route.path.rstrip("/") + METRICS_PATH)
    return frozenset(paths)


def guard_public_metrics(app: ServiceApp, endpoint: MetricsEndpoint) -> ASGIApp:
    """The public app, with its metrics routes answered by `endpoint` (key or 404) instead."""
    paths = metrics_paths(app)

    async def public(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in paths:
            await endpoint(scope, receive, send)
        else:
            await app(scope, receive, send)

    return public
