"""Usage queries over the roll-ups: one SQL builder for PostgreSQL and SQLite.

A range is cut into the coarsest buckets that fit it (`segments`): whole days from
the day layer, whole hours at its edges from the hour layer, minutes at the very
edges from the minute layer, so that a 30-day summary reads about 30 day rows per
route instead of millions of events. Filters on key or team read the rows of the
matching callers; everything else reads the "all callers" rows (caller 0).

Percentiles come from the summed histogram columns (see `histogram.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from services.analytics import histogram
from services.analytics.rollup import COUNTERS, LATENCY, LAYERS, TTFT

TimeUnit = Literal["minute", "hour", "day"]
Dimension = Literal["key", "team", "model", "provider"]
TIME_UNITS: tuple[TimeUnit, ...] = ("minute", "hour", "day")
DIMENSIONS: dict[str, str] = {
    "key": "c.key_id",
    "team": "c.team_id",
    "model": "t.model",
    "provider": "t.provider",
}
STATUS_CLASSES: dict[str, tuple[int, ...]] = {
    "2xx": (2,),
    "3xx": (3,),
    "4xx": (4,),
    "5xx": (5,),
    "error": (4, 5),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """What to count: [start, end) in unix seconds (whole minutes) and optional dimensions."""

    start: int
    end: int
    key_id: str | None = None
    team_id: str | None = None
    model: str | None = None
    provider: str | None = None
    status: str | None = None  # a key of STATUS_CLASSES

    @property
    def per_caller(self) -> bool:
        return self.key_id is not None or self.team_id is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Grouping:
    time: TimeUnit | None = None
    dimensions: tuple[Dimension, ...] = ()
    percentiles: bool = True


Segment = tuple[str, int, int]  # (layer, start, end)


def _floor(t: int, width: int) -> int:
    return t // width * width


def _ceil(t: int, width: int) -> int:
    return -(-t // width) * width


def segments(start: int, end: int) -> list[Segment]:
    """Cover [start, end) (whole minutes) with the fewest roll-up buckets."""
    if end <= start:
        return []
    out: list[Segment] = []

    def by_hours(a: int, b: int) -> None:
        h0, h1 = _ceil(a, 3600), _floor(b, 3600)
        if h0 < h1:
            if a < h0:
                out.append(("minute", a, h0))
            out.append(("hour", h0, h1))
            if h1 < b:
                out.append(("minute", h1, b))
        elif a < b:
            out.append(("minute", a, b))

    d0, d1 = _ceil(start, 86400), _floor(end, 86400)
    if d0 < d1:
        by_hours(start, d0)
        out.append(("day", d0, d1))
        by_hours(d1, end)
    else:
        by_hours(start, end)
    return out


class Dialect:
    """The differences between the two stores' SQL: placeholders and time values."""

    def __init__(self, name: Literal["postgres", "sqlite"]) -> None:
        self.name = name

    def param(self, params: list[Any], value: Any) -> str:
        params.append(value)
        return f"${len(params)}" if self.name == "postgres" else "?"

    def time(self, params: list[Any], epoch: int) -> str:
        if self.name == "postgres":
            return self.param(params, datetime.fromtimestamp(epoch, UTC))
        return self.param(params, epoch)

    def sum(self, expr: str, name: str) -> str:
        # PostgreSQL sums bigints into numeric, which asyncpg decodes into Decimal, slowly
        # (most of a query's time, measured): float8 is exact for counts below 2^53.
        if self.name == "postgres":
            return f"sum({expr})::float8 AS {name}"
        return f"sum({expr}) AS {name}"

    def epoch(self, column: str) -> str:
        if self.name == "postgres":
            return f"extract(epoch from {column})::bigint"
        return column

    @property
    def true(self) -> str:
        return "true" if self.name == "postgres" else "1"

    def metadata_matches(self, params: list[Any], metadata: Sequence[tuple[str, str]]) -> list[str]:
        """Conditions that a JSON `metadata` column holds every (name, value) pair."""
        if self.name == "postgres":
            if not metadata:
                return []
            return [f"metadata @> {self.param(params, orjson.dumps(dict(metadata)).decode())}::jsonb"]
        out = []
        for name, value in metadata:
            key = f"'$.' || json_quote({self.param(params, name)})"
            out.append(f"json_extract(metadata, {key}) = {self.param(params, value)}")
        return out

    def first(self, select: str, params: list[Any], completion_id: str) -> str:
        """`select` from the stored completion `completion_id` (in PostgreSQL, where the id is
        unique per partition only, the first one)."""
        sql = f"SELECT {select} FROM stored_completions WHERE id = {self.param(params, completion_id)}"
        return sql + " ORDER BY created_at LIMIT 1" if self.name == "postgres" else sql


_CLASS_SUMS = (
    ("CASE WHEN r.class = 2 THEN r.requests ELSE 0 END", "ok"),
    ("CASE WHEN r.class = 4 THEN r.requests ELSE 0 END", "client_errors"),
    ("CASE WHEN r.class = 5 THEN r.requests ELSE 0 END", "server_errors"),
)
_CLASS_COLUMNS = ("ok", "client_errors", "server_errors")


def measures(grouping: Grouping) -> tuple[str, ...]:
    """The roll-up columns a query sums: histograms only when percentiles are wanted
    (they are two thirds of the columns, so of the work)."""
    return COUNTERS + ((*LATENCY, *TTFT) if grouping.percentiles else ())


def build(
    dialect: Dialect,
    filters: Filters,
    grouping: Grouping,
    *,
    callers: Sequence[int] | None = None,
    routes: Sequence[int] | None = None,
    limit: int | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of a grouped (or, with an empty grouping, a total) query.

    `callers` and `routes` are the ids the key/team and model/provider filters resolve to
    (None: no such filter); they are pushed into every branch, where an index finds them.
    Rows are summed by ids first, then joined to their names and summed again by name:
    the join sees a few aggregated rows instead of every roll-up row."""
    params: list[Any] = []
    dims = set(grouping.dimensions)
    keyed = filters.per_caller or bool({"key", "team"} & dims)
    columns = measures(grouping)
    parts = (
        [(f"usage_{grouping.time}", _floor(filters.start, LAYERS[grouping.time]), filters.end)]
        if grouping.time is not None
        else [(f"usage_{layer}", a, b) for layer, a, b in segments(filters.start, filters.end)]
    )
    if not parts:  # an empty range: a query that returns no row (or one row of nulls)
        parts = [("usage_day", 0, 0)]
    conditions = ["r.caller <> 0" if keyed else "r.caller = 0"]
    if callers is not None:
        conditions.append(f"r.caller IN ({_ids(callers)})")
    if routes is not None:
        conditions.append(f"r.route IN ({_ids(routes)})")
    if filters.status is not None:
        conditions.append(f"r.class IN ({', '.join(str(c) for c in STATUS_CLASSES[filters.status])})")
    selected = ", ".join(("r.bucket", "r.caller", "r.route", "r.class", *(f"r.{c}" for c in columns)))
    branches = [
        f"SELECT {selected} FROM {table} r WHERE r.bucket >= {dialect.time(params, a)}"
        f" AND r.bucket < {dialect.time(params, b)} AND {' AND '.join(conditions)}"
        for table, a, b in parts
    ]
    source = " UNION ALL ".join(branches)
    inner_keys = []
    if grouping.time is not None:
        inner_keys.append("r.bucket")
    if {"key", "team"} & dims:
        inner_keys.append("r.caller")
    if {"model", "provider"} & dims:
        inner_keys.append("r.route")
    sums = [*(dialect.sum(f"r.{c}", c) for c in columns), *(dialect.sum(e, c) for e, c in _CLASS_SUMS)]
    inner = f"SELECT {', '.join([*inner_keys, *sums])} FROM ({source}) r"
    if inner_keys:
        inner += " GROUP BY " + ", ".join(inner_keys)
    if not inner_keys:
        return inner, params
    select: list[str] = []
    groups: list[str] = []
    if grouping.time is not None:
        select.append(f"{dialect.epoch('a.bucket')} AS bucket")
        groups.append("a.bucket")
    joins = []
    if {"key", "team"} & dims:
        joins.append("JOIN usage_callers c ON c.id = a.caller")
    if {"model", "provider"} & dims:
        joins.append("JOIN usage_routes t ON t.id = a.route")
    for dimension in grouping.dimensions:
        expr = DIMENSIONS[dimension]
        select.append(f"{expr} AS {dimension}")
        groups.append(expr)
    outer_sums = [dialect.sum(f"a.{c}", c) for c in (*columns, *_CLASS_COLUMNS)]
    sql = f"SELECT {', '.join([*select, *outer_sums])} FROM ({inner}) a {' '.join(joins)}"
    sql += " GROUP BY " + ", ".join(groups)
    if grouping.time is not None:
        sql += " ORDER BY 1" + (", requests DESC" if grouping.dimensions else "")
    else:
        sql += f" ORDER BY requests DESC, {groups[0]}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def _ids(ids: Sequence[int]) -> str:
    # Integers read from the store's own tables: safe to inline, and an IN list of
    # literals lets both stores use the (caller, bucket) index.
    return ", ".join(str(int(i)) for i in ids) or "NULL"


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _stats(counts: Sequence[float], total: float, count: float) -> dict[str, float | None]:
    return {
        "avg": round(total / count, 3) if count else None,
        "p50": histogram.percentile(counts, 0.50),
        "p95": histogram.percentile(counts, 0.95),
        "p99": histogram.percentile(counts, 0.99),
    }


def shape(row: Any) -> dict[str, Any]:
    """The API's view of one aggregated row: totals, rates and percentiles."""
    requests = _number(row["requests"])
    ok = _number(row["ok"])
    server_errors = _number(row["server_errors"])
    client_errors = _number(row["client_errors"])
    have_histograms = LATENCY[0] in row.keys()  # noqa: SIM118 (asyncpg's `in` looks at values)
    latency = [_number(row[c]) for c in LATENCY] if have_histograms else []
    ttft = [_number(row[c]) for c in TTFT] if have_histograms else []
    prompt, completion = int(_number(row["prompt_tokens"])), int(_number(row["completion_tokens"]))
    hits = _number(row["cache_hits"])
    return {
        "requests": int(requests),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": int(_number(row["cached_tokens"])),
        "reasoning_tokens": int(_number(row["reasoning_tokens"])),
        "estimated_requests": int(_number(row["estimated"])),
        "cost": round(_number(row["cost"]), 8),
        "unpriced_requests": int(_number(row["unpriced"])),
        "saved_cost": round(_number(row["saved_cost"]), 8),
        "cache_hits": int(hits),
        "cache_semantic_hits": int(_number(row["cache_semantic"])),
        "cache_hit_rate": _ratio(hits, ok),
        "client_errors": int(client_errors),
        "server_errors": int(server_errors),
        "error_rate": _ratio(client_errors + server_errors, requests),
        "availability": None if not requests else round(1 - server_errors / requests, 6),
        "latency_ms": _stats(latency, _number(row["latency_sum"]), requests),
        "ttft_ms": _stats(ttft, _number(row["ttft_sum"]), _number(row["ttft_count"])),
        "latency_under_500ms": histogram.share_at_most(latency, 500) if latency else None,
    }


def items(rows: Iterable[Any], grouping: Grouping) -> list[dict[str, Any]]:
    """The API's view of the rows of a `build` query: bucket, dimensions (null for the
    empty string the tables store), then `shape`; rows of an empty total are left out."""
    out = []
    for row in rows:
        if row["requests"] is None:
            continue
        item: dict[str, Any] = {}
        if grouping.time is not None:
            item["bucket"] = int(row["bucket"])
        for dimension in grouping.dimensions:
            value = row[dimension]
            item[dimension] = value if value != "" else None
        item.update(shape(row))
        out.append(item)
    return out


def empty() -> dict[str, Any]:
    """The shape of a range without traffic."""
    return shape(dict.fromkeys((*COUNTERS, *LATENCY, *TTFT, "ok", "client_errors", "server_errors"), 0))
