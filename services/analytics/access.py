"""Who may read what: the caller's `Principal` becomes a scope every query is cut to.

    admin        everything
    team_admin   its team's usage and stored completions (a team_id is required)
    member       its own key's

The master key is the administrator; a virtual key or access token is whoever the
auth service says it is (`auth_service_access`). The router, which holds the master
key, calls analytics on behalf of its own callers (stored completions) and says who
the caller is in `x-gateway-principal`; that header is believed only from an
administrator.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

import orjson

from services.auth.client import AuthClient, AuthUnavailable, key_hash
from services.kernel.bearer import bearer_token, check_key
from services.kernel.errors import Forbidden, InvalidRequest, ServiceUnavailable, Unauthorized
from services.kernel.principal import ADMIN, Principal

PRINCIPAL_HEADER = b"x-gateway-principal"
Authenticate = Callable[[Mapping[bytes, bytes]], Awaitable[Principal]]


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """The part of the data a caller may see; None = no restriction on that dimension."""

    key_id: str | None = None
    team_id: str | None = None

    @property
    def everything(self) -> bool:
        return self.key_id is None and self.team_id is None


def scope_of(principal: Principal) -> Scope:
    if principal.role == "admin":
        return Scope()
    if principal.role == "team_admin":
        if not principal.team_id:
            raise Forbidden("A team administrator without a team sees nothing.", code="no_team")
        return Scope(team_id=principal.team_id)
    return Scope(key_id=principal.key_id, team_id=principal.team_id)


def narrow(scope: Scope, key_id: str | None, team_id: str | None) -> tuple[str | None, str | None]:
    """The key and team filters of a query, cut to the scope; 403 for another team's or key's."""
    if scope.team_id is not None:
        if team_id is not None and team_id != scope.team_id:
            raise Forbidden("You can only see your own team's usage.", code="forbidden")
        team_id = scope.team_id
    if scope.key_id is not None:
        if key_id is not None and key_id != scope.key_id:
            raise Forbidden("You can only see your own key's usage.", code="forbidden")
        key_id = scope.key_id
    return key_id, team_id


def encode_principal(principal: Principal) -> bytes:
    return orjson.dumps({"key_id": principal.key_id, "role": principal.role, "team_id": principal.team_id})


def decode_principal(raw: bytes) -> Principal:
    try:
        data = orjson.loads(raw)
        key_id, role, team_id = data["key_id"], data["role"], data.get("team_id")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise InvalidRequest("x-gateway-principal is not a principal") from None
    if (
        not isinstance(key_id, str)
        or not 0 < len(key_id) <= 256
        or role not in ("admin", "team_admin", "member")
        or not (team_id is None or (isinstance(team_id, str) and 0 < len(team_id) <= 256))
    ):
        raise InvalidRequest("x-gateway-principal is not a principal")
    return Principal(key_id=key_id, role=role, team_id=team_id)


def master_key_access(master_key: str) -> Authenticate:
    """The master key is the administrator."""

    async def authenticate(headers: Mapping[bytes, bytes]) -> Principal:
        check_key(bearer_token(headers), master_key)
        return ADMIN

    return authenticate


def acting_as(caller: Principal, headers: Mapping[bytes, bytes]) -> Principal:
    """The principal a request speaks for: an administrator (the router, with the master
    key) may name another in `x-gateway-principal`; anyone else is who they are."""
    asserted = headers.get(PRINCIPAL_HEADER)
    if asserted is None or caller.role != "admin":
        return caller
    return decode_principal(asserted)


def auth_service_access(master_key: str, auth: AuthClient, ttl_s: float = 10.0) -> Authenticate:
    """The master key is the administrator; any other bearer (virtual key or access token)
    is whoever the auth service says it is (role, team), remembered for `ttl_s` seconds so
    that a dashboard refreshing every few seconds costs no round trip per request."""
    known: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(headers: Mapping[bytes, bytes]) -> Principal:
        token = bearer_token(headers)
        if secrets.compare_digest(token.encode(), master_key.encode()):
            return ADMIN
        digest = key_hash(token)
        now = time.monotonic()
        entry = known.get(digest)
        if entry is None or entry[0] < now:
            try:
                me = await auth.whoami(token)
            except AuthUnavailable:
                raise ServiceUnavailable("The auth service is unavailable; try again shortly.") from None
            principal = None
            if me is not None and me.get("role") in ("admin", "team_admin", "member"):
                principal = Principal(
                    key_id=str(me["key_id"]),
                    role=me["role"],
                    team_id=me.get("team_id"),
                    user_id=me.get("user_id"),
                )
            if len(known) > 10_000:
                known.clear()
            entry = known[digest] = (now + ttl_s, principal)
        if entry[1] is None:
            raise Unauthorized("Invalid API key.", code="invalid_api_key")
        return entry[1]

    return authenticate
