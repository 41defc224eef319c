"""Analytics service: consumes the usage stream into storage; usage API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.analytics import deadletters
from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.store import PostgresUsageStore, SqliteUsageStore, UsageStore
from services.auth.client import AdminGate, AuthClient
from services.kernel.errors import InvalidRequest
from services.kernel.service import ServiceApp, build_app, json_response
from services.kernel.settings import Settings
from services.kernel.stream import RedisUsageStream, UsageStream

log = logging.getLogger("gateway.analytics")


async def open_store(settings: Settings) -> UsageStore:
    if settings.database_url:
        return await PostgresUsageStore.open(settings.database_url)
    return await SqliteUsageStore.open(settings.data_dir / "gateway.db")


def _float_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number (unix seconds)", param=name) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative number", param=name)
    return value


def create_app(
    settings: Settings,
    *,
    stream: UsageStream | None = None,
    process_metrics: bool = True,
    auth: AuthClient | None = None,
) -> ServiceApp:
    """The analytics app. `stream` (and `auth`) are passed in by the embedded gateway;
    else Redis (and the auth service at AUTH_URL, when set)."""
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    # The API takes the master key, or an admin's virtual key or access token (asked of auth).
    auth_client = auth
    if auth_client is None and settings.auth_url:
        made = AuthClient.over_http(settings.auth_url)
        assert isinstance(made, AuthClient)
        auth_client = made
    gate = AdminGate(settings.master_key, auth_client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = None
        usage_stream = stream
        if usage_stream is None:
            if not settings.redis_url:
                raise RuntimeError("REDIS_URL is required for the analytics service")
            redis = aioredis.from_url(settings.redis_url)
            usage = settings.config.usage
            usage_stream = RedisUsageStream(
                redis,
                usage.stream,
                usage.group,
                dead_letter=usage.dead_letter_stream,
                dead_letter_max=usage.dead_letter_max,
            )
        store = await open_store(settings)
        consumer = UsageConsumer(usage_stream, store, metrics, name=socket.gethostname())
        task = asyncio.create_task(consumer.run(), name="usage-consumer")
        app.state.store, app.state.stream, app.state.consumer = store, usage_stream, consumer
        try:
            yield
        finally:
            consumer.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await consumer.drain()
            except Exception as exc:  # left pending in the stream; stored by the next start
                log.warning("usage drain incomplete", extra={"error": type(exc).__name__})
            await store.close()
            if redis is not None:
                await redis.aclose()
            if auth is None and auth_client is not None:
                await auth_client.aclose()

    async def ready() -> dict[str, str]:
        store_status, stream_status = await asyncio.gather(app.state.store.check(), app.state.stream.check())
        return {"store": store_status, "stream": stream_status}

    async def summary(request: Request) -> Response:
        await gate.require_admin(request.scope)
        since = _float_param(request, "since")
        key_id = request.query_params.get("key_id")
        rows = await app.state.store.summary(since, key_id)
        return json_response({"object": "list", "data": rows})

    async def events(request: Request) -> Response:
        await gate.require_admin(request.scope)
        request_id = request.query_params.get("request_id")
        if not request_id or len(request_id) > 128:
            raise InvalidRequest("request_id (1-128 characters) is required", param="request_id")
        rows = await app.state.store.events(request_id, 100)
        return json_response({"object": "list", "data": rows})

    async def dead_letters(request: Request) -> Response:
        await gate.require_admin(request.scope)
        return await deadletters.list_dead_letters(request, app.state.stream, metrics)

    async def replay(request: Request) -> Response:
        await gate.require_admin(request.scope)
        return await deadletters.replay_dead_letters(request, app.state.stream, metrics)

    app = build_app(
        "analytics",
        routes=[
            Route("/v1/usage/summary", summary, methods=["GET"]),
            Route("/v1/usage/events", events, methods=["GET"]),
            Route("/v1/usage/dead-letters", dead_letters, methods=["GET"]),
            Route("/v1/usage/dead-letters/replay", replay, methods=["POST"]),
        ],
        lifespan=lifespan,
        ready=ready,
        registry=registry,
        process_metrics=process_metrics,
    )
    return app
