"""Shared fixtures: the real Redis and PostgreSQL this machine runs, and settings."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.kernel.config import build_catalog, load_config
from services.kernel.settings import Settings

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
DATABASE_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
MASTER_KEY = "sk-test-master-key"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key under `prefix:`, as a test leaves them."""
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


async def purge_redis_prefix(prefix: str) -> None:
    """`delete_prefix` with a client of its own (for clean-ups outside the `redis` fixture)."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await delete_prefix(client, prefix)
    finally:
        await client.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        pytest.fail(f"Redis is not answering at {REDIS_URL} ({exc}); `make test` starts it when installed")
    yield client
    await client.aclose()


@pytest.fixture
async def pg() -> AsyncIterator[asyncpg.Pool]:
    try:
        pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=2)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not answering at {DATABASE_URL} ({exc}); `make test` starts it")
    yield pool
    await pool.close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MOCK_ONLY = """
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
"""


def make_settings(tmp_path: Path, config_text: str = MOCK_ONLY, **changes: object) -> Settings:
    config = load_config(write_config(tmp_path / "gateway.yaml", config_text))
    settings = Settings(
        config=config,
        catalog=build_catalog(config, {}),
        master_key=MASTER_KEY,
        data_dir=tmp_path / "data",
    )
    return settings.replace(**changes) if changes else settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_search_path(dsn: str, schema: str) -> str:
    """The DSN with its own search_path (asyncpg passes unknown parameters as server settings)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


async def run_sql(statement: str) -> None:
    """One statement on the test database, on a connection of its own (schema set-up and
    clean-up outside any pool)."""
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema(pg) -> AsyncIterator[str]:
    """A DSN whose tables live in a schema of their own, dropped afterwards: the
    analytics tables are created there, never in the shared database's public schema."""
    schema = unique("analytics_test").replace("-", "_")
    await pg.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(DATABASE_URL, schema)
    finally:
        await pg.execute(f"DROP SCHEMA {schema} CASCADE")
