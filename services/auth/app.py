"""Auth service. For now the router checks a master key from configuration itself;
users, teams, virtual keys and JWT arrive with their own issue, so this app offers
only its probes and metrics and claims nothing more."""

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

    return build_app("auth", routes=[], lifespan=lifespan, process_metrics=process_metrics)
