"""The authenticate stage: the master key, virtual keys and access tokens.

- Master key: constant-time compare; the bootstrap administrator.
- Virtual key (`sk-gw-...`): a malformed one (bad checksum) is refused before any
  lookup; otherwise its SHA-256 is looked up in an in-process TTL cache, then in the
  shared Redis cache, then asked of the auth service (`KeyDirectory`). Changes reach
  every router through the invalidation channel (Redis pub/sub) within milliseconds,
  so a revoked key stops working at once, not when a TTL runs out.
- Access token (JWT): verified here against the auth service's JWKS (cached,
  refreshed periodically and once on an unknown `kid`), algorithm pinned; the user
  it names is then looked up like a key, so a disabled user is refused at once too.

Redis away: lookups go straight to the auth service; while invalidations cannot be
heard, cached records are trusted for `degraded_ttl_s` only. Auth service away too:
a key seen before keeps working from the in-process cache for `stale_ttl_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.auth.client import (
    KEY_PREFIX,
    AuthClient,
    AuthUnavailable,
    InvalidToken,
    TokenVerifier,
    UnknownKid,
    decode_record,
    invalidation_channel,
    key_entry,
    key_hash,
    looks_like_jwt,
    principal_of,
    redis_entry,
    user_entry,
    well_formed,
)
from services.kernel.bearer import bearer_token
from services.kernel.config import AuthConfig
from services.kernel.errors import ServiceUnavailable, Unauthorized
from services.kernel.principal import ADMIN, Principal
from services.router.reachability import Reachability

log = logging.getLogger("gateway.router")

_REFUSED = {
    "unknown": "Invalid API key.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
    "disabled": "The user of this API key is disabled.",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    """One cached record: who it is (when active), until when, and when it was fetched."""

    status: str
    principal: Principal | None
    expires_at: float | None  # wall clock; the key's own expiry
    at: float  # monotonic time of the fetch


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.lookups = Counter(
            "gateway_auth_lookups_total",
            "Key and user lookups by where the answer came from (memory, redis, service, stale)",
            ["source"],
            registry=registry,
        )
        self.refusals = Counter(
            "gateway_auth_refusals_total",
            "Credentials refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.invalidations = Counter(
            "gateway_auth_invalidations_total", "Invalidation messages received", registry=registry
        )
        self.listening = Gauge(
            "gateway_auth_invalidations_connected",
            "1 while this router hears the invalidation channel",
            registry=registry,
        )
        self.jwks = Counter(
            "gateway_auth_jwks_refreshes_total", "JWKS fetches by outcome", ["outcome"], registry=registry
        )
        self.cached = Gauge(
            "gateway_auth_cache_entries", "Records in the in-process cache", registry=registry
        )
        self._sources = {s: self.lookups.labels(s) for s in ("memory", "redis", "service", "stale", "failed")}

    def source(self, name: str) -> None:
        self._sources[name].inc()

    def refused(self, reason: str) -> Unauthorized:
        self.refusals.labels(reason).inc()
        return Unauthorized(_REFUSED.get(reason, "Invalid API key."), code="invalid_api_key")


class KeyDirectory:
    """Records of keys (`k:<hash>`) and users (`u:<id>`): memory → Redis → auth service."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        auth: AuthClient | None,
        service_key: str,
        redis: aioredis.Redis | None,
        reach: Reachability,
        metrics: AuthMetrics,
    ) -> None:
        self.config = config
        self.auth = auth
        self.service_key = service_key
        self.redis = redis
        self.reach = reach
        self.metrics = metrics
        self.cache: dict[str, Known] = {}
        self.epoch = 0  # bumped by every invalidation: a fetch that raced one is not cached
        self.listening = False
        self.metrics.cached.set_function(lambda: len(self.cache))

    def _fresh_for(self, known: Known) -> float:
        if known.status == "unknown":
            return self.config.negative_ttl_s
        return self.config.cache_ttl_s if self.listening else self.config.degraded_ttl_s

    async def lookup(self, entry: str) -> Known:
        known = self.cache.get(entry)
        now = time.monotonic()
        if known is not None and now - known.at < self._fresh_for(known):
            self.metrics.source("memory")
            return known
        epoch = self.epoch
        try:
            record = await self._fetch(entry)
        except AuthUnavailable as exc:
            if known is not None and known.status != "unknown" and now - known.at < self.config.stale_ttl_s:
                self.metrics.source("stale")
                return known
            self.metrics.source("failed")
            log.warning("key lookup failed: auth service unavailable", extra={"error": str(exc)})
            raise ServiceUnavailable(
                "The gateway cannot check this API key right now; try again shortly.", code="auth_unavailable"
            ) from None
        status = record.get("status", "unknown")
        fresh = Known(
            status,
            principal_of(record) if status == "active" else None,
            record.get("expires_at"),
            time.monotonic(),
        )
        if self.epoch == epoch:
            if len(self.cache) >= self.config.cache_max_entries:
                self._evict()
            self.cache[entry] = fresh
        return fresh

    def _evict(self) -> None:
        """Drop the oldest tenth (dicts keep insertion order; a refresh re-inserts)."""
        for name in list(self.cache)[: max(1, len(self.cache) // 10)]:
            self.cache.pop(name, None)

    async def _fetch(self, entry: str) -> dict[str, Any]:
        if self.redis is not None and self.reach.usable:
            try:
                raw = await asyncio.wait_for(
                    self.redis.get(redis_entry(self.config.redis_prefix, entry)), self.config.lookup_timeout_s
                )
                self.reach.succeeded()
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                self.reach.failed("authenticate", exc)
            else:
                record = decode_record(raw) if raw is not None else None
                if record is not None:
                    self.metrics.source("redis")
                    return record
        if self.auth is None:
            raise AuthUnavailable("no auth service configured")
        record = await self.auth.introspect(
            entry, service_key=self.service_key, wait_s=self.config.lookup_timeout_s
        )
        self.metrics.source("service")
        return record

    def invalidate(self, entries: list[str]) -> None:
        self.epoch += 1
        self.metrics.invalidations.inc()
        for entry in entries:
            self.cache.pop(entry, None)

    def _listening(self, on: bool) -> None:
        if on and not self.listening:
            # Whatever changed while nobody listened is unknown: start afresh.
            self.epoch += 1
            self.cache.clear()
        self.listening = on
        self.metrics.listening.set(1 if on else 0)

    async def listen(self) -> None:
        """Hear the invalidation channel until cancelled; reconnect when it drops."""
        memory = self.auth.invalidations if self.auth is not None else None
        if memory is not None:
            async with memory.subscribe() as queue:
                self._listening(True)
                while True:
                    self.invalidate(await queue.get())
        if self.redis is None:
            return
        channel = invalidation_channel(self.config.redis_prefix)
        while True:
            try:
                await self._listen_redis(channel)
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                if self.listening:
                    log.warning("invalidation channel lost", extra={"error": type(exc).__name__})
                self._listening(False)
                await asyncio.sleep(0.5)

    async def _listen_redis(self, channel: str) -> None:
        assert self.redis is not None
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            self._listening(True)
            last_ping = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    self.invalidate(_entries(message.get("data")))
                if time.monotonic() - last_ping > 2.0:
                    # A dead connection only shows when something is sent on it.
                    await asyncio.wait_for(pubsub.ping(), 2.0)
                    last_ping = time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _entries(data: Any) -> list[str]:
    try:
        entries = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return []
    return [e for e in entries if isinstance(e, str)] if isinstance(entries, list) else []


class AccessTokens:
    """JWT verification with the cached JWKS, and a cache of verified tokens."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        auth: AuthClient | None,
        directory: KeyDirectory,
        metrics: AuthMetrics,
        min_refresh_s: float = 1.0,
        missing_ttl_s: float = 30.0,
    ) -> None:
        self.config = config
        self.auth = auth
        self.directory = directory
        self.metrics = metrics
        self.verifier = TokenVerifier(config.jwt)
        self.loaded_at: float | None = None
        self.min_refresh_s = min_refresh_s
        self.missing_ttl_s = missing_ttl_s
        self.missing: dict[str, float] = {}  # kid → not fetched for again until
        self._lock = asyncio.Lock()
        self.verified: dict[str, tuple[float, dict[str, Any]]] = {}  # token hash → (exp, claims)

    async def refresh(self) -> bool:
        """Fetch the JWKS now."""
        if self.auth is None:
            return False
        try:
            self.verifier.load(await self.auth.jwks(wait_s=self.config.lookup_timeout_s))
        except AuthUnavailable as exc:
            self.metrics.jwks.labels("failed").inc()
            log.warning("JWKS refresh failed", extra={"error": str(exc)})
            return False
        self.loaded_at = time.monotonic()
        self.metrics.jwks.labels("ok").inc()
        return True

    async def refresh_for(self, kid: str) -> None:
        """A token names a key we do not hold: fetch the set again, once. Fetches happen at
        most once per `min_refresh_s` (a request waits for the next one rather than fail),
        and a kid that was still missing afterwards is not fetched for again for a while,
        so tokens with made-up kids cannot make the router hammer the auth service."""
        now = time.monotonic()
        if self.missing.get(kid, 0.0) > now:
            return
        async with self._lock:
            if kid in self.verifier.keys:
                return  # fetched meanwhile by another request
            if self.loaded_at is not None:
                wait = self.min_refresh_s - (time.monotonic() - self.loaded_at)
                if wait > 0:
                    await asyncio.sleep(wait)
            await self.refresh()
            if kid not in self.verifier.keys:
                if len(self.missing) > 10_000:
                    self.missing.clear()
                self.missing[kid] = time.monotonic() + self.missing_ttl_s

    async def run(self) -> None:
        """Refresh the JWKS every `jwks_refresh_s`."""
        while True:
            async with self._lock:
                await self.refresh()
            await asyncio.sleep(self.config.jwt.jwks_refresh_s)

    async def claims(self, token: str) -> dict[str, Any]:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self.verified.get(digest)
        if cached is not None and cached[0] > time.time():
            return cached[1]
        try:
            claims = self.verifier.verify(token)
        except UnknownKid:
            # A key newer than our copy of the set (or no set yet): refresh once, try again.
            await self.refresh_for(self.verifier.header(token)["kid"])
            claims = self.verifier.verify(token)
        if len(self.verified) > 100_000:
            self.verified.clear()
        self.verified[digest] = (float(claims["exp"]), claims)
        return claims

    async def principal(self, token: str) -> Principal:
        try:
            claims = await self.claims(token)
        except InvalidToken as exc:
            self.metrics.refusals.labels("token").inc()
            raise Unauthorized(f"Invalid access token: {exc}.", code="invalid_token") from None
        known = await self.directory.lookup(user_entry(claims["sub"]))
        principal = known.principal
        if known.status != "active" or principal is None:
            self.metrics.refusals.labels("disabled").inc()
            raise Unauthorized("Invalid access token: the user is disabled or gone.", code="invalid_token")
        if principal.role != claims["role"] or principal.team_id != claims.get("team"):
            self.metrics.refusals.labels("token").inc()
            raise Unauthorized(
                "Invalid access token: the user's role or team changed; log in again.", code="invalid_token"
            )
        return principal


class KeyAuthenticator:
    """The `Authenticator` of the router once the auth service is configured."""

    def __init__(
        self, master_key: str, directory: KeyDirectory, tokens: AccessTokens, metrics: AuthMetrics
    ) -> None:
        self.master_key = master_key.encode()
        self.directory = directory
        self.tokens = tokens
        self.metrics = metrics

    async def authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        token = bearer_token(headers)
        if secrets.compare_digest(token.encode(), self.master_key):
            return ADMIN
        if token.startswith(KEY_PREFIX):
            if not well_formed(token):
                raise self.metrics.refused("malformed")
            known = await self.directory.lookup(key_entry(key_hash(token)))
            if known.status != "active" or known.principal is None:
                raise self.metrics.refused(known.status)
            if known.expires_at is not None and known.expires_at <= time.time():
                raise self.metrics.refused("expired")
            return known.principal
        if looks_like_jwt(token):
            return await self.tokens.principal(token)
        raise self.metrics.refused("unknown")
