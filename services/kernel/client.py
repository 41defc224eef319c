"""Base of every service client: the same code over real HTTP or in-process.

In the distributed topology a client wraps an `httpx.AsyncClient` pointed at the
service's URL; embedded, the same client gets an `httpx.ASGITransport` around the
service's app. Callers never know which.
"""

from __future__ import annotations

import httpx
from starlette.types import ASGIApp


class ServiceClient:
    """A typed handle on one helper service."""

    service = "service"

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @classmethod
    def over_http(cls, base_url: str, *, timeout: float = 2.0) -> ServiceClient:
        return cls(httpx.AsyncClient(base_url=base_url, timeout=timeout))

    @classmethod
    def in_process(cls, app: ASGIApp, *, timeout: float = 2.0) -> ServiceClient:
        transport = httpx.ASGITransport(app=app)
        return cls(httpx.AsyncClient(transport=transport, base_url=f"http://{cls.service}", timeout=timeout))

    async def ready(self) -> str:
        """ "ok" when the service answers its readiness probe, else a short reason."""
        try:
            response = await self.http.get("/readyz", timeout=1.0)
        except httpx.HTTPError as exc:
            return f"{self.service} unreachable: {type(exc).__name__}"
        return "ok" if response.status_code == 200 else f"{self.service} not ready"

    async def aclose(self) -> None:
        await self.http.aclose()
