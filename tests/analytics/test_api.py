"""The analytics API refuses bad input cleanly and answers the shapes it documents."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "nan"}, "end"),
        ({"start": "-5"}, "start"),
        ({"start": "2000", "end": "1000"}, "start"),
        ({"start": "0", "end": "400000000"}, "start"),  # more than 5 years
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "hour,day"}, "group_by"),
        ({"group_by": "minute", "start": "0", "end": "8640000"}, "group_by"),  # 144,000 minutes
        ({"status": "200"}, "status"),
        ({"format": "xml"}, "format"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"percentiles": "yes"}, "percentiles"),
        ({"key_id": "k" * 300}, "key_id"),
    ],
)
async def test_usage_refuses_bad_parameters(api, params, param):
    get, _, _ = api
    response = await get("/v1/usage", "admin", **params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


async def test_times_are_unix_seconds_or_iso_8601(api):
    get, _, _ = api
    iso = await get("/v1/stats/summary", "admin", start="2026-01-01T00:00:00Z", end="2028-01-01")
    unix = await get("/v1/stats/summary", "admin", start="1767225600", end="1830297600")
    assert iso.status_code == unix.status_code == 200
    assert iso.json()["start"] == unix.json()["start"] == 1767225600
    assert iso.json()["requests"] == unix.json()["requests"] == 9


async def test_an_empty_range_has_the_same_shape(api):
    get, _, _ = api
    body = (await get("/v1/stats/summary", "admin", start="1000000000", end="1000003600")).json()
    assert body["requests"] == 0
    assert body["latency_ms"] == {"avg": None, "p50": None, "p95": None, "p99": None}
    assert body["targets"]["availability"] == {"objective": 0.999, "value": None, "met": None}


async def test_series_and_breakdowns(api):
    get, _, _ = api
    series = (await get("/v1/usage", "admin", group_by="hour")).json()
    assert series["group_by"] == ["hour"]
    assert sum(r["requests"] for r in series["data"]) == 9
    assert all(r["bucket"] % 3600 == 0 for r in series["data"])
    assert series["data"][0]["latency_ms"]["p50"] is not None  # a series has percentiles
    by_team = (await get("/v1/usage", "admin", group_by="team,key")).json()["data"]
    assert {(r["team"], r["key"]) for r in by_team} == {
        ("red", "red-1"),
        ("red", "red-2"),
        ("blue", "blue-1"),
    }
    assert by_team[0]["latency_ms"]["p50"] is None  # a breakdown has them only when asked
    asked = (await get("/v1/usage", "admin", group_by="team", percentiles="true")).json()["data"]
    assert asked[0]["latency_ms"]["p50"] is not None
    top = (await get("/v1/usage", "admin", group_by="key", limit="1")).json()["data"]
    assert [r["key"] for r in top] == ["blue-1"]
