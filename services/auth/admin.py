"""The admin API: teams, users, virtual keys, signing keys, the audit log, login.

Who may do what (`docs/auth.md` has the table):
- `admin`: everything.
- `team_admin`: their own team: read it, its members (create and manage members),
  its keys (create, change, revoke, rotate).
- `member`: their own keys (create, rename, revoke, rotate; limits and models are
  set by an administrator), their own user (name, password).

Every change is written with its audit entry in one transaction, and pushed to
the routers after the commit (`changes.py`). Failures are OpenAI-format errors; a
refused action is 403, never a 500.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from services.auth import schemas, store
from services.auth.callers import Callers, LoginThrottle
from services.auth.changes import Changes, current_record
from services.auth.client import (
    SHOWN,
    SpendReader,
    key_entry,
    key_hash,
    new_api_key,
    period_bounds,
    user_entry,
)
from services.auth.database import Connection, Database
from services.auth.passwords import Passwords
from services.auth.signing import Signer
from services.kernel.config import AuthConfig
from services.kernel.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from services.kernel.principal import Principal
from services.kernel.service import json_response

log = logging.getLogger("gateway.auth")
MAX_BODY = 65_536
MAX_PAGE = 1000


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


def denied(what: str) -> Forbidden:
    return Forbidden(f"Your role may not {what}.", code="insufficient_role")


@dataclasses.dataclass
class Admin:
    """What the handlers share; built in the app's lifespan."""

    db: Database
    config: AuthConfig
    callers: Callers
    signer: Signer
    passwords: Passwords
    changes: Changes
    throttle: LoginThrottle
    spend: SpendReader | None
    models: dict[str, str]  # configured public names and aliases → public name
    regions: tuple[str, ...] = ()  # `region.names`; when set, a restriction must name only these
    document: dict[str, Any] = dataclasses.field(default_factory=dict)  # the OpenAPI document

    # --- plumbing -----------------------------------------------------------------

    async def body(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise PayloadTooLarge(f"The request body is larger than the limit of {MAX_BODY} bytes.")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise PayloadTooLarge(f"The request body is larger than the limit of {MAX_BODY} bytes.")
        if not raw.strip():
            raw = b"{}"
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            raise InvalidRequest(f"{param}: {message}" if param else message, param=param) from None

    async def audit(
        self,
        conn: Connection,
        request: Request,
        caller: Principal,
        action: str,
        target: tuple[str, str],
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        await store.audit(
            conn,
            actor=caller.key_id,
            actor_role=caller.role,
            action=action,
            target_type=target[0],
            target_id=target[1],
            before=before,
            after=after,
            address=request.client.host if request.client else None,
            request_id=request.scope.get("state", {}).get("request_id"),
        )

    def normalise_models(self, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        out = []
        for i, name in enumerate(names):
            public = self.models.get(name)
            if public is None:
                param = f"models[{i}]"
                raise InvalidRequest(f"{param}: no configured model is named {name!r}", param=param)
            out.append(public)
        return sorted(set(out))

    def normalise_regions(self, names: list[str] | None) -> list[str] | None:
        """A region restriction as stored: sorted, each name once, each a configured region
        (when the configuration lists its regions)."""
        if names is None:
            return None
        if self.regions:
            for i, name in enumerate(names):
                if name not in self.regions:
                    param = f"regions[{i}]"
                    raise InvalidRequest(
                        f"{param}: no configured region is named {name!r}"
                        f" (region.names: {', '.join(self.regions)})",
                        param=param,
                        code="unknown_region",
                    )
        return sorted(set(names))

    async def with_spend(self, view: dict[str, Any], subject: str) -> dict[str, Any]:
        budget = view.get("budget")
        if budget is None or self.spend is None:
            return view
        start, end = period_bounds(budget["period"], time.time())
        amount = await self.spend.spent(subject, budget["period"])
        return {**view, "spend": {"amount": amount, "period_start": start, "period_end": end}}

    # --- me, login, signing keys, audit ----------------------------------------------

    async def openapi(self, request: Request) -> Response:
        return json_response(self.document)

    async def me(self, request: Request, caller: Principal) -> Response:
        return json_response(
            {
                "object": "principal",
                "key_id": caller.key_id,
                "role": caller.role,
                "user_id": caller.user_id,
                "team_id": caller.team_id,
                "models": None if caller.models is None else sorted(caller.models),
                "regions": None if caller.regions is None else sorted(caller.regions),
            }
        )

    async def login(self, request: Request) -> Response:
        body: schemas.Login = await self.body(request, schemas.Login)
        email = body.email.strip().lower()
        await self.throttle.check(email)
        row = await store.login_row(self.db, email)
        ok = await self.passwords.verify(body.password, row["password_hash"] if row else None)
        if not ok or row is None or row["disabled"]:
            await self.throttle.failed(email)
            log.info("login refused", extra={"user_id": row["id"] if row else None})
            raise Unauthorized("Invalid email or password.", code="invalid_credentials")
        await self.throttle.succeeded(email)
        await self.signer.maybe_rotate()
        token, ttl = await self.signer.issue(subject=row["id"], role=row["role"], team_id=row["team_id"])
        log.info("login", extra={"user_id": row["id"]})
        return json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl})

    async def jwks(self, request: Request) -> Response:
        return Response(
            await self.signer.jwks(),
            media_type="application/json",
            headers={"cache-control": "public, max-age=60"},
        )

    async def signing_keys(self, request: Request, caller: Principal) -> Response:
        if caller.role != "admin":
            raise denied("see the signing keys")
        return page(await self.signer.keys(), MAX_PAGE)

    async def rotate_signing_key(self, request: Request, caller: Principal) -> Response:
        if caller.role != "admin":
            raise denied("rotate the signing key")
        await self.body(request, schemas.Empty)
        kid = await self.signer.rotate()
        async with self.db.transaction() as conn:
            target = ("signing_key", kid)
            await self.audit(conn, request, caller, "signing_key.rotate", target, None, {"kid": kid})
        keys = {k["kid"]: k for k in await self.signer.keys()}
        return json_response(keys[kid], 201)

    async def audit_log(self, request: Request, caller: Principal) -> Response:
        if caller.role != "admin":
            raise denied("read the audit log")
        q = request.query_params
        limit = int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        after = int_param(q.get("after"), "after", None, 0, 2**62)
        since = float_param(q.get("since"), "since")
        filters = {k: short_param(q[k], k) for k in ("actor", "action", "target_type", "target_id") if k in q}
        rows = await store.audit_entries(self.db, filters=filters, since=since, after=after, limit=limit + 1)
        return page(rows, limit)

    async def introspect(self, request: Request) -> Response:
        """For routers only (master key): the current record of one cache entry."""
        caller = await self.callers.principal(dict(request.scope["headers"]))
        if caller.key_id != "master":
            raise denied("introspect (routers only, with the master key)")
        body = await self.body(request, _Introspect)
        record = await current_record(self.db, body.entry)
        await self.changes.remember(body.entry, record)
        return json_response(record)

    # --- teams --------------------------------------------------------------------

    async def list_teams(self, request: Request, caller: Principal) -> Response:
        q = request.query_params
        limit = int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        if caller.role != "admin" and caller.team_id is None:
            return page([], limit)
        only = None if caller.role == "admin" else caller.team_id
        rows = await store.list_teams(self.db, only=only, after=q.get("after"), limit=limit + 1)
        return page(rows, limit)

    async def create_team(self, request: Request, caller: Principal) -> Response:
        if caller.role != "admin":
            raise denied("create teams")
        body: schemas.TeamCreate = await self.body(request, schemas.TeamCreate)
        data = body.model_dump()
        data["models"] = self.normalise_models(body.models)
        data["regions"] = self.normalise_regions(body.regions)
        async with self.db.transaction() as conn, unique("a team with this name exists"):
            team = await store.create_team(conn, data)
            await self.audit(conn, request, caller, "team.create", ("team", team["id"]), None, team)
        return json_response(team, 201)

    async def get_team(self, request: Request, caller: Principal) -> Response:
        team_id = request.path_params["team_id"]
        if caller.role != "admin" and caller.team_id != team_id:
            raise denied("see other teams")
        team = await store.get_team(self.db, team_id)
        if team is None:
            raise NotFound(f"No team has the id {team_id!r}.", code="team_not_found")
        return json_response(await self.with_spend(team, f"team:{team_id}"))

    async def update_team(self, request: Request, caller: Principal) -> Response:
        if caller.role != "admin":
            raise denied("change teams")
        team_id = request.path_params["team_id"]
        body: schemas.TeamUpdate = await self.body(request, schemas.TeamUpdate)
        changes = {k: getattr(body, k) for k in body.model_fields_set}
        changes = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in changes.items()}
        if "name" in changes and changes["name"] is None:
            raise InvalidRequest("name: may not be null", param="name")
        if "models" in changes:
            changes["models"] = self.normalise_models(changes["models"])
        if "regions" in changes:
            changes["regions"] = self.normalise_regions(changes["regions"])
        async with self.db.transaction() as conn, unique("a team with this name exists"):
            before = await store.get_team(conn, team_id)
            if before is None:
                raise NotFound(f"No team has the id {team_id!r}.", code="team_not_found")
            after = await store.update_team(conn, team_id, changes)
            await self.audit(conn, request, caller, "team.update", ("team", team_id), before, after)
            entries = await store.key_hashes(conn, team_id=team_id)
            entries += await store.user_entries(conn, team_id=team_id)
        await self.changes.published(entries)
        return json_response(after)

    # --- users --------------------------------------------------------------------

    def may_see_user(self, caller: Principal, user: dict[str, Any]) -> bool:
        return (
            caller.role == "admin"
            or caller.user_id == user["id"]
            or (caller.role == "team_admin" and user["team_id"] == caller.team_id)
        )

    async def list_users(self, request: Request, caller: Principal) -> Response:
        q = request.query_params
        limit = int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        team_id = short_param(q["team_id"], "team_id") if "team_id" in q else None
        only = None
        if caller.role == "team_admin":
            if team_id is not None and team_id != caller.team_id:
                raise denied("list the users of other teams")
            team_id = caller.team_id
        elif caller.role == "member":
            if caller.user_id is None:
                return page([], limit)
            only = caller.user_id
        after = q.get("after")
        rows = await store.list_users(self.db, team_id=team_id, only=only, after=after, limit=limit + 1)
        return page(rows, limit)

    async def create_user(self, request: Request, caller: Principal) -> Response:
        if caller.role == "member":
            raise denied("create users")
        body: schemas.UserCreate = await self.body(request, schemas.UserCreate)
        data = body.model_dump()
        if caller.role == "team_admin":
            if body.role != "member":
                raise denied("create users with a role other than member")
            if body.team_id not in (None, caller.team_id):
                raise denied("add users to other teams")
            data["team_id"] = caller.team_id
        if data["role"] == "team_admin" and data["team_id"] is None:
            raise InvalidRequest("team_id: a team_admin needs a team", param="team_id")
        password_hash = await self._new_password(body.password)
        async with self.db.transaction() as conn, unique("a user with this email exists"):
            if data["team_id"] is not None and await store.get_team(conn, data["team_id"]) is None:
                raise InvalidRequest(f"team_id: no team has the id {data['team_id']!r}", param="team_id")
            user = await store.create_user(conn, data, password_hash)
            await self.audit(conn, request, caller, "user.create", ("user", user["id"]), None, user)
        return json_response(user, 201)

    async def _new_password(self, password: str | None) -> str | None:
        if password is None:
            return None
        if len(password) < self.config.login.password_min_length:
            raise InvalidRequest(
                f"password: must be at least {self.config.login.password_min_length} characters",
                param="password",
            )
        return await self.passwords.hash(password)

    async def get_user(self, request: Request, caller: Principal) -> Response:
        user = await self._user(request.path_params["user_id"])
        if not self.may_see_user(caller, user):
            raise denied("see this user")
        return json_response(user)

    async def _user(self, user_id: str, conn: Connection | None = None) -> dict[str, Any]:
        user = await store.get_user(conn or self.db, user_id)
        if user is None:
            raise NotFound(f"No user has the id {user_id!r}.", code="user_not_found")
        return user

    def _check_user_change(self, caller: Principal, user: dict[str, Any], changes: dict[str, Any]) -> None:
        if caller.role == "admin":
            role, team = changes.get("role", user["role"]), changes.get("team_id", user["team_id"])
            if role == "team_admin" and team is None:
                raise InvalidRequest("team_id: a team_admin needs a team", param="team_id")
            return
        itself = caller.user_id == user["id"]
        manages = manages_member(caller, user)
        if not (itself or manages):
            raise denied("change this user")
        allowed = {"name", "password", "current_password"} | ({"disabled"} if manages else set())
        if manages and changes.get("role", "member") == "member":
            allowed.add("role")
        extra = sorted(set(changes) - allowed)
        if extra:
            raise denied(f"change {', '.join(extra)} of this user")
        if itself and "password" in changes and not manages and changes.get("current_password") is None:
            raise InvalidRequest(
                "current_password: needed to change your own password", param="current_password"
            )

    async def update_user(self, request: Request, caller: Principal) -> Response:
        user_id = request.path_params["user_id"]
        body: schemas.UserUpdate = await self.body(request, schemas.UserUpdate)
        changes = {k: getattr(body, k) for k in body.model_fields_set}
        for field in ("role", "disabled"):
            if field in changes and changes[field] is None:
                raise InvalidRequest(f"{field}: may not be null", param=field)
        user = await self._user(user_id)
        self._check_user_change(caller, user, changes)
        if "current_password" in changes and caller.user_id == user_id:
            stored = await store.password_hash_of(self.db, user_id)
            if not await self.passwords.verify(changes["current_password"] or "", stored):
                raise InvalidRequest("current_password: does not match", param="current_password")
        password_hash = await self._new_password(changes.pop("password", None))
        changes.pop("current_password", None)
        async with self.db.transaction() as conn:
            if changes.get("team_id") is not None and await store.get_team(conn, changes["team_id"]) is None:
                raise InvalidRequest(f"team_id: no team has the id {changes['team_id']!r}", param="team_id")
            before = await self._user(user_id, conn)
            after = await store.update_user(conn, user_id, changes, password_hash)
            if after["team_id"] != before["team_id"]:
                # A user's keys belong to the user's team: they move with the user.
                await store.move_keys(conn, user_id, after["team_id"])
            audited = {**after, "password_changed": True} if password_hash else after
            await self.audit(conn, request, caller, "user.update", ("user", user_id), before, audited)
            entries = [user_entry(user_id), *await store.key_hashes(conn, user_id=user_id)]
        await self.changes.published(entries)
        return json_response(after)

    async def delete_user(self, request: Request, caller: Principal) -> Response:
        """Disable the user and revoke every key they own (rows stay, for the audit)."""
        user_id = request.path_params["user_id"]
        user = await self._user(user_id)
        manages = manages_member(caller, user)
        if caller.role != "admin" and not manages:
            raise denied("delete this user")
        async with self.db.transaction() as conn:
            before = await self._user(user_id, conn)
            after = await store.update_user(conn, user_id, {"disabled": True})
            keys = await store.list_keys(conn, team_id=None, user_id=user_id, after=None, limit=1_000_000)
            for key in keys:
                if key["status"] != "revoked":
                    revoked = await store.revoke_key(conn, key["id"])
                    target = ("api_key", key["id"])
                    await self.audit(conn, request, caller, "key.revoke", target, key, revoked)
            await self.audit(conn, request, caller, "user.delete", ("user", user_id), before, after)
            entries = [user_entry(user_id), *await store.key_hashes(conn, user_id=user_id)]
        await self.changes.published(entries)
        return json_response(after)

    # --- keys ---------------------------------------------------------------------

    def may_manage_key(self, caller: Principal, key: dict[str, Any]) -> bool:
        return (
            caller.role == "admin"
            or (caller.role == "team_admin" and key["team_id"] == caller.team_id)
            or (caller.user_id is not None and key["user_id"] == caller.user_id)
        )

    async def _key(self, key_id: str, caller: Principal, conn: Connection | None = None) -> dict[str, Any]:
        key = await store.get_key(conn or self.db, key_id)
        if key is None:
            raise NotFound(f"No API key has the id {key_id!r}.", code="key_not_found")
        if not self.may_manage_key(caller, key):
            raise denied("use this API key's settings")
        return key

    async def list_keys(self, request: Request, caller: Principal) -> Response:
        q = request.query_params
        limit = int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        team_id = short_param(q["team_id"], "team_id") if "team_id" in q else None
        user_id = short_param(q["user_id"], "user_id") if "user_id" in q else None
        if caller.role == "team_admin":
            if team_id is not None and team_id != caller.team_id:
                raise denied("list the keys of other teams")
            team_id = caller.team_id
        elif caller.role == "member":
            if caller.user_id is None or user_id not in (None, caller.user_id):
                raise denied("list other users' keys")
            user_id = caller.user_id
        after = q.get("after")
        rows = await store.list_keys(self.db, team_id=team_id, user_id=user_id, after=after, limit=limit + 1)
        return page(rows, limit)

    async def create_key(self, request: Request, caller: Principal) -> Response:
        body: schemas.KeyCreate = await self.body(request, schemas.KeyCreate)
        data = body.model_dump()
        data["models"] = self.normalise_models(body.models)
        data["regions"] = self.normalise_regions(body.regions)
        if caller.role == "member":
            if caller.user_id is None:
                raise denied("create keys without a user")
            limits = ("models", "regions", "rpm", "tpm", "budget")
            limited = sorted(f for f in limits if f in body.model_fields_set)
            if limited:
                raise denied(f"set {', '.join(limited)} (an administrator sets limits)")
            if body.user_id not in (None, caller.user_id):
                raise denied("create keys for other users")
            data["user_id"] = caller.user_id
        if data["user_id"] is not None:
            owner = await store.get_user(self.db, data["user_id"])
            if owner is None:
                raise InvalidRequest(f"user_id: no user has the id {data['user_id']!r}", param="user_id")
            if owner["disabled"]:
                raise InvalidRequest("user_id: this user is disabled", param="user_id")
            if data["team_id"] not in (None, owner["team_id"]):
                raise InvalidRequest("team_id: a user's key belongs to the user's team", param="team_id")
            data["team_id"] = owner["team_id"]
        if caller.role == "team_admin":
            if data["team_id"] is None and data["user_id"] is None:
                data["team_id"] = caller.team_id
            if data["team_id"] != caller.team_id:
                raise denied("create keys outside your team")
        if data["team_id"] is not None and await store.get_team(self.db, data["team_id"]) is None:
            raise InvalidRequest(f"team_id: no team has the id {data['team_id']!r}", param="team_id")
        secret = new_api_key()
        async with self.db.transaction() as conn:
            digest, shown = key_hash(secret), secret[:SHOWN]
            key = await store.create_key(conn, data, digest=digest, prefix=shown, created_by=caller.key_id)
            await self.audit(conn, request, caller, "key.create", ("api_key", key["id"]), None, key)
        await self.changes.published([key_entry(key_hash(secret))])  # a router may remember it as unknown
        return json_response({**key, "key": secret}, 201)

    async def get_key(self, request: Request, caller: Principal) -> Response:
        key = await self._key(request.path_params["key_id"], caller)
        return json_response(await self.with_spend(key, f"key:{key['id']}"))

    async def update_key(self, request: Request, caller: Principal) -> Response:
        key_id = request.path_params["key_id"]
        body: schemas.KeyUpdate = await self.body(request, schemas.KeyUpdate)
        changes = {k: getattr(body, k) for k in body.model_fields_set}
        changes = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in changes.items()}
        if caller.role == "member":
            limited = sorted(set(changes) - {"name", "metadata"})
            if limited:
                raise denied(f"change {', '.join(limited)} (an administrator sets limits)")
        if "models" in changes:
            changes["models"] = self.normalise_models(changes["models"])
        if "regions" in changes:
            changes["regions"] = self.normalise_regions(changes["regions"])
        if "metadata" in changes and changes["metadata"] is None:
            changes["metadata"] = {}
        async with self.db.transaction() as conn:
            before = await self._key(key_id, caller, conn)
            if before["status"] == "revoked":
                raise Conflict("This API key is revoked; it cannot be changed.", code="key_revoked")
            after = await store.update_key(conn, key_id, changes)
            await self.audit(conn, request, caller, "key.update", ("api_key", key_id), before, after)
            entries = await store.key_hashes(conn, key_id=key_id)
        await self.changes.published(entries)
        return json_response(after)

    async def revoke_key(self, request: Request, caller: Principal) -> Response:
        key_id = request.path_params["key_id"]
        await self.body(request, schemas.Empty)
        async with self.db.transaction() as conn:
            before = await self._key(key_id, caller, conn)
            entries = await store.key_hashes(conn, key_id=key_id)  # the old secret's too
            if before["status"] == "revoked":
                return json_response(before)
            after = await store.revoke_key(conn, key_id)
            await self.audit(conn, request, caller, "key.revoke", ("api_key", key_id), before, after)
        await self.changes.published(entries)
        log.info("key revoked", extra={"key_id": key_id, "actor": caller.key_id})
        return json_response(after)

    async def rotate_key(self, request: Request, caller: Principal) -> Response:
        key_id = request.path_params["key_id"]
        body: schemas.KeyRotate = await self.body(request, schemas.KeyRotate)
        secret = new_api_key()
        async with self.db.transaction() as conn:
            before = await self._key(key_id, caller, conn)
            if before["status"] == "revoked":
                raise Conflict("This API key is revoked; it cannot be rotated.", code="key_revoked")
            dropped = await store.key_hashes(conn, key_id=key_id)
            after = await store.rotate_key(
                conn, key_id, digest=key_hash(secret), prefix=secret[:SHOWN], overlap_s=body.overlap_s
            )
            audited = {**after, "overlap_s": body.overlap_s}
            await self.audit(conn, request, caller, "key.rotate", ("api_key", key_id), before, audited)
            entries = [*dropped, *await store.key_hashes(conn, key_id=key_id)]
        await self.changes.published(entries)
        return json_response({**after, "key": secret}, 201)


class _Introspect(schemas._Body):
    entry: str = Field(min_length=3, max_length=80, pattern=r"^[ku]:[A-Za-z0-9_]+$")


class unique:  # lower case: used as a context manager, it reads as a clause
    """Turns a unique-constraint violation into a 409 with `message`."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if isinstance(exc, asyncpg.UniqueViolationError) or (
            isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)
        ):
            raise Conflict(self.message) from None
        return False


def manages_member(caller: Principal, user: dict[str, Any]) -> bool:
    """A team admin manages the plain members of their own team."""
    return caller.role == "team_admin" and user["team_id"] == caller.team_id and user["role"] == "member"


def page(rows: Sequence[dict[str, Any]], limit: int) -> Response:
    return json_response({"object": "list", "data": list(rows[:limit]), "has_more": len(rows) > limit})


def int_param(raw: str | None, name: str, default: int | None, low: int, high: int) -> Any:
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return int(raw)


def float_param(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number (unix seconds)", param=name) from None
    if not 0 <= value < 1e11:
        raise InvalidRequest(f"{name} must be a number (unix seconds)", param=name)
    return value


def short_param(raw: str, name: str) -> str:
    if not 0 < len(raw) <= 128:
        raise InvalidRequest(f"{name} must be 1-128 characters", param=name)
    return raw


Handler = Callable[[Request, Principal], Awaitable[Response]]
