"""PostgreSQL range partitions by month or by day: created ahead, dropped past retention.

Retention drops whole partitions (a catalog operation, instant whatever their size)
instead of deleting rows, which on a large table takes hours, bloats it and needs a
vacuum afterwards. Partitions are created when an event needs one and, ahead of
time, by the periodic maintenance, under an advisory lock so that replicas do not
race on the catalog.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from services.analytics.store import day_start, month_start

Unit = Literal["month", "day"]
PARTITIONED: dict[str, Unit] = {
    "usage_records": "month",
    "usage_minute": "day",
    "usage_hour": "month",
    "stored_completions": "month",
}
_LOCK = 8084002  # pg_advisory_xact_lock key for partition DDL
_SUFFIX = re.compile(r"_p(\d{6}|\d{8})$")


def start_of(unit: Unit, epoch: float) -> int:
    return month_start(epoch) if unit == "month" else day_start(epoch)


def next_start(unit: Unit, start: int) -> int:
    return month_start(start + 32 * 86400) if unit == "month" else start + 86400


def name_of(table: str, unit: Unit, start: int) -> str:
    t = datetime.fromtimestamp(start, UTC)
    return f"{table}_p{t:%Y%m}" if unit == "month" else f"{table}_p{t:%Y%m%d}"


def _start_of_name(name: str) -> int | None:
    match = _SUFFIX.search(name)
    if match is None:
        return None
    digits = match.group(1)
    fmt = "%Y%m" if len(digits) == 6 else "%Y%m%d"
    return int(datetime.strptime(digits, fmt).replace(tzinfo=UTC).timestamp())


async def ensure(conn: asyncpg.Connection, table: str, starts: set[int]) -> None:
    """Create the partitions of `table` that begin at `starts` (unix seconds)."""
    unit = PARTITIONED[table]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        for start in sorted(starts):
            end = next_start(unit, start)
            lower = datetime.fromtimestamp(start, UTC).isoformat()
            upper = datetime.fromtimestamp(end, UTC).isoformat()
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name_of(table, unit, start)} PARTITION OF {table}"
                f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
            )


async def existing(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """The partitions of `table` (in the current schema): name → start."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        table,
    )
    out = {}
    for row in rows:
        start = _start_of_name(row["relname"])
        if start is not None:
            out[row["relname"]] = start
    return out


async def drop_before(conn: asyncpg.Connection, table: str, horizon: int) -> list[str]:
    """Drop the partitions of `table` that end at or before `horizon`; their names."""
    unit = PARTITIONED[table]
    dropped = []
    for name, start in sorted((await existing(conn, table)).items(), key=lambda item: item[1]):
        if next_start(unit, start) <= horizon:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
                await conn.execute(f"DROP TABLE IF EXISTS {name}")
            dropped.append(name)
    return dropped
