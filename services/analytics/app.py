"""Analytics service: consumes the usage stream into storage; usage API, dashboard,
stored completions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.analytics import api, completions, dashboard, deadletters, lag
from services.analytics.access import (
    Authenticate,
    Scope,
    acting_as,
    auth_service_access,
    master_key_access,
    narrow,
    scope_of,
)
from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.postgres import PostgresUsageStore
from services.analytics.query import Filters, Grouping
from services.analytics.sqlite import SqliteUsageStore
from services.analytics.store import ExpiredCallback, UsageStore
from services.auth.client import AuthClient
from services.kernel.errors import Forbidden, InvalidRequest
from services.kernel.principal import Principal
from services.kernel.service import ServiceApp, build_app, json_response
from services.kernel.settings import Settings
from services.kernel.stream import RedisUsageStream, UsageStream

log = logging.getLogger("gateway.analytics")
MAINTAIN_EVERY_S = 3600.0
LAG_EVERY_S = 5.0


async def open_store(settings: Settings, on_expired: ExpiredCallback | None = None) -> UsageStore:
    retention = settings.config.analytics.retention
    if settings.database_url:
        return await PostgresUsageStore.open(settings.database_url, retention, on_expired)
    return await SqliteUsageStore.open(settings.data_dir / "gateway.db", retention, on_expired)


async def _every(seconds: float, work: Callable[[], Awaitable[None]], name: str) -> None:
    """Run `work` now and then every `seconds`; a failure is logged and retried next time."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                f"{name} failed; will retry", extra={"error": type(exc).__name__, "detail": str(exc)[:200]}
            )
        await asyncio.sleep(seconds)


def create_app(
    settings: Settings,
    *,
    stream: UsageStream | None = None,
    process_metrics: bool = True,
    authenticate: Authenticate | None = None,
    auth: AuthClient | None = None,
) -> ServiceApp:
    """The analytics app. `stream` (and `auth`) are passed in by the embedded gateway;
    else Redis (and the auth service at AUTH_URL, when set). `authenticate` maps request
    headers to a `Principal`: by default the master key, or whoever auth says a virtual
    key or access token is."""
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    config = settings.config.analytics
    auth_client = auth
    if auth_client is None and settings.auth_url:
        made = AuthClient.over_http(settings.auth_url)
        assert isinstance(made, AuthClient)
        auth_client = made
    if authenticate is not None:
        who = authenticate
    elif auth_client is not None:
        who = auth_service_access(settings.master_key, auth_client)
    else:
        who = master_key_access(settings.master_key)

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
        store = await open_store(settings, metrics.expired.inc)
        consumer = UsageConsumer(
            usage_stream,
            store,
            metrics,
            name=socket.gethostname(),
            linger_ms=settings.config.usage.consumer_linger_ms,
        )
        task = asyncio.create_task(consumer.run(), name="usage-consumer")

        async def maintain() -> None:
            try:
                dropped = await store.maintain(time.time())
            except Exception:
                metrics.maintenance_failures.inc()
                raise
            for table, n in dropped.items():
                if n:
                    metrics.partitions_dropped.labels(table).inc(n)
                    log.info("retention dropped old data", extra={"table": table, "count": n})

        async def import_legacy() -> None:
            """Copy version 1's table into the new layout, a batch at a time, then stop."""
            while (copied := await store.import_legacy()) > 0:
                metrics.legacy_imported.inc(copied)
                await asyncio.sleep(0)  # the consumer goes on meanwhile

        async def measure_lag() -> None:
            entries, seconds = await lag.measure(usage_stream)
            metrics.lag_entries.set(entries)
            metrics.lag_seconds.set(seconds)

        chores = [
            asyncio.create_task(_every(MAINTAIN_EVERY_S, maintain, "retention"), name="analytics-retention"),
            asyncio.create_task(_every(LAG_EVERY_S, measure_lag, "lag"), name="analytics-lag"),
            asyncio.create_task(
                _every(MAINTAIN_EVERY_S, import_legacy, "legacy import"), name="legacy-import"
            ),
        ]
        app.state.store, app.state.stream, app.state.consumer = store, usage_stream, consumer
        try:
            yield
        finally:
            for chore in chores:
                chore.cancel()
            consumer.stop()
            task.cancel()
            await asyncio.gather(task, *chores, return_exceptions=True)
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

    async def principal_of(request: Request) -> Principal:
        headers = dict(request.scope["headers"])
        return acting_as(await who(headers), headers)

    async def scope(request: Request) -> Scope:
        return scope_of(await principal_of(request))

    async def admin(request: Request) -> None:
        if not (await scope(request)).everything:
            raise Forbidden("Only an administrator may do this.", code="forbidden")

    async def usage(request: Request) -> Response:
        return await api.usage(request, app.state.store, await scope(request), config)

    async def summary(request: Request) -> Response:
        return await api.summary(request, app.state.store, await scope(request), config)

    async def model_summary(request: Request) -> Response:
        """The first summary endpoint (requests and tokens per model), kept for its callers."""
        allowed = await scope(request)
        since = api.parse_time(request, "since")
        if request.query_params.get("since") == "":
            raise InvalidRequest("since must be unix seconds", param="since")
        key_id, team_id = narrow(allowed, request.query_params.get("key_id"), None)
        now = time.time()
        filters = Filters(
            start=int(since or 0) // 60 * 60, end=int(now // 60 + 1) * 60, key_id=key_id, team_id=team_id
        )
        rows = await app.state.store.usage(filters, Grouping(dimensions=("model", "provider")))
        data = [
            {
                "model": r["model"],
                "provider": r["provider"],
                "requests": r["requests"],
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
                "errors": r["client_errors"] + r["server_errors"],
                "avg_latency_ms": r["latency_ms"]["avg"],
                "cost": r["cost"],
            }
            for r in rows
        ]
        return json_response({"object": "list", "data": data})

    async def events(request: Request) -> Response:
        allowed = await scope(request)
        request_id = request.query_params.get("request_id")
        if not request_id or len(request_id) > 128:
            raise InvalidRequest("request_id (1-128 characters) is required", param="request_id")
        rows = await app.state.store.events(request_id, 100, key_id=allowed.key_id, team_id=allowed.team_id)
        return json_response({"object": "list", "data": rows})

    async def dead_letters(request: Request) -> Response:
        await admin(request)
        return await deadletters.list_dead_letters(request, app.state.stream, metrics)

    async def replay(request: Request) -> Response:
        await admin(request)
        return await deadletters.replay_dead_letters(request, app.state.stream, metrics)

    async def list_completions(request: Request) -> Response:
        return await completions.list_completions(request, app.state.store, await scope(request))

    async def get_completion(request: Request) -> Response:
        return await completions.get_completion(request, app.state.store, await scope(request))

    async def update_completion(request: Request) -> Response:
        return await completions.update_completion(request, app.state.store, await scope(request))

    async def delete_completion(request: Request) -> Response:
        return await completions.delete_completion(request, app.state.store, await scope(request))

    async def list_messages(request: Request) -> Response:
        return await completions.list_messages(request, app.state.store, await scope(request))

    async def store_completion(request: Request) -> Response:
        principal = await principal_of(request)
        return await completions.store_completion(
            request, app.state.store, principal, config.max_stored_bytes
        )

    routes: list[BaseRoute] = [
        Route("/v1/usage", usage, methods=["GET"]),
        Route("/v1/stats/summary", summary, methods=["GET"]),
        Route("/v1/usage/summary", model_summary, methods=["GET"]),
        Route("/v1/usage/events", events, methods=["GET"]),
        Route("/v1/usage/dead-letters", dead_letters, methods=["GET"]),
        Route("/v1/usage/dead-letters/replay", replay, methods=["POST"]),
        Route("/v1/chat/completions", list_completions, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", get_completion, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", update_completion, methods=["POST"]),
        Route("/v1/chat/completions/{completion_id}", delete_completion, methods=["DELETE"]),
        Route("/v1/chat/completions/{completion_id}/messages", list_messages, methods=["GET"]),
        Route("/internal/completions", store_completion, methods=["POST"]),
        *dashboard.routes(config),
    ]
    app = build_app(
        "analytics",
        routes=routes,
        lifespan=lifespan,
        ready=ready,
        registry=registry,
        process_metrics=process_metrics,
    )
    return app
