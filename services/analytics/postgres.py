"""The PostgreSQL store (asyncpg): compact rows, monthly partitions, roll-ups on insert.

One insert is: resolve the batch's callers and routes to ids (cached), make sure
the partitions it needs exist, then, in one transaction, insert the rows (duplicates
skipped, the new ones returned) and add exactly the new ones to the minute, hour
and day roll-ups. Roll-up rows are upserted in key order so that two consumers
adding to the same rows cannot deadlock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.analytics import partitions
from services.analytics import postgres_completions as completions_sql
from services.analytics.query import Dialect, Filters, Grouping, build, items
from services.analytics.rollup import LAYERS, VALUES, Record, RollupKey, layer_deltas
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
    StoreUnavailable,
    caller_of,
    digest,
    legacy_after,
    legacy_event,
    legacy_progress,
    migrations,
    month_start,
    record_values,
    refused,
    route_of,
    to_record,
)
from services.kernel.config import RetentionConfig
from services.kernel.migrations import migrate_postgres
from services.kernel.usage import UsageEvent

# The rows travel as one JSON parameter, as the roll-ups' do: asyncpg encoding seventeen
# arrays element by element (an abstract-class check on each) cost more than the rest of
# the insert's Python (measured with bench/analytics_consumer.py).
_INSERT_RECORDS = (
    f"INSERT INTO usage_records ({', '.join(RECORD_COLUMNS)}) SELECT {', '.join(RECORD_COLUMNS)}"
    " FROM json_populate_recordset(NULL::usage_records, $1::json)"
    " ON CONFLICT DO NOTHING RETURNING created_at, event_hash"
)


_ROLLUP_COLUMNS = ("bucket", "caller", "route", "class", *VALUES)


def _upsert(table: str, param: int) -> str:
    # The deltas travel as one JSON parameter: asyncpg encoding some sixty arrays element
    # by element was most of an insert's time (measured); PostgreSQL unpacks JSON in C.
    # In key order, so two consumers adding to the same rows lock them in the same order.
    columns = ", ".join(_ROLLUP_COLUMNS)
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns}"
        f" FROM json_populate_recordset(NULL::{table}, ${param}::json) ORDER BY bucket, caller, route, class"
        " ON CONFLICT (bucket, caller, route, class) DO UPDATE SET "
        + ", ".join(f"{v} = {table}.{v} + excluded.{v}" for v in VALUES)
    )


# The three layers in one statement (one round trip), each layer's deltas a parameter
# (an empty list when none). Every consumer runs this same statement, so the tables are
# always locked in the same order too.
_LAYER_NAMES = tuple(LAYERS)
_UPSERT_LAYERS = (
    "WITH "
    + ", ".join(
        f"{layer} AS ({_upsert(f'usage_{layer}', i)})" for i, layer in enumerate(_LAYER_NAMES[:-1], 1)
    )
    + f" {_upsert(f'usage_{_LAYER_NAMES[-1]}', len(_LAYER_NAMES))}"
)
_DIALECT = Dialect("postgres")


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _rollup_json(rows: dict[RollupKey, list[float]]) -> str:
    """A layer's deltas as the JSON its upsert reads, in key order."""
    return orjson.dumps(
        [
            dict(zip(_ROLLUP_COLUMNS, (_time(k[0]), k[1], k[2], k[3], *rows[k]), strict=True))
            for k in sorted(rows)
        ]
    ).decode()


async def _keep_session(conn: asyncpg.Connection) -> None:
    return None


class PostgresUsageStore:
    def __init__(
        self, pool: asyncpg.Pool, retention: RetentionConfig, on_expired: ExpiredCallback | None = None
    ) -> None:
        self.pool = pool
        self.retention = retention
        self.on_expired = on_expired
        self._callers: dict[CallerKey, int] = {}
        self._routes: dict[RouteKey, int] = {}
        self._partitions: set[tuple[str, int]] = set()

    @classmethod
    async def open(
        cls, dsn: str, retention: RetentionConfig | None = None, on_expired: ExpiredCallback | None = None
    ) -> PostgresUsageStore:
        # No JIT: the roll-up queries are short, and compiling their many aggregates took
        # longer (tens of ms) than running them (measured in bench/analytics_store.py).
        # No reset query when a connection goes back to the pool (a round trip per insert):
        # the store sets no session state, takes only transaction-scoped advisory locks,
        # opens no cursors and listens to nothing. An open transaction is still rolled back.
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=4, server_settings={"jit": "off"}, reset=_keep_session
        )
        store = cls(pool, retention or RetentionConfig(), on_expired)
        await store.migrate()
        return store

    async def migrate(self) -> None:
        async with self.pool.acquire() as conn:
            await migrate_postgres(conn, "analytics", migrations("postgres"))

    # -- dimensions -------------------------------------------------------------------

    async def _ids(self, conn: asyncpg.Connection, events: Sequence[UsageEvent]) -> None:
        """Put the ids of the batch's callers and routes in the caches."""
        if len(self._callers) > MAX_DIMENSIONS_CACHED:
            self._callers.clear()
        if len(self._routes) > MAX_DIMENSIONS_CACHED:
            self._routes.clear()
        callers = {caller_of(e) for e in events} - self._callers.keys()
        routes = {route_of(e) for e in events} - self._routes.keys()
        if callers:
            keys = sorted(callers)
            digests = [digest(*k) for k in keys]
            await conn.execute(
                "INSERT INTO usage_callers (digest, key_id, team_id)"
                " SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[]) ORDER BY 1"
                " ON CONFLICT (digest) DO NOTHING",
                digests,
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            rows = await conn.fetch("SELECT id, digest FROM usage_callers WHERE digest = ANY($1)", digests)
            by_digest = {bytes(r["digest"]): r["id"] for r in rows}
            self._callers.update({k: by_digest[d] for k, d in zip(keys, digests, strict=True)})
        if routes:
            keys_r = sorted(routes)
            digests = [digest(*k) for k in keys_r]
            columns = list(zip(*keys_r, strict=True))
            await conn.execute(
                "INSERT INTO usage_routes (digest, endpoint, model, provider, upstream_model, deployment,"
                " route_reason, region) SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[],"
                " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) ORDER BY 1"
                " ON CONFLICT (digest) DO NOTHING",
                digests,
                *[list(c) for c in columns],
            )
            rows = await conn.fetch("SELECT id, digest FROM usage_routes WHERE digest = ANY($1)", digests)
            by_digest = {bytes(r["digest"]): r["id"] for r in rows}
            self._routes.update({k: by_digest[d] for k, d in zip(keys_r, digests, strict=True)})

    async def _ensure(self, conn: asyncpg.Connection, needed: set[tuple[str, int]]) -> None:
        missing = needed - self._partitions
        by_table: dict[str, set[int]] = {}
        for table, start in missing:
            by_table.setdefault(table, set()).add(start)
        for table, starts in by_table.items():
            await partitions.ensure(conn, table, starts)
        self._partitions |= missing

    # -- insert -----------------------------------------------------------------------

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        if not events:
            return 0
        horizons = Horizons.at(time.time(), self.retention)
        kept = horizons.keep(events, self.on_expired)
        if not kept:
            return 0
        try:
            async with self.pool.acquire() as conn:
                await self._ids(conn, kept)
                records: dict[tuple[datetime, int], Record] = {}
                for e in kept:
                    record = to_record(e, self._callers[caller_of(e)], self._routes[route_of(e)])
                    records.setdefault((_time(record.created_at), record.event_hash), record)
                needed: set[tuple[str, int]] = set()
                for day in {int(r.created_at) // 86400 * 86400 for r in records.values()}:
                    needed.add(("usage_records", month_start(day)))
                    if day >= horizons.minute:
                        needed.add(("usage_minute", day))
                    if day >= horizons.hour:
                        needed.add(("usage_hour", month_start(day)))
                await self._ensure(conn, needed)
                async with conn.transaction():
                    return await self._insert(conn, records, horizons)
        # Class 22 (data exception: out of range, bad encoding) and class 23 (integrity
        # constraint). Every other error, a lost connection or a full disk on the server
        # among them, means "try again later".
        except asyncpg.CheckViolationError as exc:
            if "no partition" in str(exc):  # dropped by retention under us: look again
                self._partitions.clear()
                raise StoreUnavailable(str(exc)) from exc
            raise refused(exc) from exc
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise refused(exc) from exc

    async def _insert(
        self, conn: asyncpg.Connection, records: dict[tuple[datetime, int], Record], horizons: Horizons
    ) -> int:
        rows = [
            dict(zip(RECORD_COLUMNS, record_values(r, created, r.event_hash), strict=True))
            for (created, _), r in records.items()
        ]
        inserted = await conn.fetch(_INSERT_RECORDS, orjson.dumps(rows).decode())
        fresh = [records[(row["created_at"], row["event_hash"])] for row in inserted]
        if not fresh:
            return 0
        deltas = layer_deltas(fresh, horizons.floor)
        await conn.execute(_UPSERT_LAYERS, *(_rollup_json(deltas[layer]) for layer in _LAYER_NAMES))
        return len(fresh)

    # -- queries ----------------------------------------------------------------------

    async def usage(
        self, filters: Filters, grouping: Grouping, limit: int | None = None
    ) -> list[dict[str, Any]]:
        callers = routes = None
        if filters.per_caller:
            callers = [
                r["id"]
                for r in await self.pool.fetch(
                    "SELECT id FROM usage_callers WHERE ($1::text IS NULL OR key_id = $1)"
                    " AND ($2::text IS NULL OR team_id = $2)",
                    filters.key_id,
                    filters.team_id,
                )
            ]
        if filters.model is not None or filters.provider is not None:
            routes = [
                r["id"]
                for r in await self.pool.fetch(
                    "SELECT id FROM usage_routes WHERE ($1::text IS NULL OR model = $1)"
                    " AND ($2::text IS NULL OR provider = $2)",
                    filters.model,
                    filters.provider,
                )
            ]
        if callers == [] or routes == []:
            return []
        sql, params = build(_DIALECT, filters, grouping, callers=callers, routes=routes, limit=limit)
        return items(await self.pool.fetch(sql, *params), grouping)

    async def events(
        self, request_id: str, limit: int, *, key_id: str | None = None, team_id: str | None = None
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT * FROM usage_events WHERE hashtext(request_id) = hashtext($1) AND request_id = $1"
            " AND ($3::text IS NULL OR key_id = $3) AND ($4::text IS NULL OR team_id = $4)"
            " ORDER BY created_at LIMIT $2"
        )
        rows = await self.pool.fetch(sql, request_id, limit, key_id, team_id)
        out = []
        for r in rows:
            row = dict(r)
            row["created_at"] = row["created_at"].timestamp()
            out.append(row)
        return out

    # -- maintenance ------------------------------------------------------------------

    async def maintain(self, now: float) -> dict[str, int]:
        horizons = Horizons.at(now, self.retention)
        ahead: set[tuple[str, int]] = set()
        for table, unit in partitions.PARTITIONED.items():
            start = partitions.start_of(unit, now)
            ahead |= {(table, start), (table, partitions.next_start(unit, start))}
        dropped: dict[str, int] = {}
        async with self.pool.acquire() as conn:
            await self._ensure(conn, ahead)
            for table, horizon in (
                ("usage_records", horizons.events),
                ("stored_completions", horizons.events),
                ("usage_minute", horizons.minute),
                ("usage_hour", horizons.hour),
            ):
                gone = await partitions.drop_before(conn, table, horizon)
                dropped[table] = len(gone)
        if any(dropped.values()):
            self._partitions.clear()
        return dropped

    async def import_legacy(self, batch: int = LEGACY_BATCH) -> int:
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('usage_events_v1') IS NULL"):
                return 0
            state = await conn.fetchrow("SELECT after_time, after_id, done FROM usage_legacy_import")
            after = legacy_after(state)
            if after is None:
                return 0
            after_time, after_id = after
            rows = await conn.fetch(
                "SELECT * FROM usage_events_v1 WHERE $1::timestamptz IS NULL OR created_at > $1"
                " OR (created_at = $1 AND event_id > $2) ORDER BY created_at, event_id LIMIT $3",
                after_time,
                after_id,
                batch,
            )
        if rows:
            await self.insert([legacy_event(r) for r in rows])  # idempotent: a crash here repeats nothing
        await self.pool.execute(
            "INSERT INTO usage_legacy_import (id, after_time, after_id, done) VALUES (true, $1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET after_time = coalesce(excluded.after_time,"
            " usage_legacy_import.after_time), after_id = coalesce(excluded.after_id,"
            " usage_legacy_import.after_id), done = excluded.done",
            *legacy_progress(rows, batch),
        )
        return len(rows)

    # -- stored completions (postgres_completions.py) ---------------------------------

    async def put_completion(self, completion: StoredCompletion) -> bool:
        async with self.pool.acquire() as conn:
            await self._ensure(conn, {("stored_completions", month_start(completion.created_at))})
            return await completions_sql.put(conn, completion)

    async def get_completion(self, completion_id: str) -> StoredCompletion | None:
        return await completions_sql.get(self.pool, completion_id)

    async def list_completions(self, query: CompletionQuery) -> tuple[list[StoredCompletion], bool]:
        return await completions_sql.list_page(self.pool, query)

    async def update_completion(self, completion_id: str, metadata: dict[str, str]) -> bool:
        return await completions_sql.update(self.pool, completion_id, metadata)

    async def delete_completion(self, completion_id: str) -> bool:
        return await completions_sql.delete(self.pool, completion_id)

    async def check(self) -> str:
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return f"postgres unreachable: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self.pool.close()
