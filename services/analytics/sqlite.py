"""The embedded store: the PostgreSQL layout in one SQLite file, without partitions.

Same tables, same roll-ups, same queries (`query.py` speaks both dialects). Retention
deletes rows here, which is fine at the size an embedded gateway reaches. The file
is touched only from a worker thread, one call at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from services.analytics.query import Dialect, Filters, Grouping, build, items
from services.analytics.rollup import LAYERS, VALUES, Record, layer_deltas
from services.analytics.store import (
    LEGACY_BATCH,
    MAX_DIMENSIONS_CACHED,
    RECORD_COLUMNS,
    CallerKey,
    CompletionQuery,
    ExpiredCallback,
    Horizons,
    RouteKey,
    StoredCompletion,
    caller_of,
    completion_page,
    completion_values,
    digest,
    legacy_after,
    legacy_event,
    legacy_progress,
    migrations,
    refused,
    route_of,
    stored_completion,
    to_record,
)
from services.kernel.config import RetentionConfig
from services.kernel.offload import in_thread
from services.kernel.usage import UsageEvent

T = TypeVar("T")
_DIALECT = Dialect("sqlite")
# Rows per INSERT: a batch goes in as a few statements of these sizes (largest first), so
# that only these few stay prepared in the statement cache, whatever the batch size.
_CHUNKS = (64, 16, 4, 1)


# No row binds None: the sqlite3 module binds it only after failing to adapt it (an
# exception raised and cleared per value), which costs more than the rest of the row. A
# stand-in that never equals a real value is bound instead, and made NULL again here:
# text ('') for a number, an integer (0) for text. Zero cached and reasoning counts are
# stored as NULL anyway (see `record_values`).
_NULL_IF = {
    "cached_tokens": "0",
    "reasoning_tokens": "0",
    "ttft_ms": "''",
    "cost": "''",
    "saved_cost": "''",
    "error_code": "0",
}


def _insert_records(rows: int, *, returning: bool) -> str:
    one = ", ".join(f"nullif(?, {_NULL_IF[c]})" if c in _NULL_IF else "?" for c in RECORD_COLUMNS)
    sql = (
        f"INSERT INTO usage_records ({', '.join(RECORD_COLUMNS)}) VALUES {', '.join([f'({one})'] * rows)}"
        " ON CONFLICT DO NOTHING"
    )
    # `+ 0`: SQLite 3.40 returns the bare column as a float, which rounds a 64-bit hash.
    return sql + " RETURNING created_at, event_hash + 0" if returning else sql


def _row(r: Record) -> tuple[Any, ...]:
    """A record as `_insert_records` binds it: the columns of `record_values`, stand-ins for None."""
    (created_at, event_hash, caller, route, status, flags, attempts, prompt, completion, cached, reasoning,
     latency, ttft, cost, saved_cost, error_code, request_id) = r  # fmt: skip
    return (
        created_at,
        event_hash,
        caller,
        route,
        prompt,
        completion,
        latency,
        status,
        flags,
        attempts,
        cached,
        reasoning,
        "" if ttft is None else ttft,
        "" if cost is None else cost,
        "" if saved_cost is None else saved_cost,
        0 if error_code is None else error_code,
        request_id,
    )


_INSERT_RECORDS = {rows: _insert_records(rows, returning=False) for rows in _CHUNKS}
_INSERT_RETURNING = {rows: _insert_records(rows, returning=True) for rows in _CHUNKS}


class _Redelivered(Exception):
    """Some rows of the batch are stored already: the batch is written again, learning which."""


def _upsert(table: str) -> str:
    columns = ["bucket", "caller", "route", "class", *VALUES]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        " ON CONFLICT (bucket, caller, route, class) DO UPDATE SET "
        + ", ".join(f"{v} = {v} + excluded.{v}" for v in VALUES)
    )


_UPSERTS = {layer: _upsert(f"usage_{layer}") for layer in LAYERS}


class SqliteUsageStore:
    """Embedded storage: one SQLite file, touched only from a worker thread."""

    def __init__(
        self, conn: sqlite3.Connection, retention: RetentionConfig, on_expired: ExpiredCallback | None = None
    ) -> None:
        self.conn = conn
        self.retention = retention
        self.on_expired = on_expired
        self.lock = asyncio.Lock()
        self._callers: dict[CallerKey, int] = {}
        self._routes: dict[RouteKey, int] = {}

    @classmethod
    async def open(
        cls, path: Path, retention: RetentionConfig | None = None, on_expired: ExpiredCallback | None = None
    ) -> SqliteUsageStore:
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

        return cls(await asyncio.to_thread(connect), retention or RetentionConfig(), on_expired)

    async def _run(self, fn: Callable[[], T]) -> T:
        async with self.lock:  # held until the statement is done, even if the caller is cancelled
            return await in_thread(fn)

    # -- insert -----------------------------------------------------------------------

    def _ids(self, callers: list[CallerKey], routes: list[RouteKey]) -> None:
        if len(self._callers) > MAX_DIMENSIONS_CACHED:
            self._callers.clear()
        if len(self._routes) > MAX_DIMENSIONS_CACHED:
            self._routes.clear()
        for key in sorted(set(callers) - self._callers.keys()):
            d = digest(*key)
            self.conn.execute(
                "INSERT INTO usage_callers (digest, key_id, team_id) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                (d, *key),
            )
            self._callers[key] = self.conn.execute(
                "SELECT id FROM usage_callers WHERE digest = ?", (d,)
            ).fetchone()[0]
        for route in sorted(set(routes) - self._routes.keys()):
            d = digest(*route)
            self.conn.execute(
                "INSERT INTO usage_routes (digest, endpoint, model, provider, upstream_model, deployment,"
                " route_reason, region) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                (d, *route),
            )
            self._routes[route] = self.conn.execute(
                "SELECT id FROM usage_routes WHERE digest = ?", (d,)
            ).fetchone()[0]

    def _write(self, events: Sequence[UsageEvent], horizons: Horizons, *, returning: bool) -> int:
        """One transaction: the events' rows, then the roll-ups of those that were new.

        A chunk's row count tells whether all of its rows were new, which they are unless
        the batch is a redelivery. Without `returning`, a chunk with fewer rows than it
        sent rolls everything back (`_Redelivered`); with it, each chunk reports its new
        rows (RETURNING, which costs about a tenth of the write)."""
        self.conn.execute("BEGIN")
        try:
            callers, routes = [caller_of(e) for e in events], [route_of(e) for e in events]
            self._ids(callers, routes)
            ids, route_ids = self._callers, self._routes
            records: dict[tuple[float, int], Record] = {}
            for e, caller, route in zip(events, callers, routes, strict=True):
                r = to_record(e, ids[caller], route_ids[route])
                records.setdefault((r.created_at, r.event_hash), r)
            keys = list(records)  # distinct: a chunk cannot hold a row twice
            rows = [_row(r) for r in records.values()]
            new: list[tuple[float, int]] = []
            start = 0
            for size in _CHUNKS:
                while len(rows) - start >= size:
                    params = [v for row in rows[start : start + size] for v in row]
                    if returning:
                        new += [(c, h) for c, h in self.conn.execute(_INSERT_RETURNING[size], params)]
                    elif self.conn.execute(_INSERT_RECORDS[size], params).rowcount == size:
                        new += keys[start : start + size]
                    else:
                        raise _Redelivered
                    start += size
            fresh = [records[key] for key in new]
            for layer, deltas in layer_deltas(fresh, horizons.floor).items():
                self.conn.executemany(_UPSERTS[layer], [(*k, *v) for k, v in sorted(deltas.items())])
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._callers.clear()  # ids of rolled-back rows must not be reused
            self._routes.clear()
            raise
        self.conn.execute("COMMIT")
        return len(fresh)

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        if not events:
            return 0
        horizons = Horizons.at(time.time(), self.retention)
        kept = horizons.keep(events, self.on_expired)
        if not kept:
            return 0

        def write() -> int:
            try:
                return self._write(kept, horizons, returning=False)
            except _Redelivered:
                return self._write(kept, horizons, returning=True)

        try:
            return await self._run(write)
        # A constraint or a value SQLite cannot hold; OperationalError (locked, disk
        # full, I/O) is the store being unavailable, retried later.
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            raise refused(exc) from exc

    # -- queries ----------------------------------------------------------------------

    async def usage(
        self, filters: Filters, grouping: Grouping, limit: int | None = None
    ) -> list[dict[str, Any]]:
        def query() -> list[sqlite3.Row]:
            callers = routes = None
            if filters.per_caller:
                callers = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT id FROM usage_callers WHERE (?1 IS NULL OR key_id = ?1)"
                        " AND (?2 IS NULL OR team_id = ?2)",
                        (filters.key_id, filters.team_id),
                    )
                ]
            if filters.model is not None or filters.provider is not None:
                routes = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT id FROM usage_routes WHERE (?1 IS NULL OR model = ?1)"
                        " AND (?2 IS NULL OR provider = ?2)",
                        (filters.model, filters.provider),
                    )
                ]
            if callers == [] or routes == []:
                return []
            sql, params = build(_DIALECT, filters, grouping, callers=callers, routes=routes, limit=limit)
            return self.conn.execute(sql, params).fetchall()

        return items(await self._run(query), grouping)

    async def events(
        self, request_id: str, limit: int, *, key_id: str | None = None, team_id: str | None = None
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT * FROM usage_events WHERE request_id = ? AND (? IS NULL OR key_id = ?)"
            " AND (? IS NULL OR team_id = ?) ORDER BY created_at LIMIT ?"
        )
        args = (request_id, key_id, key_id, team_id, team_id, limit)
        rows = await self._run(lambda: self.conn.execute(sql, args).fetchall())
        out = []
        for r in rows:
            row = dict(r)
            for flag in ("cached", "stream", "estimated"):
                row[flag] = bool(row[flag])
            out.append(row)
        return out

    async def maintain(self, now: float) -> dict[str, int]:
        horizons = Horizons.at(now, self.retention)

        def delete() -> dict[str, int]:
            out = {}
            for table, column, horizon in (
                ("usage_records", "created_at", horizons.events),
                ("stored_completions", "created_at", horizons.events),
                ("usage_minute", "bucket", horizons.minute),
                ("usage_hour", "bucket", horizons.hour),
            ):
                out[table] = self.conn.execute(f"DELETE FROM {table} WHERE {column} < ?", (horizon,)).rowcount
            return out

        return await self._run(delete)

    async def import_legacy(self, batch: int = LEGACY_BATCH) -> int:
        def read() -> list[sqlite3.Row]:
            state = self.conn.execute("SELECT after_time, after_id, done FROM usage_legacy_import").fetchone()
            after = legacy_after(state)
            if after is None:
                return []
            after_time, after_id = after
            return self.conn.execute(
                "SELECT * FROM usage_events_v1 WHERE ?1 IS NULL OR created_at > ?1"
                " OR (created_at = ?1 AND event_id > ?2) ORDER BY created_at, event_id LIMIT ?3",
                (after_time, after_id, batch),
            ).fetchall()

        rows = await self._run(read)
        if rows:
            await self.insert([legacy_event(r) for r in rows])
        after_time, after_id, done = legacy_progress(rows, batch)
        args = (after_time, after_id, int(done))
        await self._run(
            lambda: self.conn.execute(
                "INSERT INTO usage_legacy_import (id, after_time, after_id, done) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET after_time = coalesce(excluded.after_time, after_time),"
                " after_id = coalesce(excluded.after_id, after_id), done = excluded.done",
                args,
            )
        )
        return len(rows)

    # -- stored completions -----------------------------------------------------------

    async def put_completion(self, completion: StoredCompletion) -> bool:
        args = (completion.created_at, *completion_values(completion))
        sql = (
            "INSERT INTO stored_completions (created_at, id, key_id, team_id, model, metadata, request,"
            " response) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        )
        return bool(await self._run(lambda: self.conn.execute(sql, args).rowcount))

    @staticmethod
    def _completion(row: sqlite3.Row) -> StoredCompletion:
        return stored_completion(row, row["created_at"])

    async def get_completion(self, completion_id: str) -> StoredCompletion | None:
        params: list[Any] = []
        sql = _DIALECT.first("*", params, completion_id)
        row = await self._run(lambda: self.conn.execute(sql, params).fetchone())
        return None if row is None else self._completion(row)

    async def list_completions(self, query: CompletionQuery) -> tuple[list[StoredCompletion], bool]:
        sql, params = completion_page(_DIALECT, query)
        rows = await self._run(lambda: self.conn.execute(sql, params).fetchall())
        return [self._completion(r) for r in rows[: query.limit]], len(rows) > query.limit

    async def update_completion(self, completion_id: str, metadata: dict[str, str]) -> bool:
        sql = "UPDATE stored_completions SET metadata = ? WHERE id = ?"
        args = (orjson.dumps(metadata).decode(), completion_id)
        return bool(await self._run(lambda: self.conn.execute(sql, args).rowcount))

    async def delete_completion(self, completion_id: str) -> bool:
        sql = "DELETE FROM stored_completions WHERE id = ?"
        return bool(await self._run(lambda: self.conn.execute(sql, (completion_id,)).rowcount))

    async def check(self) -> str:
        try:
            await self._run(lambda: self.conn.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            return f"sqlite error: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self._run(self.conn.close)
