"""The router's cache stage: answers from the cache service, and what it may keep.

Whether a request uses the cache is decided here, per request: the configuration
(`cache:` in gateway.yaml, with overrides per model, team and key), the request's
temperature (no caching above `max_temperature`), and its headers:

    Cache-Control: no-cache      do not answer from the cache (the answer is still stored)
    Cache-Control: no-store      do not store this answer
    Cache-Control: max-age=N     accept only an answer stored in the last N seconds
    x-gateway-cache-ttl: N       keep this answer N seconds (capped by cache.max_ttl_s)

The namespace is the tenant (the caller's team, or key; `cache.tenant`), the
public model and, when the router has one, its region; the cache service adds the
system prompt, earlier turns and every parameter that changes the answer. An entry
stored by a router in one region is therefore only ever found by routers of that
region, even where regions share a Redis. A request restricted to regions (its key,
its team, or `region.residency`) that this router's region is not one of is served
elsewhere: the cache is neither looked up nor written for it (bypass, reason
`region`), nor is it for a restricted request at a router with no region (nothing
tells where its entry would be kept).

Responses say `x-gateway-cache: hit|miss|bypass`, on a bypass
`x-gateway-cache-bypass` (disabled, temperature, region, no-cache), and on a hit
`x-gateway-cache-kind` (exact, semantic), `x-gateway-cache-similarity` and `age`.
The cache is optional: a lookup that fails or takes longer than
`cache.lookup_timeout_ms` is a miss, counted in `gateway_stage_outcomes_total`
(as are the lookups and stores left out for residency, outcome `outside_region`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import Any

from services.cache.client import CacheClient, CacheUnavailable
from services.kernel.config import CacheConfig, CacheRule
from services.kernel.errors import InvalidRequest
from services.kernel.ids import new_id
from services.router.exchange import Exchange
from services.router.metrics import RouterMetrics
from services.router.providers.base import Usage
from services.router.regions import RegionPolicy

log = logging.getLogger("gateway.router.cache")

TTL_HEADER = b"x-gateway-cache-ttl"
STORABLE_FINISH = frozenset({"stop", "length", "tool_calls", "function_call"})
_STATE = b"x-gateway-cache"
_BYPASS = b"x-gateway-cache-bypass"


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    """A `CachedAnswer`: what the pipeline sends instead of calling the provider."""

    kind: str
    completion: dict[str, Any]
    headers: list[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """What the cache may do for one request."""

    lookup: bool
    store: bool
    semantic: bool
    ttl_s: float
    max_age_s: float | None
    tenant: str
    region: str | None  # part of the namespace: the router's region (None: it has none)


def _cache_control(value: bytes) -> dict[str, str]:
    out = {}
    for part in value.decode("latin-1").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"')
    return out


def _seconds(value: str, what: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"{what} must be a non-negative number of seconds.", code="invalid_cache_header")
    return seconds


class GatewayCache:
    """`ResponseCache` over the cache service (see the module docstring)."""

    def __init__(
        self,
        client: CacheClient,
        config: CacheConfig,
        metrics: RouterMetrics,
        regions: RegionPolicy | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics
        self.regions = regions or RegionPolicy()
        self.lookup_timeout = config.lookup_timeout_ms / 1000
        self.store_timeout = config.store_timeout_ms / 1000

    def _rules(self, ex: Exchange) -> list[CacheRule]:
        """Overrides from the most specific down: key, team, model."""
        principal = ex.principal
        rules = []
        if principal is not None:
            if (rule := self.config.keys.get(principal.key_id)) is not None:
                rules.append(rule)
            if (
                principal.team_id is not None
                and (rule := self.config.teams.get(principal.team_id)) is not None
            ):
                rules.append(rule)
        if ex.route is not None and (rule := self.config.models.get(ex.route.model)) is not None:
            rules.append(rule)
        return rules

    def policy(self, ex: Exchange) -> Policy | str:
        """What the cache may do for this request, or why it is off for it: "disabled"
        (configuration), "temperature", or "region" (served outside its regions)."""
        rules = self._rules(ex)

        def setting(name: str, default: Any) -> Any:
            return next((v for r in rules if (v := getattr(r, name)) is not None), default)

        if not setting("enabled", True):
            return "disabled"
        temperature = ex.body.get("temperature")
        if isinstance(temperature, int | float) and temperature > setting(
            "max_temperature", self.config.max_temperature
        ):
            return "temperature"
        local = self.regions.local
        allowed = self.regions.allowed(ex.principal)
        if allowed is not None and (local is None or local not in allowed):
            # Served in another region (or in one this router cannot name): an entry kept
            # here would leave the request's regions, and one found here came from outside.
            return "region"
        directives = _cache_control(ex.headers.get(b"cache-control", b""))
        max_age = directives.get("max-age")
        ttl_s = setting("ttl_s", self.config.ttl_s)
        if (raw := ex.headers.get(TTL_HEADER)) is not None:
            ttl_s = _seconds(raw.decode("latin-1"), "x-gateway-cache-ttl")
        ttl_s = min(ttl_s, self.config.max_ttl_s)
        principal = ex.principal
        assert principal is not None
        if self.config.tenant == "team" and principal.team_id is not None:
            tenant = f"team:{principal.team_id}"
        else:
            tenant = f"key:{principal.key_id}"
        return Policy(
            lookup="no-cache" not in directives and max_age != "0",
            store="no-store" not in directives and ttl_s > 0,
            semantic=setting("semantic", self.config.semantic),
            ttl_s=ttl_s,
            max_age_s=_seconds(max_age, "Cache-Control max-age") if max_age is not None else None,
            tenant=tenant,
            region=local,
        )

    async def lookup(self, ex: Exchange) -> Hit | None:
        policy = self.policy(ex)
        if isinstance(policy, str) or not policy.lookup:
            reason = policy if isinstance(policy, str) else "no-cache"
            if reason == "region":
                self.metrics.stage_outcome("cache_lookup", "outside_region")
            ex.response_headers += [(_STATE, b"bypass"), (_BYPASS, reason.encode())]
            return None
        assert ex.route is not None
        try:
            async with asyncio.timeout(self.lookup_timeout):
                found = await self.client.lookup(
                    policy.tenant,
                    ex.route.model,
                    ex.body,
                    wait_s=self.lookup_timeout,
                    semantic=policy.semantic,
                    max_age_s=policy.max_age_s,
                    region=policy.region,
                )
        except (TimeoutError, CacheUnavailable) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else exc.reason
            self.metrics.stage_outcome("cache_lookup", "timed_out" if reason == "timeout" else "failed")
            ex.response_headers.append((_STATE, b"miss"))
            return None
        if not found.hit or found.completion is None:
            ex.response_headers.append((_STATE, b"miss"))
            return None
        completion = found.completion
        usage = completion.get("usage")
        if isinstance(usage, dict):
            # What the answer would have cost: settle records it as saved.
            ex.usage = Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        completion = {**completion, "id": f"chatcmpl-{new_id()}", "created": int(time.time())}
        headers = [
            (_STATE, b"hit"),
            (b"x-gateway-cache-kind", (found.kind or "exact").encode()),
            (b"x-gateway-cache-similarity", f"{found.similarity or 1.0:.4f}".encode()),
            (b"age", str(int(found.age_s or 0)).encode()),
        ]
        return Hit(found.kind or "exact", completion, headers)

    async def store(self, ex: Exchange) -> None:
        completion = ex.completion
        if completion is None or ex.route is None:
            return
        choices = completion.get("choices")
        if not choices or any(c.get("finish_reason") not in STORABLE_FINISH for c in choices):
            return  # cut short or filtered: not an answer to give again
        try:
            policy = self.policy(ex)
        except InvalidRequest:
            return
        if isinstance(policy, str):
            if policy == "region":
                self.metrics.stage_outcome("cache_store", "outside_region")
            return
        if not policy.store:
            return
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.client.store(
                    policy.tenant,
                    ex.route.model,
                    ex.body,
                    completion,
                    wait_s=self.store_timeout,
                    ttl_s=policy.ttl_s,
                    semantic=policy.semantic,
                    region=policy.region,
                )
        except TimeoutError:
            self.metrics.stage_outcome("cache_store", "timed_out")
        except CacheUnavailable as exc:
            self.metrics.stage_outcome("cache_store", "timed_out" if exc.reason == "timeout" else "failed")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
