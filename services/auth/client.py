"""The only module of the auth service that other services import.

It holds the contract between the auth service and its readers (the router, the
analytics API): the virtual key format and hash, the cached record of a key or a
user and its `Principal`, the names of the shared Redis entries, the invalidation
channel, the budget periods, and `AuthClient`, the typed calls to the service.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime
import hashlib
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, Protocol

import httpx
import jwt
import orjson
from redis.exceptions import RedisError
from starlette.types import Scope

from services.kernel.bearer import bearer_token, check_key
from services.kernel.client import ServiceClient
from services.kernel.config import JwtConfig
from services.kernel.errors import Forbidden, ServiceUnavailable, Unauthorized
from services.kernel.principal import ADMIN, Limits, Principal

# --- virtual API keys -------------------------------------------------------------

KEY_PREFIX = "sk-gw-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY = 43  # base62 characters of 32 random bytes
_CHECK = 6  # base62 characters of a CRC-32 of the body
KEY_LENGTH = len(KEY_PREFIX) + _BODY + _CHECK
SHOWN = len(KEY_PREFIX) + 6  # what lists show of a key: its prefix and 6 characters (~36 of 256 bits)


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK)


def new_api_key() -> str:
    """`sk-gw-` + 256 random bits + a checksum, so a scanner (or the router, before any
    lookup) can tell a real key from a typo or a random guess."""
    body = _base62(int.from_bytes(secrets.token_bytes(32)), _BODY)
    return KEY_PREFIX + body + _checksum(body)


def well_formed(token: str) -> bool:
    if len(token) != KEY_LENGTH or not token.startswith(KEY_PREFIX):
        return False
    body, check = token[len(KEY_PREFIX) : -_CHECK], token[-_CHECK:]
    return all(c in _ALPHABET for c in body) and secrets.compare_digest(check, _checksum(body))


def key_hash(token: str) -> str:
    """What is stored and looked up instead of the key: SHA-256. A key carries 256 random
    bits, so a fast hash is enough (a slow KDF protects low-entropy passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- the cached record of a key or a user ------------------------------------------

Status = Literal["active", "revoked", "expired", "disabled", "unknown"]


def key_entry(digest: str) -> str:
    return f"k:{digest}"


def user_entry(user_id: str) -> str:
    return f"u:{user_id}"


def limits_record(limits: Limits) -> dict[str, Any]:
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "budget": limits.budget,
        "budget_period": limits.budget_period,
    }


def _limits(data: Any) -> Limits:
    if not isinstance(data, dict):
        return Limits()
    return Limits(
        rpm=data.get("rpm"),
        tpm=data.get("tpm"),
        budget=data.get("budget"),
        budget_period=data.get("budget_period"),
    )


def principal_of(record: dict[str, Any]) -> Principal:
    """The caller a record (from the auth service or the shared cache) describes.

    `regions` is the caller's data residency, already narrowed by the team: absent or
    null = unrestricted, a list = only deployments in those regions ([] = none at all)."""
    models = record.get("models")
    regions = record.get("regions")
    return Principal(
        key_id=record["key_id"],
        role=record["role"],
        team_id=record.get("team_id"),
        user_id=record.get("user_id"),
        models=None if models is None else frozenset(models),
        limits=_limits(record.get("limits")),
        team_limits=_limits(record.get("team_limits")),
        regions=None if regions is None else _regions(regions),
    )


def _regions(value: Any) -> frozenset[str]:
    """A record's region list; anything else restricts to no region (fail closed)."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(r for r in value if isinstance(r, str))


UNKNOWN: dict[str, Any] = {"status": "unknown"}


def encode_record(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def decode_record(raw: bytes | str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("status"), str) else None


# --- shared Redis names -----------------------------------------------------------


def redis_entry(prefix: str, entry: str) -> str:
    """Where the record of `entry` (`k:<hash>`, `u:<id>`) is cached in Redis."""
    return f"{prefix}:{entry}"


def invalidation_channel(prefix: str) -> str:
    """Pub/sub channel: each message is a JSON list of entries whose record changed."""
    return f"{prefix}:invalidate"


def spend_key(prefix: str, subject: str, period_start: int) -> str:
    """The spend counter (nano-units of currency) of `subject` (`key:<id>`/`team:<id>`)."""
    return f"{prefix}:spend:{subject}:{period_start}"


NANO = 1_000_000_000  # spend counters are integers: currency times 1e9

Period = Literal["hour", "day", "week", "month"]
PERIODS = ("hour", "day", "week", "month")


def period_bounds(period: str | None, now: float) -> tuple[int, int | None]:
    """(start, end) in unix seconds of the budget period containing `now`, UTC.
    Lifetime budgets (None) have one period starting at 0 and never ending.
    Must agree with the router's admit script (`services/router/lua/admit.lua`)."""
    t = int(now)
    if period is None:
        return 0, None
    if period == "hour":
        start = t - t % 3600
        return start, start + 3600
    if period == "day":
        start = t - t % 86400
        return start, start + 86400
    if period == "week":  # ISO weeks start on Monday; 1970-01-01 was a Thursday
        start = t - (t + 3 * 86400) % (7 * 86400)
        return start, start + 7 * 86400
    if period == "month":
        day = datetime.datetime.fromtimestamp(t, datetime.UTC)
        start = calendar.timegm((day.year, day.month, 1, 0, 0, 0))
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return start, calendar.timegm((year, month, 1, 0, 0, 0))
    raise ValueError(f"unknown budget period {period!r}")


class SpendReader(Protocol):
    async def spent(self, subject: str, period: str | None) -> float | None:
        """What `subject` spent (and reserved) in its current budget period; None if unknown."""
        ...


class RedisSpend:
    """The spend counters the router's admission keeps in Redis."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def spent(self, subject: str, period: str | None) -> float | None:
        start, _ = period_bounds(period, time.time())
        try:
            raw = await self.redis.get(spend_key(self.prefix, subject, start))
        except (OSError, RedisError):
            return None  # unknown, not zero
        return int(raw or 0) / NANO


# --- invalidations inside one process (embedded mode) -------------------------------


class MemoryInvalidations:
    """The embedded stand-in for the Redis channel: every subscriber gets every message."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[list[str]]] = set()

    async def publish(self, entries: Iterable[str]) -> None:
        batch = list(entries)
        for queue in self._queues:
            queue.put_nowait(batch)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[list[str]]]:
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


# --- calls to the service ---------------------------------------------------------


class AuthUnavailable(Exception):
    """The auth service did not answer (in time, or sensibly)."""


class AuthClient(ServiceClient):
    service = "auth"
    invalidations: MemoryInvalidations | None = None  # set in embedded mode

    async def introspect(self, entry: str, *, service_key: str, wait_s: float = 1.0) -> dict[str, Any]:
        """The current record of `entry` (`k:<hash>` or `u:<id>`); status "unknown" if none."""
        try:
            response = await self.http.post(
                "/v1/internal/introspect",
                content=orjson.dumps({"entry": entry}),
                headers={"authorization": f"Bearer {service_key}", "content-type": "application/json"},
                timeout=wait_s,
            )
        except httpx.HTTPError as exc:
            raise AuthUnavailable(type(exc).__name__) from None
        if response.status_code != 200:
            raise AuthUnavailable(f"introspect answered {response.status_code}")
        record = decode_record(response.content)
        if record is None:
            raise AuthUnavailable("introspect answered something that is not a record")
        return record

    async def jwks(self, *, wait_s: float = 2.0) -> dict[str, Any]:
        try:
            response = await self.http.get("/.well-known/jwks.json", timeout=wait_s)
        except httpx.HTTPError as exc:
            raise AuthUnavailable(type(exc).__name__) from None
        if response.status_code != 200:
            raise AuthUnavailable(f"jwks answered {response.status_code}")
        data = orjson.loads(response.content)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise AuthUnavailable("jwks answered something that is not a key set")
        return data

    async def whoami(self, token: str, *, wait_s: float = 2.0) -> dict[str, Any] | None:
        """The caller that `token` (virtual key or access token) authenticates, or None."""
        try:
            response = await self.http.get(
                "/v1/auth/me", headers={"authorization": f"Bearer {token}"}, timeout=wait_s
            )
        except httpx.HTTPError as exc:
            raise AuthUnavailable(type(exc).__name__) from None
        if response.status_code == 401:
            return None
        if response.status_code != 200:
            raise AuthUnavailable(f"me answered {response.status_code}")
        data = orjson.loads(response.content)
        return data if isinstance(data, dict) else None


class AdminGate:
    """For another service's API that only administrators may read (analytics): the
    master key, or a virtual key or access token of a user with the `admin` role, asked
    of the auth service and remembered for a short while."""

    def __init__(self, master_key: str, auth: AuthClient | None, ttl_s: float = 10.0) -> None:
        self.master_key = master_key
        self.auth = auth
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, str | None]] = {}  # token hash → (until, key id or None)

    async def require_admin(self, scope: Scope) -> str:
        """The caller's key id; 401 for an unknown caller, 403 for one who is not an admin."""
        token = bearer_token(dict(scope["headers"]))
        if self.auth is None or secrets.compare_digest(token.encode(), self.master_key.encode()):
            check_key(token, self.master_key)
            return ADMIN.key_id
        digest = key_hash(token)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is None or known[0] < now:
            try:
                me = await self.auth.whoami(token)
            except AuthUnavailable:
                raise ServiceUnavailable("The auth service is unavailable; try again shortly.") from None
            if len(self._known) > 10_000:
                self._known.clear()
            role_ok = me is not None and me.get("role") == "admin"
            known = (now + self.ttl_s, str(me["key_id"]) if role_ok and me else "" if me else None)
            self._known[digest] = known
        if known[1] is None:
            raise Unauthorized("Invalid API key.", code="invalid_api_key")
        if not known[1]:
            raise Forbidden("Only administrators may read this.", code="insufficient_role")
        return known[1]


# --- access tokens ---------------------------------------------------------------


class InvalidToken(Exception):
    """The token is not one this gateway issued, or no longer valid. The message says
    why in a few words and never contains the token."""


class UnknownKid(InvalidToken):
    """Signed with a key that is not (yet) in the key set this verifier holds."""


_KTY = {"EdDSA": "OKP", "RS256": "RSA"}
ROLES = ("admin", "team_admin", "member")


class TokenVerifier:
    """Verifies access tokens against a JWKS, with the algorithm pinned by configuration:
    a token whose header names another algorithm (`none`, HS256 signed with the public
    key, ...) is refused before any key is chosen, and only keys of the pinned type are
    ever loaded from the set. exp, nbf, iat, iss, aud and sub are required and checked."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.algorithm = config.algorithm
        self.keys: dict[str, Any] = {}

    def load(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for jwk in jwks.get("keys", []):
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("alg", self.algorithm) != self.algorithm or jwk.get("kty") != _KTY[self.algorithm]:
                continue
            if jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm=self.algorithm).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        self.keys = keys

    def header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") != self.algorithm:
            raise InvalidToken("token algorithm not accepted")
        if not isinstance(header.get("kid"), str):
            raise InvalidToken("token has no key id")
        return header

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature and claims check out."""
        header = self.header(token)
        key = self.keys.get(header["kid"])
        if key is None:
            raise UnknownKid("token signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.clock_skew_s,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token issuer not accepted") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("token signature or claims invalid") from None
        if not isinstance(claims.get("sub"), str) or claims.get("role") not in ROLES:
            raise InvalidToken("token claims invalid")
        if claims.get("team") is not None and not isinstance(claims["team"], str):
            raise InvalidToken("token claims invalid")
        return claims


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2
