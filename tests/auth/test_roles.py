"""Every role and every admin endpoint, on PostgreSQL and Redis: allowed or 403, never a 500.

Each role calls with each kind of credential it can hold (the master key, an access
token from login, a virtual key); targets are in the caller's own team unless a case
says otherwise, and a mutation gets a fresh target for every call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.auth.api import ENDPOINTS
from tests.auth.conftest import PASSWORD, Api, unique_name
from tests.conftest import MASTER_KEY


@dataclasses.dataclass
class World:
    api: Api
    team_a: dict[str, Any]
    team_b: dict[str, Any]
    admin: dict[str, Any]
    team_admin: dict[str, Any]
    member: dict[str, Any]
    member_b: dict[str, Any]
    credentials: dict[str, list[tuple[str, str]]]  # role → [(kind, token)]

    def me(self, role: str) -> dict[str, Any]:
        return {"admin": self.admin, "team_admin": self.team_admin, "member": self.member}[role]


@pytest.fixture
async def world(auth_api: Api) -> World:
    api = auth_api
    team_a, team_b = await api.team(), await api.team()
    admin = await api.user("admin", password=PASSWORD)
    team_admin = await api.user("team_admin", team_a["id"], password=PASSWORD)
    member = await api.user("member", team_a["id"], password=PASSWORD)
    member_b = await api.user("member", team_b["id"], password=PASSWORD)
    credentials: dict[str, list[tuple[str, str]]] = {"admin": [("master", MASTER_KEY)]}
    for role, user in (("admin", admin), ("team_admin", team_admin), ("member", member)):
        token = await api.login(user["email"])
        key = await api.key(user_id=user["id"])
        credentials.setdefault(role, []).extend([("jwt", token), ("key", key["key"])])
    return World(api, team_a, team_b, admin, team_admin, member, member_b, credentials)


Request = tuple[str, str, Any]  # method, path, body
Build = Callable[[World, str], Awaitable[Request]]


async def fresh_member_key(w: World, role: str) -> str:
    return str((await w.api.key(user_id=w.member["id"]))["id"])


async def fresh_member(w: World, role: str) -> str:
    return str((await w.api.user("member", w.team_a["id"]))["id"])


CASES: list[tuple[str, Build, dict[str, int]]] = []


def case(name: str, allowed: dict[str, int]) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        CASES.append((name, build, allowed))
        return build

    return register


ALL = {"admin": 200, "team_admin": 200, "member": 200}
ADMIN_ONLY = {"admin": 200, "team_admin": 403, "member": 403}


@case("login", ALL)
async def _login(w: World, role: str) -> Request:
    return "POST", "/v1/auth/login", {"email": w.member["email"], "password": PASSWORD}


@case("me", ALL)
async def _me(w: World, role: str) -> Request:
    return "GET", "/v1/auth/me", None


@case("jwks", ALL)
async def _jwks(w: World, role: str) -> Request:
    return "GET", "/.well-known/jwks.json", None


@case("openapi", ALL)
async def _openapi(w: World, role: str) -> Request:
    return "GET", "/openapi.json", None


@case("list teams", ALL)
async def _list_teams(w: World, role: str) -> Request:
    return "GET", "/v1/teams", None


@case("create team", {"admin": 201, "team_admin": 403, "member": 403})
async def _create_team(w: World, role: str) -> Request:
    return "POST", "/v1/teams", {"name": unique_name("team"), "rpm": 10}


@case("get own team", ALL)
async def _get_team(w: World, role: str) -> Request:
    return "GET", f"/v1/teams/{w.team_a['id']}", None


@case("get other team", ADMIN_ONLY)
async def _get_other_team(w: World, role: str) -> Request:
    return "GET", f"/v1/teams/{w.team_b['id']}", None


@case("update team", ADMIN_ONLY)
async def _update_team(w: World, role: str) -> Request:
    return "PATCH", f"/v1/teams/{w.team_a['id']}", {"tpm": 100_000}


@case("list users", ALL)
async def _list_users(w: World, role: str) -> Request:
    return "GET", "/v1/users", None


@case("list other team's users", {"admin": 200, "team_admin": 403, "member": 200})
async def _list_users_b(w: World, role: str) -> Request:
    # A member sees only themself, whatever the filter; a team admin may not ask.
    return "GET", f"/v1/users?team_id={w.team_b['id']}", None


@case("create member", {"admin": 201, "team_admin": 201, "member": 403})
async def _create_member(w: World, role: str) -> Request:
    email = f"{unique_name('new')}@example.test"
    return "POST", "/v1/users", {"email": email, "role": "member", "team_id": w.team_a["id"]}


@case("create team admin", {"admin": 201, "team_admin": 403, "member": 403})
async def _create_team_admin(w: World, role: str) -> Request:
    email = f"{unique_name('new')}@example.test"
    return "POST", "/v1/users", {"email": email, "role": "team_admin", "team_id": w.team_a["id"]}


@case("get a member", {"admin": 200, "team_admin": 200, "member": 403})
async def _get_member(w: World, role: str) -> Request:
    return "GET", f"/v1/users/{await fresh_member(w, role)}", None


@case("get self", ALL)
async def _get_self(w: World, role: str) -> Request:
    return "GET", f"/v1/users/{w.me(role)['id']}", None


@case("get other team's member", ADMIN_ONLY)
async def _get_member_b(w: World, role: str) -> Request:
    return "GET", f"/v1/users/{w.member_b['id']}", None


@case("rename a member", {"admin": 200, "team_admin": 200, "member": 403})
async def _rename_member(w: World, role: str) -> Request:
    return "PATCH", f"/v1/users/{await fresh_member(w, role)}", {"name": "Renamed"}


@case("rename self", ALL)
async def _rename_self(w: World, role: str) -> Request:
    return "PATCH", f"/v1/users/{w.me(role)['id']}", {"name": unique_name("name")}


@case("promote self", {"admin": 200, "team_admin": 403, "member": 403})
async def _promote_self(w: World, role: str) -> Request:
    return "PATCH", f"/v1/users/{w.me(role)['id']}", {"role": w.me(role)["role"]}


@case("delete a member", {"admin": 200, "team_admin": 200, "member": 403})
async def _delete_member(w: World, role: str) -> Request:
    return "DELETE", f"/v1/users/{await fresh_member(w, role)}", None


@case("list keys", ALL)
async def _list_keys(w: World, role: str) -> Request:
    return "GET", "/v1/keys", None


@case("create own key", {"admin": 201, "team_admin": 201, "member": 201})
async def _create_key(w: World, role: str) -> Request:
    return "POST", "/v1/keys", {"name": "mine", "user_id": w.me(role)["id"]}


@case("create key with limits", {"admin": 201, "team_admin": 201, "member": 403})
async def _create_limited_key(w: World, role: str) -> Request:
    return "POST", "/v1/keys", {"user_id": w.me(role)["id"], "rpm": 5, "budget": {"amount": 1}}


@case("create key in other team", {"admin": 201, "team_admin": 403, "member": 403})
async def _create_key_b(w: World, role: str) -> Request:
    return "POST", "/v1/keys", {"user_id": w.member_b["id"]}


@case("get a member's key", ALL)
async def _get_key(w: World, role: str) -> Request:
    return "GET", f"/v1/keys/{await fresh_member_key(w, role)}", None


@case("get other team's key", ADMIN_ONLY)
async def _get_key_b(w: World, role: str) -> Request:
    key = await w.api.key(user_id=w.member_b["id"])
    return "GET", f"/v1/keys/{key['id']}", None


@case("limit a member's key", {"admin": 200, "team_admin": 200, "member": 403})
async def _limit_key(w: World, role: str) -> Request:
    return "PATCH", f"/v1/keys/{await fresh_member_key(w, role)}", {"rpm": 5, "models": ["small"]}


@case("rename a member's key", ALL)
async def _rename_key(w: World, role: str) -> Request:
    return "PATCH", f"/v1/keys/{await fresh_member_key(w, role)}", {"name": "renamed", "metadata": {"a": 1}}


@case("revoke a member's key", ALL)
async def _revoke_key(w: World, role: str) -> Request:
    return "POST", f"/v1/keys/{await fresh_member_key(w, role)}/revoke", None


@case("revoke other team's key", ADMIN_ONLY)
async def _revoke_key_b(w: World, role: str) -> Request:
    key = await w.api.key(user_id=w.member_b["id"])
    return "POST", f"/v1/keys/{key['id']}/revoke", None


@case("rotate a member's key", {"admin": 201, "team_admin": 201, "member": 201})
async def _rotate_key(w: World, role: str) -> Request:
    return "POST", f"/v1/keys/{await fresh_member_key(w, role)}/rotate", {"overlap_s": 60}


@case("list signing keys", ADMIN_ONLY)
async def _signing_keys(w: World, role: str) -> Request:
    return "GET", "/v1/signing-keys", None


@case("rotate signing key", {"admin": 201, "team_admin": 403, "member": 403})
async def _rotate_signing(w: World, role: str) -> Request:
    return "POST", "/v1/signing-keys/rotate", None


@case("read audit log", ADMIN_ONLY)
async def _audit(w: World, role: str) -> Request:
    return "GET", "/v1/audit?limit=5", None


@case("introspect", {"admin": 403, "team_admin": 403, "member": 403})  # the master key only, see below
async def _introspect(w: World, role: str) -> Request:
    return "POST", "/v1/internal/introspect", {"entry": f"u:{w.member['id']}"}


def test_every_endpoint_has_a_case():
    paths = {(e.method, e.path) for e in ENDPOINTS}
    covered = set()
    for name, *_ in CASES:
        covered.add(name)
    assert len(covered) >= len(paths)  # several cases per endpoint where ownership matters


async def test_every_role_on_every_endpoint(world: World):
    seen: set[tuple[str, str]] = set()
    failures = []
    for name, build, allowed in CASES:
        for role, credentials in world.credentials.items():
            for kind, token in credentials:
                method, path, body = await build(world, role)
                seen.add((method, _template(path)))
                response = await world.api.call(method, path, token, body)
                expected = allowed[role]
                if kind == "master" and name == "introspect":
                    expected = 200
                if response.status_code != expected:
                    failures.append(
                        f"{name} as {role} ({kind}): {response.status_code} {response.text[:200]}"
                    )
                assert response.status_code < 500, response.text
                if response.status_code == 403:
                    assert response.json()["error"]["type"] == "permission_error"
    assert not failures, "\n".join(failures)
    assert seen == {(e.method, e.path) for e in ENDPOINTS}


async def test_every_protected_endpoint_needs_a_credential(world: World):
    for endpoint in ENDPOINTS:
        if endpoint.access == "public":
            continue
        path = endpoint.path.replace("{team_id}", world.team_a["id"])
        path = path.replace("{user_id}", world.member["id"]).replace("{key_id}", "key_x")
        for headers in ({}, {"authorization": "Bearer sk-gw-not-a-key"}, {"authorization": "Basic abc"}):
            response = await world.api.http.request(endpoint.method, path, headers=headers, json={})
            assert response.status_code == 401, (endpoint.path, headers, response.text)


def _template(path: str) -> str:
    """`/v1/keys/key_123/revoke` → `/v1/keys/{key_id}/revoke`."""
    path = path.split("?")[0]
    parts = path.split("/")
    names = {"teams": "{team_id}", "users": "{user_id}", "keys": "{key_id}"}
    for i in range(1, len(parts)):
        if parts[i - 1] in names and parts[i] and parts[i] != "rotate":
            parts[i] = names[parts[i - 1]]
    return "/".join(parts)
