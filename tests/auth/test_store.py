"""Storage: versioned migrations on PostgreSQL and SQLite, the same model on both, the
append-only audit log, and the records the routers cache."""

from __future__ import annotations

import sqlite3
import time

import asyncpg
import httpx
import pytest

from services.auth import store
from services.auth.app import create_app
from services.auth.client import key_entry, key_hash
from services.auth.database import PostgresDatabase, SqliteDatabase, migrations
from tests.auth.conftest import AUTH_DSN, PASSWORD, Api, auth_config
from tests.conftest import MASTER_KEY, make_settings


def test_both_dialects_have_the_same_migrations():
    pg, lite = migrations("postgres"), migrations("sqlite")
    assert [v for v, _ in pg] == [v for v, _ in lite]
    assert [v for v, _ in pg] == list(range(1, len(pg) + 1))
    tables = {
        "auth_roles",
        "auth_teams",
        "auth_users",
        "auth_keys",
        "auth_budgets",
        "auth_signing_keys",
        "auth_audit",
    }
    for sqls in (pg, lite):
        text = "".join(sql for _, sql in sqls)
        assert {t for t in tables if f"CREATE TABLE IF NOT EXISTS {t} " not in text} == set()


async def test_postgres_records_its_migrations_as_service_auth(pg):
    db = await PostgresDatabase.open(AUTH_DSN)
    try:
        await db.migrate()  # a second run (another replica) finds nothing to do
        versions = await pg.fetch(
            "SELECT version FROM schema_migrations WHERE service = 'auth' ORDER BY version"
        )
        assert [r["version"] for r in versions] == [v for v, _ in migrations("postgres")]
        roles = await pg.fetch("SELECT name FROM auth_roles ORDER BY rank")
        assert [r["name"] for r in roles] == ["member", "team_admin", "admin"]
    finally:
        await db.close()


async def test_sqlite_keeps_the_same_model(tmp_path):
    db = await SqliteDatabase.open(tmp_path / "auth.db")
    try:
        rows = await db.fetch("SELECT service, version FROM schema_migrations")
        assert rows == [{"service": "auth", "version": v} for v, _ in migrations("sqlite")]
        team = await store.create_team(
            db, {"name": "t", "models": ["a"], "rpm": 3, "budget": {"amount": 2.5}}
        )
        assert team["budget"] == {"amount": 2.5, "period": None}
        assert team["models"] == ["a"]
        async with db.transaction() as conn:
            await store.audit(
                conn,
                actor="master",
                actor_role="admin",
                action="team.create",
                target_type="team",
                target_id=team["id"],
                before=None,
                after=team,
                address="127.0.0.1",
                request_id="r1",
            )
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            await db.execute("UPDATE auth_audit SET actor = 'someone else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            await db.execute("DELETE FROM auth_audit")
    finally:
        await db.close()
    again = await SqliteDatabase.open(tmp_path / "auth.db")  # reopening migrates nothing twice
    await again.close()


async def test_the_audit_log_is_append_only_in_postgres(auth_api: Api, pg):
    team = await auth_api.team()
    assert await pg.fetchval("SELECT count(*) FROM auth_audit WHERE target_id = $1", team["id"]) == 1
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pg.execute("UPDATE auth_audit SET actor = 'x' WHERE target_id = $1", team["id"])
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pg.execute("DELETE FROM auth_audit WHERE target_id = $1", team["id"])


async def test_every_change_is_audited_with_who_what_before_after_when_where(auth_api: Api):
    team = await auth_api.team(rpm=5)
    started = time.time()
    user = await auth_api.user("member", team["id"], password=PASSWORD)
    token = await auth_api.login(user["email"])
    key = await auth_api.key(token=token, name="mine")
    await auth_api.ok("PATCH", f"/v1/teams/{team['id']}", json={"rpm": 7})
    await auth_api.ok("POST", f"/v1/keys/{key['id']}/revoke", token=token)
    entries = (await auth_api.ok("GET", f"/v1/audit?target_id={team['id']}"))["data"]
    assert [e["action"] for e in entries] == ["team.update", "team.create"]
    update = entries[0]
    assert update["actor"] == "master"
    assert update["actor_role"] == "admin"
    assert update["before"]["rpm"] == 5
    assert update["after"]["rpm"] == 7
    assert update["address"] == "127.0.0.1"
    assert update["request_id"]
    assert update["at"] >= started
    revoke = (await auth_api.ok("GET", f"/v1/audit?target_id={key['id']}&action=key.revoke"))["data"]
    assert revoke[0]["actor"] == f"user:{user['id']}"
    assert revoke[0]["actor_role"] == "member"
    assert revoke[0]["before"]["status"] == "active"
    assert revoke[0]["after"]["status"] == "revoked"
    # Pages: newest first, `after` continues.
    first = await auth_api.ok("GET", "/v1/audit?limit=1")
    assert first["has_more"]
    second = await auth_api.ok("GET", f"/v1/audit?limit=1&after={first['data'][0]['id']}")
    assert second["data"][0]["id"] < first["data"][0]["id"]


async def test_records_compose_key_user_and_team(auth_api: Api):
    team = await auth_api.team(
        models=["mock-small", "mock-free"], rpm=50, budget={"amount": 9, "period": "month"}
    )
    user = await auth_api.user("team_admin", team["id"])
    created = await auth_api.key(user_id=user["id"], models=["small"], tpm=1000, budget={"amount": 1})
    record = await auth_api.ok(
        "POST", "/v1/internal/introspect", json={"entry": key_entry(key_hash(created["key"]))}
    )
    assert record["status"] == "active"
    assert record["key_id"] == created["id"]
    assert record["role"] == "team_admin"
    assert record["models"] == ["mock-small"]  # the key's list within the team's
    assert record["limits"] == {"rpm": None, "tpm": 1000, "budget": 1.0, "budget_period": None}
    assert record["team_limits"] == {"rpm": 50, "tpm": None, "budget": 9.0, "budget_period": "month"}
    rotated = await auth_api.ok("POST", f"/v1/keys/{created['id']}/rotate", json={"overlap_s": 60})
    old = await auth_api.ok(
        "POST", "/v1/internal/introspect", json={"entry": key_entry(key_hash(created["key"]))}
    )
    new = await auth_api.ok(
        "POST", "/v1/internal/introspect", json={"entry": key_entry(key_hash(rotated["key"]))}
    )
    assert old["status"] == new["status"] == "active"
    assert old["key_id"] == new["key_id"] == created["id"]
    assert 0 < old["expires_at"] - time.time() <= 60
    await auth_api.ok("PATCH", f"/v1/users/{user['id']}", json={"disabled": True})
    disabled = await auth_api.ok(
        "POST", "/v1/internal/introspect", json={"entry": key_entry(key_hash(rotated["key"]))}
    )
    assert disabled["status"] == "disabled"
    unknown = await auth_api.ok("POST", "/v1/internal/introspect", json={"entry": "k:" + "0" * 64})
    assert unknown == {"status": "unknown"}


async def test_the_embedded_service_works_on_sqlite(tmp_path):
    settings = make_settings(tmp_path, auth_config("unused"))
    app = create_app(settings, process_metrics=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auth") as http,
    ):
        master = {"authorization": f"Bearer {MASTER_KEY}"}
        team = (await http.post("/v1/teams", json={"name": "t"}, headers=master)).json()
        assert (await http.post("/v1/teams", json={"name": "t"}, headers=master)).status_code == 409
        body = {"email": "a@b.test", "team_id": team["id"], "password": PASSWORD}
        user = (await http.post("/v1/users", json=body, headers=master)).json()
        login = await http.post("/v1/auth/login", json={"email": "A@B.test", "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        key = (await http.post("/v1/keys", json={}, headers={"authorization": f"Bearer {token}"})).json()
        assert key["user_id"] == user["id"]
        me = await http.get("/v1/auth/me", headers={"authorization": f"Bearer {key['key']}"})
        assert me.json()["key_id"] == key["id"]
    assert (tmp_path / "data" / "auth.db").exists()


async def test_signing_keys_retired_long_ago_are_dropped_at_the_next_rotation(auth_api: Api, pg):
    kid = f"old-{time.time_ns()}"
    await pg.execute(
        "INSERT INTO auth_signing_keys (kid, algorithm, public_jwk, private_pem, created_at, retired_at)"
        " VALUES ($1, 'EdDSA', '{}', 'x', now() - interval '40 days', now() - interval '8 days')",
        kid,
    )
    try:
        listed = {k["kid"]: k for k in (await auth_api.ok("GET", "/v1/signing-keys"))["data"]}
        assert listed[kid]["published"] is False
        await auth_api.ok("POST", "/v1/signing-keys/rotate")
        assert await pg.fetchval("SELECT count(*) FROM auth_signing_keys WHERE kid = $1", kid) == 0
    finally:
        await pg.execute("DELETE FROM auth_signing_keys WHERE kid = $1", kid)


async def test_a_users_keys_move_with_the_user(auth_api: Api):
    first, second = await auth_api.team(rpm=5), await auth_api.team(rpm=7)
    user = await auth_api.user("member", first["id"])
    created = await auth_api.key(user_id=user["id"])
    await auth_api.ok("PATCH", f"/v1/users/{user['id']}", json={"team_id": second["id"]})
    assert (await auth_api.ok("GET", f"/v1/keys/{created['id']}"))["team_id"] == second["id"]
    entry = key_entry(key_hash(created["key"]))
    record = await auth_api.ok("POST", "/v1/internal/introspect", json={"entry": entry})
    assert record["team_limits"]["rpm"] == 7
