"""Stored completions in PostgreSQL: monthly partitions (created by the usage store),
JSONB request, answer and metadata; listed by (created_at, id) keyset pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.analytics.query import Dialect
from services.analytics.store import (
    CompletionQuery,
    StoredCompletion,
    completion_page,
    completion_values,
    stored_completion,
)

Executor = Any  # an asyncpg Pool or Connection (asyncpg has no type information)
_DIALECT = Dialect("postgres")


async def put(conn: Executor, completion: StoredCompletion) -> bool:
    status = await conn.execute(
        "INSERT INTO stored_completions (created_at, id, key_id, team_id, model, metadata,"
        " request, response) SELECT $1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb"
        # Once per id (a cache hit answers with the id of the completion it replays).
        " WHERE NOT EXISTS (SELECT 1 FROM stored_completions WHERE id = $2)"
        " ON CONFLICT DO NOTHING",
        datetime.fromtimestamp(completion.created_at, UTC),
        *completion_values(completion),
    )
    return bool(status.endswith(" 1"))


def _completion(row: asyncpg.Record) -> StoredCompletion:
    return stored_completion(row, row["created_at"].timestamp())


async def get(pool: Executor, completion_id: str) -> StoredCompletion | None:
    params: list[Any] = []
    row = await pool.fetchrow(_DIALECT.first("*", params, completion_id), *params)
    return None if row is None else _completion(row)


async def list_page(pool: Executor, query: CompletionQuery) -> tuple[list[StoredCompletion], bool]:
    sql, params = completion_page(_DIALECT, query)
    rows = await pool.fetch(sql, *params)
    return [_completion(r) for r in rows[: query.limit]], len(rows) > query.limit


async def update(pool: Executor, completion_id: str, metadata: dict[str, str]) -> bool:
    status = await pool.execute(
        "UPDATE stored_completions SET metadata = $2::jsonb WHERE id = $1",
        completion_id,
        orjson.dumps(metadata).decode(),
    )
    return not status.endswith(" 0")


async def delete(pool: Executor, completion_id: str) -> bool:
    status = await pool.execute("DELETE FROM stored_completions WHERE id = $1", completion_id)
    return not status.endswith(" 0")
