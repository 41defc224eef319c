"""Who may read what: the caller's `Principal` becomes a scope every query is cut to.

    admin        everything
    team_admin   its team's usage and stored completions (a team_id is required)
    member       its own key's

Until the auth service issues keys, the analytics API knows one credential, the
master key, which is the administrator. The router, which holds the master key,
calls analytics on behalf of its own callers (stored completions) and says who the
caller is in `x-gateway-principal`; that header is believed only from an
administrator. When auth lands, `create_app(authenticate=...)` takes its
introspection instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping

import orjson

from services.kernel.bearer import bearer_token, check_key
from services.kernel.errors import Forbidden, InvalidRequest
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
