"""Where usage events end up: PostgreSQL (asyncpg) or, embedded, a SQLite file.

Inserts are idempotent on `event_id`, so a batch replayed after a crash between
commit and acknowledgement adds nothing. Schema comes from versioned SQL files.

An insert fails in one of two ways, and the consumer treats them differently: the
store refused the data (`RefusedEvents`: a value out of range, a constraint), which
no retry of the same batch can fix, or anything else (the store is down, out of
disk, being migrated), which a retry later will.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson

from services.kernel.usage import UsageEvent

MIGRATIONS = Path(__file__).parent / "migrations"

COLUMNS = (
    "event_id",
    "request_id",
    "key_id",
    "team_id",
    "endpoint",
    "model",
    "provider",
    "upstream_model",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "latency_ms",
    "ttft_ms",
    "status",
    "error_code",
    "cached",
    "stream",
    "created_at",
)


class RefusedEvents(Exception):
    """The store refused the data itself, not the connection: retrying the same batch
    cannot succeed; the consumer splits it to find the events at fault."""


def _refused(exc: BaseException) -> RefusedEvents:
    return RefusedEvents(f"{type(exc).__name__}: {exc}"[:1000])


def migrations(dialect: str) -> list[tuple[int, str]]:
    out = []
    for path in sorted((MIGRATIONS / dialect).glob("*.sql")):
        out.append((int(path.name.split("_", 1)[0]), path.read_text()))
    return out


class UsageStore(Protocol):
    async def insert(self, events: Sequence[UsageEvent]) -> int: ...
    async def summary(self, since: float | None, key_id: str | None) -> list[dict[str, Any]]: ...
    async def events(self, request_id: str, limit: int) -> list[dict[str, Any]]: ...
    async def check(self) -> str: ...
    async def close(self) -> None: ...


_PG_INSERT = """
INSERT INTO usage_events ({cols})
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::int[], $10::int[], $11::bool[], $12::float8[], $13::float8[], $14::smallint[], $15::text[],
    $16::bool[], $17::bool[], $18::timestamptz[]
)
ON CONFLICT (event_id) DO NOTHING
""".format(cols=", ".join(COLUMNS))

_SUMMARY = """
SELECT model, provider, count(*) AS requests,
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors,
       avg(latency_ms) AS avg_latency_ms
FROM usage_events WHERE {where}
GROUP BY model, provider ORDER BY requests DESC
"""


class PostgresUsageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresUsageStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        store = cls(pool)
        await store.migrate()
        return store

    async def migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # One replica migrates at a time; the others wait, then find nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock(8084001)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(service TEXT, version INTEGER, applied_at TIMESTAMPTZ DEFAULT now(),"
                " PRIMARY KEY (service, version))"
            )
            done = {
                r["version"]
                for r in await conn.fetch("SELECT version FROM schema_migrations WHERE service = 'analytics'")
            }
            for version, sql in migrations("postgres"):
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (service, version) VALUES ('analytics', $1)",
                        version,
                    )

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        if not events:
            return 0
        columns: list[list[Any]] = [[] for _ in COLUMNS]
        try:
            for event in events:
                for i, name in enumerate(COLUMNS):
                    value: Any = event[name]  # type: ignore[literal-required]
                    if name == "created_at":
                        value = datetime.fromtimestamp(value, UTC)
                    columns[i].append(value)
        except (ValueError, OverflowError, OSError) as exc:  # a time Python cannot represent
            raise _refused(exc) from exc
        try:
            status = await self.pool.execute(_PG_INSERT, *columns)
        # Class 22 (data exception: out of range, bad encoding) and class 23 (integrity
        # constraint). Every other error, a lost connection or a full disk on the server
        # among them, means "try again later".
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise _refused(exc) from exc
        return int(status.rsplit(" ", 1)[1])

    async def summary(self, since: float | None, key_id: str | None) -> list[dict[str, Any]]:
        where: list[str] = ["true"]
        args: list[object] = []
        if since is not None:
            args.append(datetime.fromtimestamp(since, UTC))
            where.append(f"created_at >= ${len(args)}")
        if key_id is not None:
            args.append(key_id)
            where.append(f"key_id = ${len(args)}")
        rows = await self.pool.fetch(_SUMMARY.format(where=" AND ".join(where)), *args)
        return [dict(r) for r in rows]

    async def events(self, request_id: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {', '.join(COLUMNS)} FROM usage_events WHERE request_id = $1"
            " ORDER BY created_at LIMIT $2",
            request_id,
            limit,
        )
        out = []
        for r in rows:
            row = dict(r)
            row["created_at"] = row["created_at"].timestamp()
            out.append(row)
        return out

    async def check(self) -> str:
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return f"postgres unreachable: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self.pool.close()


# ON CONFLICT on the key only: OR IGNORE would also skip rows that break any other
# constraint, silently. ("WHERE true" lets SQLite parse the upsert after a SELECT.)
_SQLITE_INSERT = (
    f"INSERT INTO usage_events ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$.{c}')" for c in COLUMNS)  # true/false → 1/0
    + " FROM json_each(?) WHERE true ON CONFLICT (event_id) DO NOTHING"
)


class SqliteUsageStore:
    """Embedded storage: one SQLite file, touched only from a worker thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteUsageStore:
        path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations("sqlite"):
                if version not in done:
                    conn.executescript(
                        f"BEGIN; {sql}; INSERT INTO schema_migrations VALUES ({version:d}); COMMIT;"
                    )
            conn.row_factory = sqlite3.Row
            return conn

        return cls(await asyncio.to_thread(connect))

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self.lock:
            return await asyncio.to_thread(fn, *args)

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        if not events:
            return 0
        # One JSON parameter, unpacked by SQLite's json_each: the per-row work runs in C
        # with the GIL released, so the embedded gateway's event loop is not held up
        # (executemany converted every row in Python, a visible share of the p99).
        batch = orjson.dumps(events)

        def write() -> int:
            before = self.conn.total_changes
            self.conn.execute("BEGIN")
            try:
                self.conn.execute(_SQLITE_INSERT, (batch,))
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return self.conn.total_changes - before

        try:
            return int(await self._run(write))
        # A constraint or a value SQLite cannot hold; OperationalError (locked, disk
        # full, I/O) is the store being unavailable, retried later.
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            raise _refused(exc) from exc

    async def summary(self, since: float | None, key_id: str | None) -> list[dict[str, Any]]:
        where: list[str] = ["1"]
        args: list[object] = []
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        sql = _SUMMARY.format(where=" AND ".join(where))
        rows = await self._run(lambda: self.conn.execute(sql, args).fetchall())
        return [dict(r) for r in rows]

    async def events(self, request_id: str, limit: int) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM usage_events WHERE request_id = ? ORDER BY created_at LIMIT ?"
        )
        rows = await self._run(lambda: self.conn.execute(sql, (request_id, limit)).fetchall())
        out = []
        for r in rows:
            row = dict(r)
            for flag in ("cached", "stream", "estimated"):
                row[flag] = bool(row[flag])
            out.append(row)
        return out

    async def check(self) -> str:
        try:
            await self._run(lambda: self.conn.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            return f"sqlite error: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self._run(self.conn.close)
