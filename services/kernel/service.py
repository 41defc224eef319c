"""The app builder every service uses: health, readiness, metrics, errors, request ids."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kernel.errors import GatewayError, MethodNotAllowed, NotFound, error_response
from services.kernel.ids import new_id

log = logging.getLogger("gateway.service")

ReadyCheck = Callable[[], Awaitable[dict[str, str]]]
"""Returns one status per dependency: "ok", or a short reason. Any non-ok → 503."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


class RequestIdMiddleware:
    """Accept a sane `x-request-id` from the client or make one; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    rid = candidate
                break
        if rid is None:
            rid = new_id()
        scope.setdefault("state", {})["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(k == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", raw))
            await send(message)

        await self.app(scope, receive, send_with_id)


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class HttpMetricsMiddleware:
    """Requests and their latency by route template (never the raw path: bounded) and status."""

    def __init__(self, app: ASGIApp, service: str, registry: CollectorRegistry) -> None:
        self.app = app
        self.service = service
        self.requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests answered by the service's routes (the router's model endpoints are"
            " counted in gateway_requests_total), by route template, method and status",
            ["service", "route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["service", "route"],
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = str(getattr(route, "path", "")) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.requests.labels(self.service, template, method, str(status)).inc()
            self.duration.labels(self.service, template).observe(time.perf_counter() - started)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: GatewayError = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = MethodNotAllowed(
            f"method {request.method} is not allowed on {request.url.path}", headers=exc.headers
        )
    else:
        err = GatewayError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "api_error"
        err.code = None
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(GatewayError("internal error"))


class ServiceApp(Starlette):
    """A service's ASGI app with what the server needs of it, as typed attributes."""

    service_name: str
    registries: list[CollectorRegistry]  # the app's own first, then embedded helpers'

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of every registry of this app."""
        return b"".join(generate_latest(r) for r in self.registries)


def build_app(
    name: str,
    *,
    routes: Sequence[BaseRoute],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]],
    ready: ReadyCheck | None = None,
    registry: CollectorRegistry | None = None,
    process_metrics: bool = True,
    app_class: type[ServiceApp] = ServiceApp,
) -> ServiceApp:
    """A service app with `/healthz`, `/readyz`, `/metrics` and OpenAI-format errors."""
    registry = registry or CollectorRegistry()
    if process_metrics:
        ProcessCollector(registry=registry)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "service": name})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        if ready is not None:
            try:
                checks = await asyncio.wait_for(ready(), timeout=2.0)
            except TimeoutError:
                checks = {"readiness": "timed out"}
        ok = all(v == "ok" for v in checks.values())
        return json_response(
            {"status": "ok" if ok else "unavailable", "service": name, "checks": checks},
            200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        return Response(app.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    base: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {
        GatewayError: _gateway_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    app = app_class(routes=[*base, *routes], lifespan=lifespan, exception_handlers=handlers)
    app.service_name = name
    app.registries = [registry]
    app.add_middleware(RequestIdMiddleware)
    if process_metrics:
        # Per process, like the process collector: an app embedded in another (the gateway's
        # helpers) is counted by its host, so one scrape never repeats a metric family.
        app.add_middleware(HttpMetricsMiddleware, service=name, registry=registry)
    return app
