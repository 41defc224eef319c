"""Who is calling the auth service: the master key, a virtual key or an access token;
and the login throttle.

The admin API is not a hot path, so a caller is looked up in the database every
time (no cache to invalidate): a revoked key or a disabled user is refused at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Mapping

import orjson
import redis.asyncio as aioredis

from services.auth import store
from services.auth.client import (
    InvalidToken,
    TokenVerifier,
    UnknownKid,
    key_hash,
    looks_like_jwt,
    principal_of,
    well_formed,
)
from services.auth.database import Database
from services.auth.signing import Signer
from services.kernel.bearer import bearer_token
from services.kernel.errors import RateLimited, Unauthorized
from services.kernel.principal import ADMIN, Principal

_STATUS_MESSAGES = {
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
    "disabled": "The user of this API key is disabled.",
}


def refused(status: str) -> Unauthorized:
    """The 401 for a key whose record is not active; says why, never echoes the key."""
    return Unauthorized(_STATUS_MESSAGES.get(status, "Invalid API key."), code="invalid_api_key")


class Callers:
    def __init__(self, db: Database, master_key: str, signer: Signer, verifier: TokenVerifier) -> None:
        self.db = db
        self.master_key = master_key.encode()
        self.signer = signer
        self.verifier = verifier
        self._keys_loaded = 0.0

    async def principal(self, headers: Mapping[bytes, bytes]) -> Principal:
        token = bearer_token(headers)
        if secrets.compare_digest(token.encode(), self.master_key):
            return ADMIN
        if well_formed(token):
            record = await store.key_record(self.db, key_hash(token))
            if record["status"] != "active":
                raise refused(record["status"])
            return principal_of(record)
        if looks_like_jwt(token):
            return await self._token(token)
        raise Unauthorized("Invalid API key.", code="invalid_api_key")

    async def _token(self, token: str) -> Principal:
        try:
            claims = await self._verify(token)
        except InvalidToken as exc:
            raise Unauthorized(f"Invalid access token: {exc}.", code="invalid_token") from None
        record = await store.user_record(self.db, str(claims["sub"]))
        if record["status"] != "active":
            raise Unauthorized("Invalid access token: the user is disabled or gone.", code="invalid_token")
        if record["role"] != claims["role"] or record["team_id"] != claims.get("team"):
            raise Unauthorized(
                "Invalid access token: the user's role or team changed; log in again.", code="invalid_token"
            )
        return principal_of(record)

    async def _verify(self, token: str) -> dict[str, object]:
        # The key set is read from the database at most once a second here.
        if time.monotonic() - self._keys_loaded > 1.0:
            self.verifier.load(_loads(await self.signer.jwks()))
            self._keys_loaded = time.monotonic()
        try:
            return self.verifier.verify(token)
        except UnknownKid:
            self.verifier.load(_loads(await self.signer.jwks()))
            self._keys_loaded = time.monotonic()
            return self.verifier.verify(token)


def _loads(body: bytes) -> dict[str, object]:
    data = orjson.loads(body)
    assert isinstance(data, dict)
    return data


class LoginThrottle:
    """At most `max_failures` failed logins per account per window, across replicas when
    Redis is there (one counter per account), else per process."""

    def __init__(self, redis: aioredis.Redis | None, prefix: str, max_failures: int, window_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_failures = max_failures
        self.window_s = window_s
        self._local: dict[str, tuple[float, int]] = {}

    def _name(self, email: str) -> str:
        # The counter is named by a hash of the login name, not the name itself.
        return f"{self.prefix}:login:{hashlib.sha256(email.encode()).hexdigest()[:32]}"

    async def check(self, email: str) -> None:
        count, retry = await self._count(email)
        if count >= self.max_failures:
            raise RateLimited(
                "Too many failed logins for this account; try again later.",
                code="too_many_login_failures",
                headers={"retry-after": str(max(1, retry))},
            )

    async def _count(self, email: str) -> tuple[int, int]:
        name = self._name(email)
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.get(name)
                    pipe.ttl(name)
                    raw, ttl = await pipe.execute()
                return int(raw or 0), int(ttl if ttl and ttl > 0 else self.window_s)
            except (OSError, aioredis.RedisError):
                pass  # fall back to this process's count
        started, count = self._local.get(name, (0.0, 0))
        left = self.window_s - (time.monotonic() - started)
        return (count, int(left)) if left > 0 else (0, 0)

    async def failed(self, email: str) -> None:
        name = self._name(email)
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.incr(name)
                    pipe.expire(name, self.window_s, nx=True)
                    await pipe.execute()
                return
            except (OSError, aioredis.RedisError):
                pass
        if len(self._local) > 100_000:
            self._local.clear()
        started, count = self._local.get(name, (time.monotonic(), 0))
        if time.monotonic() - started > self.window_s:
            started, count = time.monotonic(), 0
        self._local[name] = (started, count + 1)

    async def succeeded(self, email: str) -> None:
        name = self._name(email)
        self._local.pop(name, None)
        if self.redis is not None:
            with contextlib.suppress(OSError, aioredis.RedisError):
                await self.redis.delete(name)
