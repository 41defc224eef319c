"""Classifier service. Prompt classification (rules, then embeddings) arrives with
its own issue; until then this app offers only its probes and metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from services.kernel.service import ServiceApp, build_app
from services.kernel.settings import Settings


def create_app(settings: Settings, *, process_metrics: bool = True) -> ServiceApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    return build_app("classifier", routes=[], lifespan=lifespan, process_metrics=process_metrics)
