"""Embedded mode: the whole gateway in one process, no Redis or PostgreSQL.

The helper services run in-process behind `httpx.ASGITransport` (the same client
code as over the network), the usage stream is an in-process stand-in, and
analytics writes to a SQLite file in the data folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from services.analytics import app as analytics_app
from services.analytics.client import AnalyticsClient
from services.auth import app as auth_app
from services.auth.client import AuthClient, MemoryInvalidations
from services.cache import app as cache_app
from services.cache.client import CacheClient
from services.classifier import app as classifier_app
from services.classifier.client import ClassifierClient
from services.kernel.encoder import Backend, Encoder, classifier_backend
from services.kernel.lifecycle import Lifecycle
from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app
from services.router.limits import LocalCounters


def create_app(settings: Settings, *, lifecycle: Lifecycle | None = None) -> ServiceApp:
    # Embedded means no servers: ignore URLs that may linger in the environment.
    settings = settings.replace(redis_url=None, database_url=None)
    stream = MemoryUsageStream(
        dead_letter_path=settings.data_dir / "usage-dead-letters.jsonl",
        dead_letter_max=settings.config.usage.dead_letter_max,
    )
    # Key changes reach the router through an in-process channel; the router's limit
    # counters are the spend the auth service shows.
    invalidations = MemoryInvalidations()
    counters = LocalCounters()
    auth = auth_app.create_app(settings, process_metrics=False, invalidations=invalidations, spend=counters)
    auth_client = AuthClient.in_process(auth)
    assert isinstance(auth_client, AuthClient)
    auth_client.invalidations = invalidations
    # An embedding model is loaded only when something uses it: automatic routing (the
    # classifier exists only then) or a semantic cache; a gateway with neither stays small
    # (~70 MiB, not ~270). See `encoders` for which model each one gets.
    config = settings.config
    routed = config.routing is not None
    semantic = config.cache.enabled and config.cache.semantic
    classifier_encoder, cache_encoder = encoders(settings)
    models = list(
        dict.fromkeys([*([classifier_encoder] if routed else []), *([cache_encoder] if semantic else [])])
    )
    classifier = (
        classifier_app.create_app(settings, process_metrics=False, encoder=classifier_encoder)
        if routed
        else None
    )
    cache = cache_app.create_app(settings, encoder=cache_encoder, process_metrics=False)
    analytics = analytics_app.create_app(settings, stream=stream, process_metrics=False, auth=auth_client)
    helpers = router_app.Helpers(
        auth=auth_client,
        classifier=ClassifierClient.in_process(classifier) if classifier is not None else None,
        cache=CacheClient.in_process(cache),
        analytics=AnalyticsClient.in_process(analytics),
    )
    app = router_app.create_app(
        settings,
        stream=stream,
        helpers=helpers,
        sub_apps=[
            *(shared_model(encoder) for encoder in models),
            auth,
            *([classifier] if classifier is not None else []),
            cache,
            analytics,
        ],
        lifecycle=lifecycle,
        counters=counters,
    )
    # The analytics, admin and cache APIs are reachable embedded too, on the same port;
    # /dashboard is the analytics page.
    app.mount("/analytics", analytics)
    app.mount("/auth", auth)
    app.mount("/cache", cache)

    async def dashboard(request: Request) -> Response:
        return RedirectResponse("/analytics/dashboard", status_code=307)

    app.add_route("/dashboard", dashboard, methods=["GET"])
    return app


def encoders(settings: Settings) -> tuple[Encoder, Encoder]:
    """(the classifier's encoder, the semantic cache's): one instance when both use the same
    backend, two when the classifier takes the int8 model (its default once exported) and
    the cache the float one. The cache's vectors must stay the float model's (its threshold
    is calibrated on them); the classifier must not lose its int8 speed to the cache. Both
    loaded cost roughly the int8 file's 55 MB more than the float model alone."""
    config = settings.config.classifier
    backend = classifier_backend(config.encoder_backend)
    classifier = Encoder(max_batch=config.max_batch, threads=config.encoder_threads, backend=backend)
    if backend != "onnx-int8":
        return classifier, classifier
    cache_backend: Backend = "auto" if config.encoder_backend == "auto" else "onnx"
    cache = Encoder(max_batch=config.max_batch, threads=config.encoder_threads, backend=cache_backend)
    return classifier, cache


def shared_model(encoder: Encoder) -> ServiceApp:
    """An app with no routes whose lifespan loads the shared model first and closes it last
    (the helpers that use it neither start nor close it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await encoder.start()  # loads in the background: the gateway serves meanwhile
        try:
            yield
        finally:
            await encoder.aclose()

    return build_app("encoder", routes=[], lifespan=lifespan, process_metrics=False)
