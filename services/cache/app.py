"""Cache service. The exact and semantic response cache arrives with its own issue;
until then this app offers its probes and metrics, and its readiness reports the
Redis it will keep entries in (distributed mode)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette

from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings


def create_app(settings: Settings, *, process_metrics: bool = True) -> ServiceApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = aioredis.from_url(settings.redis_url) if settings.redis_url else None
        try:
            yield
        finally:
            if app.state.redis is not None:
                await app.state.redis.aclose()

    async def ready() -> dict[str, str]:
        redis = app.state.redis
        if redis is None:
            return {}
        try:
            await redis.ping()
        except (OSError, aioredis.RedisError) as exc:
            return {"redis": f"unreachable: {type(exc).__name__}"}
        return {"redis": "ok"}

    app = build_app("cache", routes=[], lifespan=lifespan, ready=ready, process_metrics=process_metrics)
    return app
