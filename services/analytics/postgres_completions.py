"""Stored completions in PostgreSQL: monthly partitions (created by the usage store),
JSONB request, answer and metadata; listed by (created_at, id) keyset pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.analytics.store import CompletionQuery, StoredCompletion

Executor = Any  # an asyncpg Pool or Connection (asyncpg has no type information)


async def put(conn: Executor, completion: StoredCompletion) -> bool:
    status = await conn.execute(
        "INSERT INTO stored_completions (created_at, id, key_id, team_id, model, metadata,"
        " request, response) SELECT $1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb"
        # Once per id (a cache hit answers with the id of the completion it replays).
        " WHERE NOT EXISTS (SELECT 1 FROM stored_completions WHERE id = $2)"
        " ON CONFLICT DO NOTHING",
        datetime.fromtimestamp(completion.created_at, UTC),
        completion.id,
        completion.key_id,
        completion.team_id or "",
        completion.model,
        orjson.dumps(completion.metadata).decode(),
        orjson.dumps(completion.request).decode(),
        orjson.dumps(completion.response).decode(),
    )
    return bool(status.endswith(" 1"))


def _completion(row: asyncpg.Record) -> StoredCompletion:
    return StoredCompletion(
        id=row["id"],
        created_at=row["created_at"].timestamp(),
        key_id=row["key_id"],
        team_id=row["team_id"] or None,
        model=row["model"],
        metadata=orjson.loads(row["metadata"]),
        request=orjson.loads(row["request"]),
        response=orjson.loads(row["response"]),
    )


async def get(pool: Executor, completion_id: str) -> StoredCompletion | None:
    row = await pool.fetchrow(
        "SELECT * FROM stored_completions WHERE id = $1 ORDER BY created_at LIMIT 1", completion_id
    )
    return None if row is None else _completion(row)


async def list_page(pool: Executor, query: CompletionQuery) -> tuple[list[StoredCompletion], bool]:
    params: list[Any] = []
    where = ["true"]
    for column, value in (("key_id", query.key_id), ("team_id", query.team_id), ("model", query.model)):
        if value is not None:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if query.metadata:
        params.append(orjson.dumps(dict(query.metadata)).decode())
        where.append(f"metadata @> ${len(params)}::jsonb")
    direction = "<" if query.order == "desc" else ">"
    if query.after is not None:
        params.append(query.after)
        n = len(params)
        where.append(
            f"(created_at, id) {direction} (SELECT created_at, id FROM stored_completions"
            f" WHERE id = ${n} ORDER BY created_at LIMIT 1)"
        )
    order = "DESC" if query.order == "desc" else "ASC"
    params.append(query.limit + 1)
    rows = await pool.fetch(
        f"SELECT * FROM stored_completions WHERE {' AND '.join(where)}"
        f" ORDER BY created_at {order}, id {order} LIMIT ${len(params)}",
        *params,
    )
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
