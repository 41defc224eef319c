"""`/dashboard`: the operator's page — usage, cost, latency, errors and the service targets.

The page and its scripts are static files (Chart.js vendored in `static/vendor/` with
its licence); they hold no data. The browser asks for the API key once (kept in the
tab's sessionStorage), then reads `/v1/stats/summary` and `/v1/usage` with it, so the
page shows exactly what the key may see, and refreshes itself.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from services.kernel.config import AnalyticsConfig
from services.kernel.errors import NotFound

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "vendor/chart.umd.min.js": "text/javascript",
    "vendor/chart.js.LICENSE.md": "text/markdown",
}
# No inline script or style: what runs is what the files above say.
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def routes(config: AnalyticsConfig) -> list[BaseRoute]:
    template = (STATIC / "dashboard.html").read_text()
    targets = config.targets

    async def page(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        body = (
            template.replace("{{base}}", html.escape(root + "/"))
            .replace("{{refresh}}", str(config.dashboard_refresh_s))
            .replace("{{availability}}", repr(targets.availability))
            .replace("{{latency_p99_ms}}", repr(targets.latency_p99_ms))
            .replace("{{cache_hit_rate}}", repr(targets.cache_hit_rate))
        )
        return Response(body, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in ASSETS:
            raise NotFound(f"no asset {name[:100]!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=_HEADERS)

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/static/{name:path}", asset, methods=["GET"]),
    ]
