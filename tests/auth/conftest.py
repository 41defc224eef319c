"""Fixtures of the auth tests: the auth service on the real PostgreSQL and Redis (in
process, driven over httpx), and cleanup of every row and Redis entry a test made.

The auth tables live in a schema of this test run (`AUTH_DSN`), dropped at the end: the
migrations a branch adds never reach the shared database's public schema, where they
would be recorded as applied for every other checkout testing against it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.auth.app import create_app
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app
from tests.auth.serving import serve
from tests.conftest import (
    DATABASE_URL,
    MASTER_KEY,
    REDIS_URL,
    make_settings,
    purge_redis_prefix,
    run_sql,
    with_search_path,
)

# Cheap scrypt for tests (the production default costs ~0.8 s here per hash).
CONFIG = """
auth:
  redis_prefix: "{prefix}"
  login: {{scrypt_n: 16384, scrypt_p: 1, password_min_length: 12}}
models:
  - name: mock-small
    aliases: [small]
    deployments:
      - provider: mock
        model: mock-small
        price: {{input: 1.0, output: 2.0}}
  - name: mock-free
    deployments:
      - provider: mock
        model: mock-free
"""
PASSWORD = "correct horse battery staple"
# Chosen once per run: pytest imports this file as a conftest and the test modules import it
# again by name, and both must name the same schema.
AUTH_SCHEMA = os.environ.setdefault("GATEWAY_TEST_AUTH_SCHEMA", f"auth_test_{uuid.uuid4().hex[:12]}")
AUTH_DSN = with_search_path(DATABASE_URL, AUTH_SCHEMA)


@pytest.fixture(scope="session", autouse=True)
def auth_schema() -> Iterator[str]:
    """The schema of this run's auth tables (created here, migrated by the first service)."""
    try:
        asyncio.run(run_sql(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not answering at {DATABASE_URL} ({exc}); `make test` starts it")
    yield AUTH_DSN
    asyncio.run(run_sql(f"DROP SCHEMA IF EXISTS {AUTH_SCHEMA} CASCADE"))


@pytest.fixture
async def pg() -> AsyncIterator[asyncpg.Pool]:
    """A pool on this run's auth schema (shadows the shared one of tests/conftest.py)."""
    pool = await asyncpg.create_pool(AUTH_DSN, min_size=1, max_size=2)
    yield pool
    await pool.close()


def auth_config(prefix: str) -> str:
    return CONFIG.format(prefix=prefix)


@dataclasses.dataclass
class Made:
    """Ids of what a test created, for cleanup."""

    teams: set[str] = dataclasses.field(default_factory=set)
    users: set[str] = dataclasses.field(default_factory=set)
    keys: set[str] = dataclasses.field(default_factory=set)
    kids: set[str] = dataclasses.field(default_factory=set)

    def note(self, data: Any) -> None:
        if isinstance(data, dict):
            kind = {"team": self.teams, "user": self.users, "api_key": self.keys}.get(data.get("object", ""))
            if kind is not None and isinstance(data.get("id"), str):
                kind.add(data["id"])
            if isinstance(data.get("kid"), str):
                self.kids.add(data["kid"])


async def purge(made: Made, redis_prefix: str | None = None, dsn: str = AUTH_DSN) -> None:
    """Delete every row (audit entries too, through the retention switch) and Redis entry."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [*made.teams, *made.users, *made.keys]
        actors = [*made.keys, *(f"user:{u}" for u in made.users)]
        async with conn.transaction():
            await conn.execute("SET LOCAL auth.audit_purge = 'on'")
            await conn.execute(
                "DELETE FROM auth_audit WHERE target_id = ANY($1) OR actor = ANY($2) OR target_id = ANY($3)",
                ids,
                actors,
                list(made.kids),
            )
            await conn.execute("DELETE FROM auth_budgets WHERE owner_id = ANY($1)", ids)
            await conn.execute(
                "DELETE FROM auth_keys WHERE id = ANY($1) OR user_id = ANY($2) OR team_id = ANY($3)",
                list(made.keys),
                list(made.users),
                list(made.teams),
            )
            await conn.execute(
                "DELETE FROM auth_users WHERE id = ANY($1) OR team_id = ANY($2)",
                list(made.users),
                list(made.teams),
            )
            await conn.execute("DELETE FROM auth_teams WHERE id = ANY($1)", list(made.teams))
            await conn.execute("DELETE FROM auth_signing_keys WHERE kid = ANY($1)", list(made.kids))
    finally:
        await conn.close()
    if redis_prefix:
        await purge_redis_prefix(redis_prefix)


class Api:
    """An httpx client on the auth service that notes what it creates."""

    def __init__(self, http: httpx.AsyncClient, made: Made) -> None:
        self.http = http
        self.made = made

    async def call(
        self, method: str, path: str, token: str | None = MASTER_KEY, json: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = await self.http.request(method, path, json=json, headers=headers, **kw)
        if response.headers.get("content-type", "").startswith("application/json"):
            self.made.note(response.json())
        return response

    async def ok(self, method: str, path: str, token: str | None = MASTER_KEY, json: Any = None) -> Any:
        response = await self.call(method, path, token, json)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def team(self, **fields: Any) -> dict[str, Any]:
        return await self.ok("POST", "/v1/teams", json={"name": unique_name("team"), **fields})

    async def user(self, role: str = "member", team_id: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"email": f"{unique_name('u')}@example.test", "role": role, "team_id": team_id, **fields}
        return await self.ok("POST", "/v1/users", json=body)

    async def login(self, email: str, password: str = PASSWORD) -> str:
        data = await self.ok(
            "POST", "/v1/auth/login", token=None, json={"email": email, "password": password}
        )
        return str(data["access_token"])

    async def key(self, token: str = MASTER_KEY, **fields: Any) -> dict[str, Any]:
        return await self.ok("POST", "/v1/keys", token=token, json=fields)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def made(tmp_path) -> AsyncIterator[Made]:
    record = Made()
    yield record
    await purge(record)


@pytest.fixture
def redis_prefix() -> str:
    return f"test:auth:{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path, made: Made, redis_prefix: str, extra_config: str = ""
) -> AsyncIterator[Api]:
    """The auth service on PostgreSQL and Redis, in process; `extra_config` is appended
    to its gateway.yaml. Its Redis keys are deleted afterwards."""
    settings = make_settings(
        tmp_path, auth_config(redis_prefix) + extra_config, database_url=AUTH_DSN, redis_url=REDIS_URL
    )
    app = create_app(settings, process_metrics=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auth") as http,
    ):
        yield Api(http, made)
    await purge(Made(), redis_prefix)


@pytest.fixture
async def auth_api(tmp_path: Path, made: Made, redis_prefix: str) -> AsyncIterator[Api]:
    """The auth service on PostgreSQL and Redis, in process."""
    async with running_api(tmp_path, made, redis_prefix) as api:
        yield api


@dataclasses.dataclass
class Stack:
    """An auth service and a router, each over real HTTP, sharing PostgreSQL and Redis."""

    auth_url: str
    router_url: str
    api: Api
    auth_app: Any
    router_app: Any
    settings: Any


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path, made: Made, redis_prefix: str, extra_config: str = "", **changes: Any
) -> AsyncIterator[Stack]:
    text = auth_config(redis_prefix) + extra_config
    settings = make_settings(tmp_path, text, database_url=AUTH_DSN, redis_url=REDIS_URL, **changes)
    auth = create_app(settings, process_metrics=False)
    async with serve(auth) as auth_url:
        router_settings = settings.replace(auth_url=auth_url)
        router = router_app.create_app(router_settings, stream=MemoryUsageStream())
        async with (
            serve(router) as router_url,
            httpx.AsyncClient(base_url=auth_url, timeout=10) as http,
        ):
            yield Stack(auth_url, router_url, Api(http, made), auth, router, settings)
    await purge(Made(), redis_prefix)


@pytest.fixture
async def stack(tmp_path: Path, made: Made, redis_prefix: str) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, made, redis_prefix) as running:
        yield running
