"""The analytics read API: usage over time and by dimension, the summary, CSV export.

    GET /v1/usage?start=&end=&key_id=&team_id=&model=&provider=&status=&group_by=&limit=&format=
    GET /v1/stats/summary?start=&end=&key_id=&team_id=&model=&provider=&status=

Times are unix seconds or ISO 8601 (UTC when no offset is given); the range is
[start, end), whole minutes (start rounded down, end up); the default is the last
24 hours. `group_by` is up to one of minute/hour/day and any of key/team/model/
provider, comma-separated. `status` is 2xx, 3xx, 4xx, 5xx or error. Every answer
is cut to the caller's scope (`access.py`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from datetime import UTC, datetime
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from services.analytics.access import Scope, narrow
from services.analytics.query import (
    DIMENSIONS,
    STATUS_CLASSES,
    TIME_UNITS,
    Dimension,
    Filters,
    Grouping,
    TimeUnit,
    empty,
)
from services.analytics.rollup import LAYERS
from services.analytics.store import Horizons, UsageStore
from services.kernel.config import AnalyticsConfig
from services.kernel.errors import InvalidRequest
from services.kernel.service import json_response

DEFAULT_RANGE_S = 86400
MAX_RANGE_S = 5 * 366 * 86400
MAX_POINTS = 10_000  # time buckets in one answer
MAX_ROWS = 10_000
MAX_TEXT = 256


def parse_time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be unix seconds or an ISO 8601 time", param=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = parsed.timestamp()
    if not math.isfinite(value) or not 0 <= value < 4_102_444_800:
        raise InvalidRequest(f"{name} must be a time from 1970 to 2100", param=name)
    return value


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_TEXT or "\x00" in value:
        raise InvalidRequest(f"{name} must have 1 to {MAX_TEXT} characters", param=name)
    return value


def _align(t: int, horizons: Horizons) -> int:
    # Minute (hour) roll-ups are kept for a shorter time than hour (day) ones: an edge
    # older than them is widened to the coarser bucket that still exists.
    if t < horizons.hour:
        return t // 86400 * 86400
    if t < horizons.minute:
        return t // 3600 * 3600
    return t


def filters_of(request: Request, scope: Scope, horizons: Horizons, now: float) -> Filters:
    end = parse_time(request, "end")
    start = parse_time(request, "start")
    end_s = math.ceil((now if end is None else end) / 60) * 60
    start_s = int((end_s - DEFAULT_RANGE_S) if start is None else start) // 60 * 60
    if start_s >= end_s:
        raise InvalidRequest("start must be before end", param="start")
    if end_s - start_s > MAX_RANGE_S:
        raise InvalidRequest("the range is longer than 5 years", param="start")
    status = request.query_params.get("status")
    if status is not None and status not in STATUS_CLASSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUS_CLASSES)}", param="status")
    key_id, team_id = narrow(scope, _text(request, "key_id"), _text(request, "team_id"))
    return Filters(
        start=_align(start_s, horizons),
        end=_align(end_s, horizons),
        key_id=key_id,
        team_id=team_id,
        model=_text(request, "model"),
        provider=_text(request, "provider"),
        status=status,
    )


def grouping_of(request: Request, filters: Filters) -> Grouping:
    raw = request.query_params.get("group_by", "")
    time_unit: TimeUnit | None = None
    dimensions: list[Dimension] = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        if part in TIME_UNITS and time_unit is None:
            time_unit = part
        elif part in DIMENSIONS and part not in dimensions:
            dimensions.append(cast(Dimension, part))
        else:
            raise InvalidRequest(
                "group_by takes up to one of minute, hour, day and any of key, team, model, provider",
                param="group_by",
            )
    if time_unit is not None and (filters.end - filters.start) / LAYERS[time_unit] > MAX_POINTS:
        raise InvalidRequest(
            f"more than {MAX_POINTS} {time_unit}s in the range: use a coarser group_by", param="group_by"
        )
    # Percentiles cost two thirds of a query: a time series has them (the charts), a
    # breakdown by key, team, model or provider only when asked.
    wanted = request.query_params.get("percentiles")
    if wanted not in (None, "true", "false"):
        raise InvalidRequest("percentiles must be true or false", param="percentiles")
    percentiles = wanted == "true" if wanted is not None else time_unit is not None or not dimensions
    return Grouping(time=time_unit, dimensions=tuple(dimensions), percentiles=percentiles)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(MAX_ROWS))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ROWS:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_ROWS}", param="limit")
    return int(raw)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{name.removesuffix('_ms')}_{sub}_ms"] = v
        else:
            out[name] = value
    return out


def _cell(value: Any) -> Any:
    # A text cell a spreadsheet would run as a formula (a model name a client made up
    # reaches the store through a 404): prefixed with ' so that it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_response(rows: list[dict[str, Any]], filename: str) -> Response:
    flat = [_flat(r) for r in rows]
    buffer = io.StringIO()
    if flat:
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        for row in flat:
            if "bucket" in row:
                row["bucket"] = datetime.fromtimestamp(row["bucket"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def _range(filters: Filters) -> dict[str, Any]:
    return {"start": filters.start, "end": filters.end}


async def usage(request: Request, store: UsageStore, scope: Scope, config: AnalyticsConfig) -> Response:
    now = time.time()
    filters = filters_of(request, scope, Horizons.at(now, config.retention), now)
    grouping = grouping_of(request, filters)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    rows = await store.usage(filters, grouping, limit=_limit(request))
    if fmt == "csv":
        return csv_response(rows, "usage.csv")
    group_by = [*([grouping.time] if grouping.time else []), *grouping.dimensions]
    return json_response({"object": "list", **_range(filters), "group_by": group_by, "data": rows})


def targets(row: dict[str, Any], config: AnalyticsConfig) -> dict[str, Any]:
    """The service targets, each with its objective, the measured value and whether it is met
    (None when there was no traffic to judge by)."""
    goals = config.targets

    def judge(goal: float, value: float | None, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        return {"objective": goal, "value": value, "met": met}

    return {
        "availability": judge(goals.availability, row["availability"], True),
        "latency_p99_ms": judge(goals.latency_p99_ms, row["latency_ms"]["p99"], False),
        "cache_hit_rate": judge(goals.cache_hit_rate, row["cache_hit_rate"], True),
    }


async def summary(request: Request, store: UsageStore, scope: Scope, config: AnalyticsConfig) -> Response:
    now = time.time()
    filters = filters_of(request, scope, Horizons.at(now, config.retention), now)
    rows = await store.usage(filters, Grouping())
    row = rows[0] if rows else empty()
    return json_response(
        {"object": "usage.summary", **_range(filters), **row, "targets": targets(row, config)}
    )
