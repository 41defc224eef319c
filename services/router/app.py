"""The router app: the gateway's public ingress. Its lifespan builds every stage of the
request path and yields them as typed state (see `ingress.RouterState`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.analytics.client import AnalyticsClient
from services.auth.client import AuthClient
from services.cache.client import CacheClient
from services.classifier.client import ClassifierClient, RuleClassifier
from services.kernel.client import ServiceClient
from services.kernel.errors import MethodNotAllowed
from services.kernel.lifecycle import Lifecycle
from services.kernel.redact import Redactor
from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings
from services.kernel.stream import RedisUsageStream, UsageStream
from services.router.autoroute import AutoResolver
from services.router.caching import GatewayCache
from services.router.dialect import dialects
from services.router.dispatch import Dispatcher
from services.router.httpclient import NativeTransport
from services.router.ingress import ModelCards, RouterApp, RouterState
from services.router.keys import AccessTokens, AuthMetrics, KeyAuthenticator, KeyDirectory
from services.router.limits import LimitAdmission, LocalCounters
from services.router.metrics import RouterMetrics
from services.router.pipeline import Pipeline
from services.router.providers import adapters
from services.router.providers.mock import mock_transport
from services.router.reachability import Reachability
from services.router.regions import RegionPolicy
from services.router.relay import Relay
from services.router.routing import CatalogResolver
from services.router.sender import Sender, Transport
from services.router.settle import Background, Settler
from services.router.spool import Spool
from services.router.stages import (
    Admission,
    Authenticator,
    MasterKeyAuthenticator,
    NoCache,
    Resolver,
    ResponseCache,
    Unlimited,
)
from services.router.stored import StoredCompletions
from services.router.tracing import Tracing
from services.router.usage import UsagePublisher

log = logging.getLogger("gateway.router")


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


@dataclasses.dataclass
class Stages:
    """Stages to use instead of the defaults (tests, and capabilities wired in by the gateway)."""

    authenticator: Authenticator | None = None
    resolver: Resolver | None = None
    admission: Admission | None = None
    cache: ResponseCache | None = None
    network: Transport | None = None  # the provider transport under the shared sender
    tracing: Tracing | None = None  # default: built from `tracing:` when enabled


def create_app(
    settings: Settings,
    *,
    stream: UsageStream | None = None,
    helpers: Helpers | None = None,
    sub_apps: Sequence[ServiceApp] = (),
    lifecycle: Lifecycle | None = None,
    stages: Stages | None = None,
    counters: LocalCounters | None = None,
) -> ServiceApp:
    """The router. Embedded, `stream`, `helpers`, `sub_apps` and the limit `counters`
    (shared with the auth service, which shows spend) come from the gateway module;
    distributed, they are built from the settings (Redis, service URLs)."""
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    lifecycle = lifecycle or Lifecycle()
    config = settings.config
    catalog = settings.catalog
    given = stages or Stages()
    regions = RegionPolicy.of(settings.region or config.region.name, config.region)
    # Loaded here, not in the lifespan, so a bad rules file stops the start with its message.
    rules = None
    if config.routing is not None and given.resolver is None:
        rules = RuleClassifier.load(
            Path(config.classifier.rules_file) if config.classifier.rules_file else None
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[RouterState]:
        async with contextlib.AsyncExitStack() as stack:
            # Helper services start first and stop last, after the router has drained.
            for sub in sub_apps:
                await stack.enter_async_context(sub.router.lifespan_context(sub))

            redis = None
            if settings.redis_url:
                redis = aioredis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
                stack.push_async_callback(redis.aclose)
            usage_stream = stream
            if usage_stream is None:
                if redis is None:
                    raise RuntimeError("REDIS_URL is required for the router in distributed mode")
                usage_stream = RedisUsageStream(redis, config.usage.stream, config.usage.group)

            clients = helpers or Helpers.over_http(settings)
            for client in clients.present().values():
                stack.push_async_callback(client.aclose)
            authenticator, admission = await stack.enter_async_context(
                access_control(settings, clients, redis, registry, given, counters)
            )

            network = given.network
            if network is None:
                transport = NativeTransport()
                stack.push_async_callback(transport.aclose)
                network = transport
            sender = Sender(network, mock_transport(catalog))
            redact = Redactor([settings.master_key, *catalog.secrets()])

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
            tracing = given.tracing
            if tracing is None and config.tracing.enabled:
                tracing = Tracing(config.tracing)
            if tracing is not None:  # flushed after the last request has settled
                stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
            background = Background(metrics)
            stack.push_async_callback(background.drain)  # runs before the publisher stops
            watch = asyncio.create_task(watch_helpers(clients, metrics), name="helper-probes")
            stack.push_async_callback(_cancel, watch)

            dispatcher = Dispatcher(
                sender,
                adapters(),
                metrics,
                redact,
                catalog=catalog,
                resilience=config.resilience,
                regions=regions,
            )
            for deps in catalog.models.values():
                for dep in deps:
                    metrics.circuit(dep, "closed")
            cache: ResponseCache | None = given.cache
            if cache is None and config.cache.enabled and isinstance(clients.cache, CacheClient):
                clients.cache.authorize(settings.master_key)
                cache = GatewayCache(clients.cache, config.cache, metrics, regions)
            cache_enabled = cache is not None
            cache = cache or NoCache()
            stored = StoredCompletions(
                clients.analytics if isinstance(clients.analytics, AnalyticsClient) else None,
                authenticator,
                metrics,
                key=settings.master_key,
                enabled=config.analytics.store_completions,
                max_bytes=config.analytics.max_stored_bytes,
            )
            resolver = given.resolver or CatalogResolver(catalog)
            auto_aliases: list[str] = []
            if rules is not None and config.routing is not None:
                classifier = clients.classifier
                auto = AutoResolver(
                    CatalogResolver(catalog),
                    config.routing,
                    rules,
                    classifier=classifier if isinstance(classifier, ClassifierClient) else None,
                    metrics=metrics,
                    registry=registry,
                )
                resolver, auto_aliases = auto, auto.available()
            pipeline = Pipeline(
                authenticator=authenticator,
                resolver=resolver,
                admission=admission,
                cache=cache,
                dispatcher=dispatcher,
                relay=Relay(lifecycle, redact),
                settler=Settler(
                    publisher,
                    metrics,
                    admission,
                    cache,
                    background,
                    access_log=config.server.access_log,
                    cache_enabled=cache_enabled,
                    stored=stored,
                    tracing=tracing,
                ),
                metrics=metrics,
                redact=redact,
                max_body_bytes=config.server.max_body_bytes,
                dialects=dialects(),
                cache_enabled=cache_enabled,
                region=regions.local,
            )
            owners = {name: deps[0].provider for name, deps in catalog.models.items()}
            owners |= {alias: owners[name] for alias, name in catalog.aliases.items()}
            owners |= dict.fromkeys(auto_aliases, "gateway")  # routing aliases: the gateway chooses
            yield {"pipeline": pipeline, "models": ModelCards(pipeline, owners), "completions": stored}

    async def ready() -> dict[str, str]:
        return {"models": "ok" if catalog.models else "no model has a usable deployment"}

    async def answered_by_ingress(request: Request) -> Response:
        # Only reached for a method the route does not allow: the ingress serves the rest.
        raise MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}")

    routes = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", answered_by_ingress, methods=["GET", "POST"]),
            Route(
                f"{prefix}/chat/completions/{{rest:path}}",
                answered_by_ingress,
                methods=["GET", "POST", "DELETE"],
            ),
            Route(f"{prefix}/embeddings", answered_by_ingress, methods=["POST"]),
            Route(f"{prefix}/messages", answered_by_ingress, methods=["POST"]),
            Route(f"{prefix}/messages/count_tokens", answered_by_ingress, methods=["POST"]),
            Route(f"{prefix}/deployments/health", answered_by_ingress, methods=["GET"]),
            Route(f"{prefix}/models", answered_by_ingress, methods=["GET"]),
            Route(f"{prefix}/models/{{model:path}}", answered_by_ingress, methods=["GET"]),
        ]
    service = build_app(
        "router", routes=routes, lifespan=lifespan, ready=ready, registry=registry, app_class=RouterApp
    )
    service.registries[1:] = [r for sub in sub_apps for r in sub.registries]
    return service


@contextlib.asynccontextmanager
async def access_control(
    settings: Settings,
    clients: Helpers,
    redis: aioredis.Redis | None,
    registry: CollectorRegistry,
    given: Stages,
    counters: LocalCounters | None,
) -> AsyncIterator[tuple[Authenticator, Admission]]:
    """The authenticate and admit stages. With an auth service: virtual keys, access
    tokens and limits (`keys.py`, `limits.py`); without one: the master key only, no
    limits. Stages passed in `given` are used as they are."""
    auth = clients.auth if isinstance(clients.auth, AuthClient) else None
    config = settings.config.auth
    if auth is None:
        yield (
            given.authenticator or MasterKeyAuthenticator(settings.master_key),
            given.admission or Unlimited(),
        )
        return
    reach = Reachability(registry, config.limits.retry_redis_after_s)
    tasks: list[asyncio.Task[None]] = []
    authenticator = given.authenticator
    if authenticator is None:
        metrics = AuthMetrics(registry)
        directory = KeyDirectory(
            config, auth=auth, service_key=settings.master_key, redis=redis, reach=reach, metrics=metrics
        )
        tokens = AccessTokens(config, auth=auth, directory=directory, metrics=metrics)
        authenticator = KeyAuthenticator(settings.master_key, directory, tokens, metrics)
        tasks += [
            asyncio.create_task(directory.listen(), name="auth-invalidations"),
            asyncio.create_task(tokens.run(), name="auth-jwks"),
        ]
    admission = given.admission
    limits = None
    spend_file = settings.data_dir / "spend.json"
    if admission is None:
        local = counters or LocalCounters()
        if redis is None:  # embedded: this process holds the spend; keep it across restarts
            local.load(spend_file)
            tasks.append(asyncio.create_task(_save_every(local, spend_file), name="spend-save"))
        prefix = config.redis_prefix
        limits = LimitAdmission(
            config.limits, redis=redis, prefix=prefix, reach=reach, registry=registry, local=local
        )
        admission = limits
    try:
        yield authenticator, admission
    finally:
        for task in tasks:
            await _cancel(task)
        if limits is not None:
            await limits.aclose()
            if redis is None:
                limits.local.save(spend_file)


async def _save_every(counters: LocalCounters, path: Path, every: float = 10.0) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(counters.save, path)
        except OSError as exc:
            log.warning("spend not saved", extra={"error": type(exc).__name__})


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
