"""The only module of the cache service that other services import.

Each call takes a timeout and raises `CacheUnavailable` when the service is down,
slow past it, or answers with an error: callers treat that as a miss (lookup) or a
skipped store, and count it. A call with a `region` also fails when the answer does
not repeat that region: a cache service that does not know the field would otherwise
share entries across regions silently (during an upgrade, say).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import orjson

from services.kernel.client import ServiceClient

_JSON = {"content-type": "application/json"}


class CacheUnavailable(Exception):
    """The cache did not answer in time, or could not answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "timeout", "unreachable", "error"


@dataclasses.dataclass(frozen=True, slots=True)
class CacheLookup:
    """A lookup's answer: on a hit, the stored chat.completion and how it matched."""

    hit: bool
    kind: str | None = None  # "exact" or "semantic"
    similarity: float | None = None
    age_s: float | None = None  # since it was stored
    completion: dict[str, Any] | None = None
    reason: str | None = None  # why a miss


class CacheClient(ServiceClient):
    service = "cache"

    def authorize(self, master_key: str) -> None:
        """Send the master key with every call (the cache holds every tenant's answers)."""
        self.http.headers["authorization"] = f"Bearer {master_key}"

    async def _post(self, path: str, payload: dict[str, Any], wait_s: float) -> dict[str, Any]:
        try:
            response = await self.http.post(
                path, content=orjson.dumps(payload), headers=_JSON, timeout=wait_s
            )
        except httpx.TimeoutException:
            raise CacheUnavailable("timeout") from None
        except httpx.HTTPError:
            raise CacheUnavailable("unreachable") from None
        except Exception:  # in-process, the cache's own failure surfaces here: still only a miss
            raise CacheUnavailable("error") from None
        if response.status_code != 200:
            raise CacheUnavailable("error")
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise CacheUnavailable("error") from None
        if not isinstance(data, dict):
            raise CacheUnavailable("error")
        return data

    async def lookup(
        self,
        tenant: str,
        model: str,
        request: dict[str, Any],
        *,
        wait_s: float,
        semantic: bool = True,
        max_age_s: float | None = None,
        region: str | None = None,
    ) -> CacheLookup:
        payload: dict[str, Any] = {"tenant": tenant, "model": model, "request": request, "semantic": semantic}
        if max_age_s is not None:
            payload["max_age_s"] = max_age_s
        data = await self._post_placed("/v1/cache/lookup", payload, wait_s, region)
        if not data.get("hit"):
            return CacheLookup(False, reason=str(data.get("reason", "")))
        completion = data.get("response")
        if not isinstance(completion, dict):
            raise CacheUnavailable("error")
        return CacheLookup(
            True,
            str(data.get("kind")),
            float(data.get("similarity", 1.0)),
            float(data.get("age_s", 0.0)),
            completion,
        )

    async def store(
        self,
        tenant: str,
        model: str,
        request: dict[str, Any],
        completion: dict[str, Any],
        *,
        wait_s: float,
        ttl_s: float | None = None,
        semantic: bool = True,
        region: str | None = None,
    ) -> str:
        """Store an answer; returns how ("semantic", "exact_only") or why not ("too_large")."""
        payload: dict[str, Any] = {
            "tenant": tenant,
            "model": model,
            "request": request,
            "response": completion,
            "semantic": semantic,
        }
        if ttl_s is not None:
            payload["ttl_s"] = ttl_s
        data = await self._post_placed("/v1/cache/store", payload, wait_s, region)
        return str(data.get("kind", ""))

    async def _post_placed(
        self, path: str, payload: dict[str, Any], wait_s: float, region: str | None
    ) -> dict[str, Any]:
        """A call in a region's namespace (None: no region, and no field sent, as before
        regions existed)."""
        if region is None:
            return await self._post(path, payload, wait_s)
        data = await self._post(path, {**payload, "region": region}, wait_s)
        if data.get("region") != region:
            raise CacheUnavailable("error")
        return data
