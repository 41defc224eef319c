"""The auth service: teams, users, roles, virtual keys, budgets, JWT and the audit log,
behind the admin API (`api.py`); routers read key records through `/v1/internal/introspect`,
the shared Redis cache and the invalidation channel (`changes.py`).

Distributed, it keeps its accounts in PostgreSQL and talks to Redis; embedded, it
keeps them in a SQLite file (`<data dir>/auth.db`) and tells the in-process router
about changes through `MemoryInvalidations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge
from starlette.applications import Starlette

from services.auth import api
from services.auth.admin import Admin
from services.auth.callers import Callers, LoginThrottle
from services.auth.changes import Changes
from services.auth.client import MemoryInvalidations, RedisSpend, SpendReader, TokenVerifier
from services.auth.database import open_database
from services.auth.passwords import Passwords
from services.auth.signing import Signer
from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings

log = logging.getLogger("gateway.auth")
ROTATION_CHECK_S = 60.0


def model_names(settings: Settings) -> dict[str, str]:
    """Every configured public name and alias → its public name (deployments or not)."""
    names: dict[str, str] = {}
    for model in settings.config.models:
        names[model.name] = model.name
        names.update(dict.fromkeys(model.aliases, model.name))
    return names


def key_secret(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The passphrase of the signing keys at rest: `auth.jwt.key_secret_env`, else the master key."""
    name = settings.config.auth.jwt.key_secret_env
    if name is None:
        return settings.master_key
    value = (env if env is not None else os.environ).get(name, "")
    if len(value) < 8:
        raise RuntimeError(f"auth.jwt.key_secret_env names {name}: set it to at least 8 characters")
    return value


def create_app(
    settings: Settings,
    *,
    process_metrics: bool = True,
    invalidations: MemoryInvalidations | None = None,
    spend: SpendReader | None = None,
) -> ServiceApp:
    """The auth app. Embedded, `invalidations` (the in-process channel) and `spend` (the
    router's local counters) come from the gateway module; distributed, Redis serves both."""
    config = settings.config.auth
    registry = CollectorRegistry()
    pending = Gauge(
        "gateway_auth_invalidations_pending",
        "Changed records not yet pushed to Redis (it was unreachable)",
        registry=registry,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            db = await open_database(settings.database_url, settings.data_dir)
            stack.push_async_callback(db.close)
            redis = None
            if settings.redis_url:
                redis = aioredis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
                stack.push_async_callback(redis.aclose)
            signer = Signer(db, config.jwt, key_secret(settings))
            await signer.start()
            changes = Changes(
                db, redis=redis, memory=invalidations, prefix=config.redis_prefix, ttl_s=config.redis_ttl_s
            )
            pending.set_function(lambda: len(changes.pending))
            app.state.db = db
            app.state.admin = Admin(
                db=db,
                config=config,
                callers=Callers(db, settings.master_key, signer, TokenVerifier(config.jwt)),
                signer=signer,
                passwords=Passwords(config.login.scrypt_n, config.login.scrypt_p),
                changes=changes,
                throttle=LoginThrottle(
                    redis, config.redis_prefix, config.login.max_failures, config.login.failure_window_s
                ),
                spend=spend or (RedisSpend(redis, config.redis_prefix) if redis else None),
                models=model_names(settings),
                regions=settings.config.region.names,
                document=api.document(),
            )
            tasks = [
                asyncio.create_task(changes.run(), name="auth-invalidation-retry"),
                asyncio.create_task(_rotate_when_due(signer), name="auth-key-rotation"),
            ]
            for task in tasks:
                stack.push_async_callback(_cancel, task)
            yield

    async def ready() -> dict[str, str]:
        return {"database": await app.state.db.check()}

    app = build_app(
        "auth",
        routes=api.routes(),
        lifespan=lifespan,
        ready=ready,
        registry=registry,
        process_metrics=process_metrics,
    )
    return app


async def _rotate_when_due(signer: Signer) -> None:
    while True:
        await asyncio.sleep(ROTATION_CHECK_S)
        try:
            if await signer.maybe_rotate():
                log.info("signing key rotated", extra={"kid": signer.kid})
        except Exception as exc:  # the database may be away: try again at the next check
            log.warning("signing key rotation check failed", extra={"error": type(exc).__name__})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
