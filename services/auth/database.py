"""The auth service's storage connection: PostgreSQL (asyncpg) or, embedded, SQLite.

The queries in `store.py` are written once, in PostgreSQL's dialect with `$1`
placeholders; the SQLite side rewrites the placeholders to SQLite's numbered `?1`.
Both sides speak the same Python values: times are unix seconds (floats; asyncpg
gets a `timestamptz` codec for that), JSON columns are JSON text, booleans are
booleans. Migrations are versioned SQL files under `migrations/<dialect>/`,
recorded as service 'auth' in `schema_migrations (service, version)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg

from services.kernel.migrations import migrate_postgres, read_migrations
from services.kernel.offload import in_thread

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE = "auth"
_PG_EPOCH = 946_684_800  # 2000-01-01 in unix seconds: PostgreSQL's timestamp origin

Row = dict[str, Any]
T = TypeVar("T")


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) of every migration file of `dialect`, in order."""
    return read_migrations(MIGRATIONS, dialect)


class Connection(Protocol):
    """What the store runs queries on: a connection, inside a transaction or not."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...


class Database(Connection, Protocol):
    dialect: str

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...
    async def check(self) -> str: ...
    async def close(self) -> None: ...


def _encode_ts(value: float) -> tuple[int]:
    return (round((value - _PG_EPOCH) * 1_000_000),)


def _decode_ts(value: tuple[int]) -> float:
    return value[0] / 1_000_000 + _PG_EPOCH


async def _init_pg(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_ts, decoder=_decode_ts, format="tuple"
    )


def _changed(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _PgConn:
    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self.conn.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def execute(self, sql: str, *args: Any) -> int:
        return _changed(await self.conn.execute(sql, *args))


class PostgresDatabase(_PgConn):
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 8) -> PostgresDatabase:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=_init_pg)
        db = cls(pool)
        try:
            await db.migrate()
        except BaseException:
            await pool.close()
            raise
        return db

    async def migrate(self) -> None:
        async with self.pool.acquire() as conn:
            await migrate_postgres(conn, SERVICE, migrations("postgres"))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield _PgConn(conn)

    async def check(self) -> str:
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return f"postgres unreachable: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self.pool.close()


_PLACEHOLDER = re.compile(r"\$(\d+)")


def _sqlite_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql).replace("::jsonb", "").replace("::text", "")


def _sqlite_args(args: Sequence[Any]) -> list[Any]:
    return [int(a) if isinstance(a, bool) else a for a in args]


class _SqliteConn:
    """Runs statements on the one SQLite connection from a worker thread."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        query, params = _sqlite_sql(sql), _sqlite_args(args)
        rows = await in_thread(lambda: self.db.conn.execute(query, params).fetchall())
        return [dict(r) for r in rows]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        query, params = _sqlite_sql(sql), _sqlite_args(args)
        return await in_thread(lambda: self.db.conn.execute(query, params).rowcount)


class SqliteDatabase(_SqliteConn):
    """Embedded storage: one file, one connection; a lock serialises statements and
    transactions (the admin API's write rate is low)."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(self)
        self.conn = conn
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(service TEXT, version INTEGER, applied_at REAL, PRIMARY KEY (service, version))"
            )
            done = {
                r[0]
                for r in conn.execute("SELECT version FROM schema_migrations WHERE service = ?", (SERVICE,))
            }
            for version, sql in migrations("sqlite"):
                if version not in done:
                    conn.executescript(
                        f"BEGIN; {sql}; INSERT INTO schema_migrations (service, version, applied_at)"
                        f" VALUES ('{SERVICE}', {version:d}, {time.time()!r}); COMMIT;"
                    )
            conn.row_factory = sqlite3.Row
            return conn

        return cls(await asyncio.to_thread(connect))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.lock:
            return await super().fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self.lock:
            return await super().execute(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.lock:
            await in_thread(lambda: self.conn.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteConn(self)
            except BaseException:
                await in_thread(lambda: self.conn.execute("ROLLBACK"))
                raise
            await in_thread(lambda: self.conn.execute("COMMIT"))

    async def check(self) -> str:
        try:
            await self.fetch("SELECT 1 AS one")
        except sqlite3.Error as exc:
            return f"sqlite error: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        async with self.lock:
            await in_thread(self.conn.close)


async def open_database(database_url: str | None, data_dir: Path) -> Database:
    """PostgreSQL when a URL is configured, else the embedded SQLite file."""
    if database_url:
        return await PostgresDatabase.open(database_url)
    return await SqliteDatabase.open(data_dir / "auth.db")
