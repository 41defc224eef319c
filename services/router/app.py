"""The router app: the gateway's public ingress."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.analytics.client import AnalyticsClient
from services.auth.client import AuthClient
from services.cache.client import CacheClient
from services.classifier.client import ClassifierClient
from services.kernel.client import ServiceClient
from services.kernel.errors import ServiceUnavailable
from services.kernel.lifecycle import Lifecycle
from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings
from services.kernel.stream import RedisUsageStream, UsageStream
from services.router.endpoints import Endpoints
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.upstream import AiohttpUpstream
from services.router.usage import UsagePublisher


@dataclasses.dataclass
class Helpers:
    """Clients of the helper services; any may be absent (not configured)."""

    auth: ServiceClient | None = None
    classifier: ServiceClient | None = None
    cache: ServiceClient | None = None
    analytics: ServiceClient | None = None

    @classmethod
    def over_http(cls, settings: Settings) -> Helpers:
        def make(client: type[ServiceClient], url: str | None) -> ServiceClient | None:
            return client.over_http(url) if url else None

        return cls(
            auth=make(AuthClient, settings.auth_url),
            classifier=make(ClassifierClient, settings.classifier_url),
            cache=make(CacheClient, settings.cache_url),
            analytics=make(AnalyticsClient, settings.analytics_url),
        )

    def present(self) -> dict[str, ServiceClient]:
        return {f.name: c for f in dataclasses.fields(self) if (c := getattr(self, f.name)) is not None}


def create_app(
    settings: Settings,
    *,
    stream: UsageStream | None = None,
    helpers: Helpers | None = None,
    sub_apps: Sequence[ServiceApp] = (),
    lifecycle: Lifecycle | None = None,
) -> ServiceApp:
    """The router. Embedded, `stream`, `helpers` and `sub_apps` come from the gateway
    module; distributed, they are built from the settings (Redis, service URLs)."""
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    lifecycle = lifecycle or Lifecycle()
    config = settings.config

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # Helper services start first and stop last, after the router has drained.
            for sub in sub_apps:
                await stack.enter_async_context(sub.router.lifespan_context(sub))
            service.registries[1:] = [r for sub in sub_apps for r in sub.registries]

            usage_stream = stream
            if usage_stream is None:
                if not settings.redis_url:
                    raise RuntimeError("REDIS_URL is required for the router in distributed mode")
                redis = aioredis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
                stack.push_async_callback(redis.aclose)
                usage_stream = RedisUsageStream(redis, config.usage.stream, config.usage.group)

            clients = helpers or Helpers.over_http(settings)
            for client in clients.present().values():
                stack.push_async_callback(client.aclose)
            app.state.helpers = clients

            http = AiohttpUpstream.open()
            stack.push_async_callback(http.aclose)

            publisher = UsagePublisher(
                usage_stream,
                Spool(settings.data_dir / "spool"),
                metrics,
                flush_interval=config.usage.flush_interval_ms / 1000,
                max_batch=config.usage.max_batch,
                max_buffered=config.usage.max_buffered_events,
            )
            task = asyncio.create_task(publisher.run(), name="usage-publisher")

            async def stop_publisher() -> None:
                await _cancel(task)
                await publisher.aclose()

            stack.push_async_callback(stop_publisher)
            watch = asyncio.create_task(watch_helpers(clients, metrics), name="helper-probes")
            stack.push_async_callback(_cancel, watch)
            endpoints.bind(
                Endpoints(
                    models=dict(settings.catalog.models),
                    master_key=settings.master_key,
                    max_body_bytes=config.server.max_body_bytes,
                    http=http,
                    publisher=publisher,
                    metrics=metrics,
                    created=int(time.time()),
                    access_log=config.server.access_log,
                )
            )
            yield

    async def ready() -> dict[str, str]:
        return {"models": "ok" if settings.catalog.models else "no model has a usable deployment"}

    endpoints = _Late()
    routes = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route(f"{prefix}/embeddings", endpoints.embeddings, methods=["POST"]),
            Route(f"{prefix}/models", endpoints.list_models, methods=["GET"]),
            Route(f"{prefix}/models/{{model:path}}", endpoints.get_model, methods=["GET"]),
        ]
    service = build_app("router", routes=routes, lifespan=lifespan, ready=ready, registry=registry)
    return service


async def watch_helpers(helpers: Helpers, metrics: RouterMetrics, every: float = 5.0) -> None:
    """Probe the helpers' readiness in the background; the request path never waits on it."""
    while True:
        present = helpers.present()
        results = await asyncio.gather(*(c.ready() for c in present.values()))
        for name, status in zip(present, results, strict=True):
            metrics.helper_ready.labels(name).set(1 if status == "ok" else 0)
        await asyncio.sleep(every)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Late:
    """Routes exist before the lifespan opens their dependencies; it binds them then."""

    def __init__(self) -> None:
        self.target: Endpoints | None = None

    def bind(self, target: Endpoints) -> None:
        self.target = target

    def _get(self) -> Endpoints:
        if self.target is None:
            raise ServiceUnavailable("the gateway is starting")
        return self.target

    async def chat_completions(self, request: Request) -> Response:
        return await self._get().chat_completions(request)

    async def embeddings(self, request: Request) -> Response:
        return await self._get().embeddings(request)

    async def list_models(self, request: Request) -> Response:
        return await self._get().list_models(request)

    async def get_model(self, request: Request) -> Response:
        return await self._get().get_model(request)
