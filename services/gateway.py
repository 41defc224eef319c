"""Embedded mode: the whole gateway in one process, no Redis or PostgreSQL.

The helper services run in-process behind `httpx.ASGITransport` (the same client
code as over the network), the usage stream is an in-process stand-in, and
analytics writes to a SQLite file in the data folder.
"""

from __future__ import annotations

from services.analytics import app as analytics_app
from services.analytics.client import AnalyticsClient
from services.auth import app as auth_app
from services.auth.client import AuthClient
from services.cache import app as cache_app
from services.cache.client import CacheClient
from services.classifier import app as classifier_app
from services.classifier.client import ClassifierClient
from services.kernel.encoder import Encoder
from services.kernel.lifecycle import Lifecycle
from services.kernel.service import ServiceApp
from services.kernel.settings import Settings
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app


def create_app(settings: Settings, *, lifecycle: Lifecycle | None = None) -> ServiceApp:
    # Embedded means no servers: ignore URLs that may linger in the environment.
    settings = settings.replace(redis_url=None, database_url=None)
    stream = MemoryUsageStream()
    auth = auth_app.create_app(settings, process_metrics=False)
    # One embedding model per process: the classifier and the semantic cache share it.
    encoder_config = settings.config.classifier
    encoder = Encoder(
        max_batch=encoder_config.max_batch,
        threads=encoder_config.encoder_threads,
        backend=encoder_config.encoder_backend,
    )
    classifier = classifier_app.create_app(settings, process_metrics=False, encoder=encoder)
    cache = cache_app.create_app(settings, process_metrics=False)
    analytics = analytics_app.create_app(settings, stream=stream, process_metrics=False)
    helpers = router_app.Helpers(
        auth=AuthClient.in_process(auth),
        classifier=ClassifierClient.in_process(classifier),
        cache=CacheClient.in_process(cache),
        analytics=AnalyticsClient.in_process(analytics),
    )
    app = router_app.create_app(
        settings,
        stream=stream,
        helpers=helpers,
        sub_apps=[auth, classifier, cache, analytics],
        lifecycle=lifecycle,
    )
    # The analytics API is reachable embedded too, on the same port.
    app.mount("/analytics", analytics)
    return app
