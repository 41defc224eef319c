"""The auth service's endpoints as one table: the Starlette routes and the OpenAPI
document are both built from it, and a test checks the document against the routes
the app really serves and the answers it really gives."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.auth import schemas
from services.auth.admin import Admin

Access = Literal["public", "caller", "master"]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: str  # the `Admin` method
    summary: str
    access: Access = "caller"
    who: str = "any authenticated caller"  # who may call it, in words
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    status: int = 200
    query: tuple[tuple[str, str, str], ...] = ()  # (name, JSON type, description)


_PAGE = (
    ("limit", "integer", "page size, 1-1000 (default 100)"),
    ("after", "string", "the id of the last item of the previous page"),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/auth/login", "login", "Log in with email and password: an access token (JWT).",
             access="public", who="anyone", body=schemas.Login, answer=schemas.Token),
    Endpoint("GET", "/v1/auth/me", "me", "The caller as the gateway sees them.", answer=schemas.Me),
    Endpoint("GET", "/.well-known/jwks.json", "jwks", "The public keys that verify access tokens (JWKS).",
             access="public", who="anyone"),
    Endpoint("GET", "/v1/teams", "list_teams", "List teams (all for admins, else the caller's own).",
             answer=schemas.list_of(schemas.Team), query=_PAGE),
    Endpoint("POST", "/v1/teams", "create_team", "Create a team.", who="admin",
             body=schemas.TeamCreate, answer=schemas.Team, status=201),
    Endpoint("GET", "/v1/teams/{team_id}", "get_team", "One team, with its current spend.",
             who="admin; members of the team", answer=schemas.Team),
    Endpoint("PATCH", "/v1/teams/{team_id}", "update_team",
             "Change a team's name, models, regions, limits, budget.", who="admin",
             body=schemas.TeamUpdate, answer=schemas.Team),
    Endpoint("GET", "/v1/users", "list_users",
             "List users (admins: all; team admins: their team; members: self).",
             answer=schemas.list_of(schemas.User),
             query=(("team_id", "string", "only this team's users"), *_PAGE)),
    Endpoint("POST", "/v1/users", "create_user", "Create a user.",
             who="admin; team_admin (members of their own team)", body=schemas.UserCreate,
             answer=schemas.User, status=201),
    Endpoint("GET", "/v1/users/{user_id}", "get_user", "One user.",
             who="admin; team_admin (their team); the user", answer=schemas.User),
    Endpoint("PATCH", "/v1/users/{user_id}", "update_user", "Change a user (role, team, password, disabled).",
             who="admin; team_admin (members of their team); the user (name, password)",
             body=schemas.UserUpdate, answer=schemas.User),
    Endpoint("DELETE", "/v1/users/{user_id}", "delete_user", "Disable a user and revoke all their keys.",
             who="admin; team_admin (members of their team)", answer=schemas.User),
    Endpoint("GET", "/v1/keys", "list_keys", "List virtual keys (never the keys themselves).",
             answer=schemas.list_of(schemas.ApiKey),
             query=(("team_id", "string", "only this team's keys"),
                    ("user_id", "string", "only this user's keys"), *_PAGE)),
    Endpoint("POST", "/v1/keys", "create_key", "Create a virtual key; the key is in this answer only.",
             who="admin; team_admin (their team); member (own keys, no limits)", body=schemas.KeyCreate,
             answer=schemas.NewApiKey, status=201),
    Endpoint("GET", "/v1/keys/{key_id}", "get_key", "One virtual key, with its current spend.",
             who="admin; team_admin (their team); the owner", answer=schemas.ApiKey),
    Endpoint("PATCH", "/v1/keys/{key_id}", "update_key",
             "Change a key's models, regions, limits, budget, expiry, metadata.",
             who="admin; team_admin (their team); the owner (name, metadata)", body=schemas.KeyUpdate,
             answer=schemas.ApiKey),
    Endpoint("POST", "/v1/keys/{key_id}/revoke", "revoke_key",
             "Revoke a key: refused by every router within a second.",
             who="admin; team_admin (their team); the owner", answer=schemas.ApiKey),
    Endpoint("POST", "/v1/keys/{key_id}/rotate", "rotate_key",
             "A new secret for the key; the old one keeps working for overlap_s seconds.",
             who="admin; team_admin (their team); the owner", body=schemas.KeyRotate,
             answer=schemas.NewApiKey, status=201),
    Endpoint("GET", "/v1/signing-keys", "signing_keys", "The JWT signing keys (public metadata only).",
             who="admin", answer=schemas.list_of(schemas.SigningKey)),
    Endpoint("POST", "/v1/signing-keys/rotate", "rotate_signing_key",
             "A new signing key; the previous one stays published until its tokens expire.", who="admin",
             answer=schemas.SigningKey, status=201),
    Endpoint("GET", "/v1/audit", "audit_log", "The audit log, newest first.", who="admin",
             answer=schemas.list_of(schemas.AuditEntry),
             query=(("actor", "string", ""), ("action", "string", "e.g. key.revoke"),
                    ("target_type", "string", ""), ("target_id", "string", ""),
                    ("since", "number", "unix seconds"),
                    ("limit", "integer", "page size, 1-1000 (default 100)"),
                    ("after", "integer", "the id of the last entry of the previous page"))),
    Endpoint("POST", "/v1/internal/introspect", "introspect", "What a router caches about a key or a user.",
             access="master", who="routers (master key)"),
    Endpoint("GET", "/openapi.json", "openapi", "This document.", access="public", who="anyone"),
)  # fmt: skip


def routes() -> list[Route]:
    """The routes; each finds the `Admin` in the app state built by the lifespan."""
    out = []
    for endpoint in ENDPOINTS:
        out.append(Route(endpoint.path, _handler(endpoint), methods=[endpoint.method]))
    return out


def _handler(endpoint: Endpoint) -> Any:
    name = endpoint.handler

    if endpoint.access == "caller":

        async def authenticated(request: Request) -> Response:
            admin: Admin = request.app.state.admin
            caller = await admin.callers.principal(dict(request.scope["headers"]))
            response: Response = await getattr(admin, name)(request, caller)
            return response

        return authenticated

    async def anyone(request: Request) -> Response:
        response: Response = await getattr(request.app.state.admin, name)(request)
        return response

    return anyone


_PROBES = (
    ("/healthz", "Liveness: the process answers."),
    ("/readyz", "Readiness: the database answers (503 otherwise)."),
    ("/metrics", "Prometheus metrics."),
)


def document(version: str = "1.0.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the auth service."""
    models: set[type[BaseModel]] = set()
    for e in ENDPOINTS:
        models.update(m for m in (e.body, e.answer) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas_ = dict(defs.get("$defs", {}))
    schemas_["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    error = {"description": "An error", "content": {"application/json": {"schema": _ref("Error")}}}
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        operation: dict[str, Any] = {
            "operationId": e.handler,
            "summary": e.summary,
            "description": f"Who may call it: {e.who}.",
            "responses": {str(e.status): _answer(e), "4XX": error, "5XX": error},
        }
        if e.access != "public":
            operation["security"] = [{"bearer": []}]
        else:
            operation["security"] = []
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in re.findall(r"{(\w+)}", e.path)
        ]
        parameters += [
            {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
            for n, t, d in e.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if e.body is not None:
            operation["requestBody"] = {
                "required": e.body is not schemas.KeyRotate,
                "content": {"application/json": {"schema": _ref(e.body.__name__)}},
            }
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    for path, summary in _PROBES:
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": summary,
                "security": [],
                "responses": {"200": {"description": "OK"}, "503": {"description": "Not ready"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM Gateway auth service",
            "version": version,
            "description": "Teams, users, roles, virtual API keys, budgets, JWT and the audit log. "
            "Embedded, every path is served under /auth on the gateway's port.",
        },
        "components": {
            "schemas": schemas_,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The master key, a virtual key (sk-gw-...) or an access token from login.",
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(e: Endpoint) -> dict[str, Any]:
    if e.answer is None:
        return {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {"description": "OK", "content": {"application/json": {"schema": _ref(e.answer.__name__)}}}
