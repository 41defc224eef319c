"""The only module of the cache service that other services import."""

from __future__ import annotations

from services.kernel.client import ServiceClient


class CacheClient(ServiceClient):
    service = "cache"
