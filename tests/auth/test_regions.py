"""Data residency in the auth service: the `regions` of keys and teams, stored through a
versioned migration (PostgreSQL and SQLite), validated against the configured regions,
audited, and composed into the record the routers cache (key ∩ team)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.auth import store
from services.auth.client import key_entry, key_hash, principal_of, user_entry
from services.auth.database import PostgresDatabase, SqliteDatabase, migrations
from services.kernel.migrations import migrate_postgres
from tests.auth.conftest import PASSWORD, Api, Made, running_api
from tests.conftest import DATABASE_URL, unique, with_search_path

EU, US, AP = "eu-west", "us-east", "ap-south"
REGIONS = f"region:\n  names: [{EU}, {US}, {AP}]\n"


@pytest.fixture
async def api(tmp_path: Path, made: Made, redis_prefix: str) -> AsyncIterator[Api]:
    """The auth service on PostgreSQL and Redis, with `region.names` configured."""
    async with running_api(tmp_path, made, redis_prefix, REGIONS) as api:
        yield api


async def record(api: Api, entry: str) -> dict[str, Any]:
    return dict(await api.ok("POST", "/v1/internal/introspect", json={"entry": entry}))


async def test_regions_are_stored_sorted_shown_and_cleared(api: Api):
    team = await api.team(regions=[US, EU, US])
    assert team["regions"] == [EU, US]
    key = await api.key(team_id=team["id"], regions=[EU])
    assert key["regions"] == [EU]
    assert (await api.ok("GET", f"/v1/keys/{key['id']}"))["regions"] == [EU]
    listed = await api.ok("GET", f"/v1/keys?team_id={team['id']}")
    assert [k["regions"] for k in listed["data"]] == [[EU]]
    assert (await api.ok("GET", f"/v1/teams/{team['id']}"))["regions"] == [EU, US]
    # Absent: left alone; null: unrestricted again.
    renamed = await api.ok("PATCH", f"/v1/keys/{key['id']}", json={"name": "n"})
    assert renamed["regions"] == [EU]
    cleared = await api.ok("PATCH", f"/v1/keys/{key['id']}", json={"regions": None})
    assert cleared["regions"] is None
    widened = await api.ok("PATCH", f"/v1/teams/{team['id']}", json={"regions": [AP]})
    assert widened["regions"] == [AP]
    assert (await api.ok("PATCH", f"/v1/teams/{team['id']}", json={"regions": None}))["regions"] is None
    unrestricted = await api.key()
    assert unrestricted["regions"] is None


async def test_changes_of_regions_are_audited_before_and_after(api: Api):
    team = await api.team()
    await api.ok("PATCH", f"/v1/teams/{team['id']}", json={"regions": [EU]})
    key = await api.key(team_id=team["id"], regions=[EU, US])
    await api.ok("PATCH", f"/v1/keys/{key['id']}", json={"regions": [US]})
    team_log = (await api.ok("GET", f"/v1/audit?target_id={team['id']}&action=team.update"))["data"]
    assert (team_log[0]["before"]["regions"], team_log[0]["after"]["regions"]) == (None, [EU])
    key_log = (await api.ok("GET", f"/v1/audit?target_id={key['id']}"))["data"]
    assert [e["action"] for e in key_log] == ["key.update", "key.create"]
    assert key_log[1]["after"]["regions"] == [EU, US]
    assert (key_log[0]["before"]["regions"], key_log[0]["after"]["regions"]) == ([EU, US], [US])


@pytest.mark.parametrize(
    ("key_regions", "team_regions", "effective"),
    [
        (None, None, None),
        ([EU, US], None, [EU, US]),
        (None, [US], [US]),
        ([EU, US], [US, AP], [US]),
        ([EU], [US], []),  # nothing in common: the router serves it nowhere
    ],
)
async def test_the_record_narrows_the_keys_regions_by_its_teams(
    api: Api, key_regions, team_regions, effective
):
    team = await api.team(**({"regions": team_regions} if team_regions else {}))
    user = await api.user("member", team["id"], password=PASSWORD)
    key = await api.key(user_id=user["id"], **({"regions": key_regions} if key_regions else {}))
    cached = await record(api, key_entry(key_hash(key["key"])))
    assert cached["regions"] == effective
    principal = principal_of(cached)
    assert principal.regions == (None if effective is None else frozenset(effective))
    me = await api.ok("GET", "/v1/auth/me", token=key["key"])
    assert me["regions"] == effective
    # An access token carries its user's team restriction.
    team_effective = None if team_regions is None else sorted(team_regions)
    assert (await record(api, user_entry(user["id"])))["regions"] == team_effective
    token = await api.login(user["email"])
    assert (await api.ok("GET", "/v1/auth/me", token=token))["regions"] == team_effective


async def test_a_team_change_reaches_the_shared_cache_of_its_keys_and_users(api: Api, redis, redis_prefix):
    team = await api.team()
    user = await api.user("member", team["id"])
    key = await api.key(user_id=user["id"], regions=[EU, US])
    entry = key_entry(key_hash(key["key"]))
    await record(api, entry)  # as a router's first lookup: the record lands in Redis
    assert b'"regions":["eu-west","us-east"]' in await redis.get(f"{redis_prefix}:{entry}")
    await api.ok("PATCH", f"/v1/teams/{team['id']}", json={"regions": [US]})
    assert b'"regions":["us-east"]' in await redis.get(f"{redis_prefix}:{entry}")
    assert b'"regions":["us-east"]' in await redis.get(f"{redis_prefix}:{user_entry(user['id'])}")
    await api.ok("PATCH", f"/v1/keys/{key['id']}", json={"regions": [EU]})
    assert b'"regions":[]' in await redis.get(f"{redis_prefix}:{entry}")


@pytest.mark.parametrize(
    ("method", "path", "body", "param", "code"),
    [
        ("POST", "/v1/teams", {"name": "x", "regions": ["mars-1"]}, "regions[0]", "unknown_region"),
        ("POST", "/v1/keys", {"regions": [EU, "eu-wset"]}, "regions[1]", "unknown_region"),
        ("POST", "/v1/keys", {"regions": ["EU_West"]}, "regions.0", "invalid_request"),
        ("POST", "/v1/keys", {"regions": [""]}, "regions.0", "invalid_request"),
        ("POST", "/v1/keys", {"regions": ["x" * 64]}, "regions.0", "invalid_request"),
        ("POST", "/v1/keys", {"regions": []}, "regions", "invalid_request"),
        ("POST", "/v1/keys", {"regions": [EU] * 65}, "regions", "invalid_request"),
        ("POST", "/v1/keys", {"regions": EU}, "regions", "invalid_request"),
        ("POST", "/v1/keys", {"regions": [7]}, "regions.0", "invalid_request"),
        ("PATCH", "/v1/keys/{key}", {"regions": ["mars-1"]}, "regions[0]", "unknown_region"),
        ("PATCH", "/v1/teams/{team}", {"regions": ["mars-1"]}, "regions[0]", "unknown_region"),
        ("PATCH", "/v1/teams/{team}", {"regions": []}, "regions", "invalid_request"),
    ],
)
async def test_bad_regions_get_a_400_naming_the_field(api: Api, method, path, body, param, code):
    team = await api.team()
    key = await api.key()
    response = await api.call(method, path.format(key=key["id"], team=team["id"]), json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    if code == "unknown_region":
        assert f"region.names: {EU}, {US}, {AP}" in error["message"]
    # Nothing was changed.
    assert (await api.ok("GET", f"/v1/keys/{key['id']}"))["regions"] is None
    assert (await api.ok("GET", f"/v1/teams/{team['id']}"))["regions"] is None


async def test_a_member_may_not_set_the_regions_of_their_own_key(api: Api):
    team = await api.team()
    user = await api.user("member", team["id"], password=PASSWORD)
    token = await api.login(user["email"])
    refused = await api.call("POST", "/v1/keys", token=token, json={"regions": [EU]})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_role"
    own = await api.key(token=token)
    changed = await api.call("PATCH", f"/v1/keys/{own['id']}", token=token, json={"regions": [EU]})
    assert changed.status_code == 403
    # A team admin may, within the team.
    boss = await api.user("team_admin", team["id"], password=PASSWORD)
    boss_token = await api.login(boss["email"])
    set_by_boss = await api.ok("PATCH", f"/v1/keys/{own['id']}", token=boss_token, json={"regions": [EU]})
    assert set_by_boss["regions"] == [EU]


async def test_without_configured_region_names_any_well_formed_name_is_accepted(auth_api: Api):
    key = await auth_api.key(regions=["somewhere-1"])
    assert key["regions"] == ["somewhere-1"]


async def test_sqlite_keeps_regions_and_narrows_them_the_same_way(tmp_path):
    db = await SqliteDatabase.open(tmp_path / "auth.db")
    try:
        versions = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in migrations("sqlite")]
        team = await store.create_team(db, {"name": "t", "regions": [EU, US]})
        key = await store.create_key(
            db,
            {"team_id": team["id"], "regions": [US, AP]},
            digest="d" * 64,
            prefix="sk-gw-x",
            created_by="m",
        )
        assert (team["regions"], key["regions"]) == ([EU, US], [US, AP])
        assert (await store.key_record(db, "d" * 64))["regions"] == [US]
        await store.update_team(db, team["id"], {"regions": None})
        assert (await store.key_record(db, "d" * 64))["regions"] == [US, AP]
    finally:
        await db.close()


async def test_an_existing_sqlite_database_gets_the_column_on_upgrade(tmp_path):
    path = tmp_path / "auth.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (service TEXT, version INTEGER, applied_at REAL,"
        " PRIMARY KEY (service, version))"
    )
    conn.executescript(migrations("sqlite")[0][1])
    conn.execute("INSERT INTO schema_migrations VALUES ('auth', 1, 0)")
    conn.execute(
        "INSERT INTO auth_keys (id, hash, prefix, created_by, created_at, updated_at)"
        " VALUES ('key_old', 'h', 'sk-gw-', 'master', 0, 0)"
    )
    conn.commit()
    conn.close()
    db = await SqliteDatabase.open(path)
    try:
        assert (await store.get_key(db, "key_old") or {})["regions"] is None
        assert (await store.key_record(db, "h"))["regions"] is None
    finally:
        await db.close()


async def test_an_existing_postgres_database_gets_the_column_on_upgrade(pg):
    schema = unique("auth_upgrade").replace("-", "_")
    await pg.execute(f"CREATE SCHEMA {schema}")
    dsn = with_search_path(DATABASE_URL, schema)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await migrate_postgres(conn, "auth", migrations("postgres")[:1]) == [1]
            await conn.execute(
                "INSERT INTO auth_keys (id, hash, prefix, created_by, created_at, updated_at)"
                " VALUES ('key_old', 'h', 'sk-gw-', 'master', now(), now())"
            )
        finally:
            await conn.close()
        db = await PostgresDatabase.open(dsn)  # applies what is missing: 0002 onwards
        try:
            applied = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in applied] == [v for v, _ in migrations("postgres")]
            assert (await store.get_key(db, "key_old") or {})["regions"] is None
            assert (await store.key_record(db, "h"))["regions"] is None
        finally:
            await db.close()
    finally:
        await pg.execute(f"DROP SCHEMA {schema} CASCADE")
