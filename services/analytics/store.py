"""Where usage events end up: PostgreSQL (`postgres.py`) or, embedded, SQLite (`sqlite.py`).

Both keep the same contract and the same layout: an event is one narrow row whose
strings live in two lookup tables (callers: key and team; routes: endpoint, model,
provider, deployment...), and every stored event adds to the minute, hour and day
roll-ups in the same transaction, so that summaries never read raw events.

Inserts are idempotent on the event: (created_at, 64-bit hash of `event_id`) is
unique, and only the events the insert reports as new reach the roll-ups, so a batch
replayed after a crash between commit and acknowledgement adds nothing, anywhere.

An insert fails in one of two ways, and the consumer treats them differently: the
store refused the data (`RefusedEvents`: a value out of range, a constraint), which
no retry of the same batch can fix, or anything else (the store is down, out of
disk, being migrated), which a retry later will.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from services.analytics.query import Dialect, Filters, Grouping
from services.analytics.rollup import CACHED, ESTIMATED, SEMANTIC, STREAM, Record
from services.kernel.config import RetentionConfig
from services.kernel.migrations import read_migrations
from services.kernel.usage import UsageEvent

MIGRATIONS = Path(__file__).parent / "migrations"
MAX_REAL = 3.0e38  # PostgreSQL `real`: a latency past it would be refused, not stored
MAX_DIMENSIONS_CACHED = 100_000


class RefusedEvents(Exception):
    """The store refused the data itself, not the connection: retrying the same batch
    cannot succeed; the consumer splits it to find the events at fault."""


class StoreUnavailable(Exception):
    """A transient condition (a partition dropped under an insert): retry the batch."""


def refused(exc: BaseException) -> RefusedEvents:
    return RefusedEvents(f"{type(exc).__name__}: {exc}"[:1000])


def migrations(dialect: str) -> list[tuple[int, str]]:
    return read_migrations(MIGRATIONS, dialect)


def event_hash(event_id: str) -> int:
    """64 bits of BLAKE2b of the event id, signed (PostgreSQL `bigint`, SQLite INTEGER).

    Unique together with `created_at` (microseconds): two different events collide
    only if they share the microsecond and the 64-bit hash."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


def digest(*parts: str) -> bytes:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()


CallerKey = tuple[str, str]  # (key_id, team_id or "")
RouteKey = tuple[str, str, str, str, str, str, str]


def caller_of(event: UsageEvent) -> CallerKey:
    return (event["key_id"], event["team_id"] or "")


def route_of(event: UsageEvent) -> RouteKey:
    return (
        event["endpoint"],
        event["model"],
        event["provider"],
        event["upstream_model"],
        event["deployment"],
        event["route_reason"] or "",
        event["region"] or "",
    )


def to_record(event: UsageEvent, caller: int, route: int) -> Record:
    flags = (
        (CACHED if event["cached"] else 0)
        | (STREAM if event["stream"] else 0)
        | (ESTIMATED if event["estimated"] else 0)
        | (SEMANTIC if event["cache"] == "semantic" else 0)
    )
    ttft = event["ttft_ms"]
    # Positional, in the order of `Record`'s fields: keywords cost a third of the call.
    return Record(
        float(event["created_at"]),
        event_hash(event["event_id"]),
        caller,
        route,
        event["status"],
        flags,
        min(event["attempts"], 32767),
        event["prompt_tokens"],
        event["completion_tokens"],
        event["cached_tokens"],
        event["reasoning_tokens"],
        min(float(event["latency_ms"]), MAX_REAL),
        None if ttft is None else min(float(ttft), MAX_REAL),
        event["cost"],
        event["saved_cost"],
        event["error_code"],
        event["request_id"],
    )


# The columns of `usage_records`, in the order `record_values` gives them.
RECORD_COLUMNS = (
    "created_at",
    "event_hash",
    "caller",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
    "flags",
    "attempts",
    "cached_tokens",
    "reasoning_tokens",
    "ttft_ms",
    "cost",
    "saved_cost",
    "error_code",
    "request_id",
)


def record_values(r: Record, created_at: Any, event_hash: Any) -> tuple[Any, ...]:
    """A record as a `usage_records` row; the two key columns as the store passes them
    (zero cached and reasoning counts are stored as NULL)."""
    return (
        created_at,
        event_hash,
        r.caller,
        r.route,
        r.prompt_tokens,
        r.completion_tokens,
        r.latency_ms,
        r.status,
        r.flags,
        r.attempts,
        r.cached_tokens or None,
        r.reasoning_tokens or None,
        r.ttft_ms,
        r.cost,
        r.saved_cost,
        r.error_code,
        r.request_id,
    )


def month_start(epoch: float, back: int = 0) -> int:
    """Unix time of the first second of the UTC month of `epoch`, `back` months earlier."""
    t = datetime.fromtimestamp(epoch, UTC)
    months = t.year * 12 + (t.month - 1) - back
    return calendar.timegm((months // 12, months % 12 + 1, 1, 0, 0, 0))


def day_start(epoch: float, back: int = 0) -> int:
    return (int(epoch) // 86400 - back) * 86400


@dataclasses.dataclass(frozen=True, slots=True)
class Horizons:
    """The oldest time each kind of data is kept from (unix seconds)."""

    events: int
    minute: int
    hour: int

    @classmethod
    def at(cls, now: float, retention: RetentionConfig) -> Horizons:
        return cls(
            events=month_start(now, retention.events_months - 1),
            minute=day_start(now, retention.minute_rollup_days - 1),
            hour=month_start(now, retention.hour_rollup_months - 1),
        )

    def floor(self, layer: str) -> int:
        """The oldest time the roll-up `layer` keeps (the day layer keeps everything)."""
        return {"minute": self.minute, "hour": self.hour}.get(layer, 0)

    def keep(self, events: Sequence[UsageEvent], on_expired: ExpiredCallback | None) -> list[UsageEvent]:
        """The events still within retention; `on_expired` is told how many were not."""
        kept = [e for e in events if e["created_at"] >= self.events]
        if len(kept) < len(events) and on_expired is not None:
            on_expired(len(events) - len(kept))
        return kept


@dataclasses.dataclass(frozen=True, slots=True)
class StoredCompletion:
    """A chat completion created with `store: true`."""

    id: str
    created_at: float
    key_id: str
    team_id: str | None
    model: str
    metadata: dict[str, str]
    request: dict[str, Any]
    response: dict[str, Any]


def completion_values(completion: StoredCompletion) -> tuple[str, str, str, str, str, str, str]:
    """A stored completion's columns after `created_at` (JSON as text, no team as "")."""
    return (
        completion.id,
        completion.key_id,
        completion.team_id or "",
        completion.model,
        orjson.dumps(completion.metadata).decode(),
        orjson.dumps(completion.request).decode(),
        orjson.dumps(completion.response).decode(),
    )


def stored_completion(row: Any, created_at: float) -> StoredCompletion:
    """A `stored_completions` row (its `created_at` as the store reads it)."""
    return StoredCompletion(
        id=row["id"],
        created_at=created_at,
        key_id=row["key_id"],
        team_id=row["team_id"] or None,
        model=row["model"],
        metadata=orjson.loads(row["metadata"]),
        request=orjson.loads(row["request"]),
        response=orjson.loads(row["response"]),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class CompletionQuery:
    """`GET /v1/chat/completions`: what to list, within the caller's scope."""

    key_id: str | None = None  # scope: a member sees its own key's
    team_id: str | None = None  # scope: a team admin sees its team's
    model: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    after: str | None = None
    limit: int = 20
    order: str = "asc"


def completion_page(dialect: Dialect, query: CompletionQuery) -> tuple[str, list[Any]]:
    """The SQL and parameters of a page of stored completions, in (created_at, id) order,
    with one row more than the page when another page follows."""
    params: list[Any] = []
    where = [dialect.true]
    for column, value in (("key_id", query.key_id), ("team_id", query.team_id), ("model", query.model)):
        if value is not None:
            where.append(f"{column} = {dialect.param(params, value)}")
    where += dialect.metadata_matches(params, query.metadata)
    if query.after is not None:
        direction = "<" if query.order == "desc" else ">"
        where.append(f"(created_at, id) {direction} ({dialect.first('created_at, id', params, query.after)})")
    order = "DESC" if query.order == "desc" else "ASC"
    sql = (
        f"SELECT * FROM stored_completions WHERE {' AND '.join(where)}"
        f" ORDER BY created_at {order}, id {order} LIMIT {dialect.param(params, query.limit + 1)}"
    )
    return sql, params


ExpiredCallback = Callable[[int], None]
LEGACY_BATCH = 5000


def legacy_after(state: Any) -> tuple[Any, Any] | None:
    """Where the import of version 1's events goes on from (created_at, event_id; None
    for each at the start), or None once it is done."""
    if state is not None and state["done"]:
        return None
    return (
        state["after_time"] if state is not None else None,
        state["after_id"] if state is not None else None,
    )


def legacy_progress(rows: Sequence[Any], batch: int) -> tuple[Any, Any, bool]:
    """What the import records after a batch of `rows`: the last event read (or nulls,
    which keep the previous position) and whether that was the last batch."""
    last = rows[-1] if rows else None
    return (
        last["created_at"] if last is not None else None,
        last["event_id"] if last is not None else None,
        len(rows) < batch,
    )


def legacy_event(row: Any) -> UsageEvent:
    """A row of version 1's `usage_events` (now `usage_events_v1`) as an event."""
    created = row["created_at"]
    return {
        "event_id": row["event_id"],
        "request_id": row["request_id"],
        "key_id": row["key_id"],
        "team_id": row["team_id"],
        "endpoint": row["endpoint"],
        "model": row["model"],
        "provider": row["provider"],
        "upstream_model": row["upstream_model"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "estimated": bool(row["estimated"]),
        "latency_ms": row["latency_ms"],
        "ttft_ms": row["ttft_ms"],
        "status": row["status"],
        "error_code": row["error_code"],
        "cached": bool(row["cached"]),
        "stream": bool(row["stream"]),
        "created_at": created if isinstance(created, float) else created.timestamp(),
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": None,
        "saved_cost": None,
        "cache": None,
        "deployment": "",
        "attempts": 0,
        "attempt_log": [],
        "route_reason": None,
        "region": None,
    }


class UsageStore(Protocol):
    async def insert(self, events: Sequence[UsageEvent]) -> int:
        """Store new events (duplicates add nothing); the number of rows added."""
        ...

    async def usage(
        self, filters: Filters, grouping: Grouping, limit: int | None = None
    ) -> list[dict[str, Any]]: ...
    async def events(
        self, request_id: str, limit: int, *, key_id: str | None = None, team_id: str | None = None
    ) -> list[dict[str, Any]]: ...
    async def maintain(self, now: float) -> dict[str, int]:
        """Create the partitions ahead, drop those past the retention; what was dropped."""
        ...

    async def import_legacy(self, batch: int = LEGACY_BATCH) -> int:
        """Copy the next rows of version 1's table into the new layout (idempotent, resumable);
        0 once everything is copied."""
        ...

    async def put_completion(self, completion: StoredCompletion) -> bool: ...
    async def get_completion(self, completion_id: str) -> StoredCompletion | None: ...
    async def list_completions(self, query: CompletionQuery) -> tuple[list[StoredCompletion], bool]: ...
    async def update_completion(self, completion_id: str, metadata: dict[str, str]) -> bool: ...
    async def delete_completion(self, completion_id: str) -> bool: ...
    async def check(self) -> str: ...
    async def close(self) -> None: ...
