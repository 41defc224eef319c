"""The only module of the analytics service that other services import."""

from __future__ import annotations

from services.kernel.client import ServiceClient


class AnalyticsClient(ServiceClient):
    service = "analytics"
