"""Who sees what: the analytics API cut to the caller's `Principal`.

Auth issues principals later; here the test maps bearer tokens to principals it
builds, through the same `authenticate` hook auth will use, on the real app
(in-process, SQLite store, in-process stream)."""

from __future__ import annotations

import time

from services.analytics.access import encode_principal
from tests.analytics.conftest import PRINCIPALS


def requests(response) -> int:
    assert response.status_code == 200, response.text
    return response.json()["requests"]


async def test_summary_is_cut_to_the_callers_team(api):
    get, _, _ = api
    assert requests(await get("/v1/stats/summary", "admin")) == 9
    assert requests(await get("/v1/stats/summary", "red-admin")) == 5
    assert requests(await get("/v1/stats/summary", "blue-admin")) == 4
    assert requests(await get("/v1/stats/summary", "red-member")) == 3  # its own key
    assert requests(await get("/v1/stats/summary", "red-admin", key_id="red-2")) == 2
    assert requests(await get("/v1/stats/summary", "red-admin", key_id="blue-1")) == 0  # not in its team


async def test_other_teams_are_refused(api):
    get, _, _ = api
    response = await get("/v1/stats/summary", "red-admin", team_id="blue")
    assert response.status_code == 403
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (await get("/v1/usage", "red-member", key_id="red-2")).status_code == 403
    assert (await get("/v1/stats/summary", "teamless")).status_code == 403
    assert (await get("/v1/stats/summary", "nobody")).status_code == 401
    assert (await get("/v1/usage/dead-letters", "red-admin")).status_code == 403  # administrators only


async def test_grouping_shows_only_the_callers_rows(api):
    get, _, _ = api
    by_key = (await get("/v1/usage", "red-admin", group_by="key")).json()["data"]
    assert {(r["key"], r["requests"]) for r in by_key} == {("red-1", 3), ("red-2", 2)}
    by_team = (await get("/v1/usage", "admin", group_by="team")).json()["data"]
    assert {(r["team"], r["requests"], round(r["cost"], 6)) for r in by_team} == {
        ("red", 5, 0.05),
        ("blue", 4, 0.08),
    }
    csv = await get("/v1/usage", "blue-admin", group_by="team", format="csv")
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("team,requests,")
    assert lines[1].startswith("blue,4,")
    assert len(lines) == 2


async def test_request_lookups_are_scoped(api):
    get, _, tag = api
    rows = (await get("/v1/usage/events", "blue-admin", request_id=f"{tag}-0")).json()["data"]
    assert rows == []
    rows = (await get("/v1/usage/events", "red-admin", request_id=f"{tag}-0")).json()["data"]
    assert [r["key_id"] for r in rows] == ["red-1"]


async def test_stored_completions_are_scoped(api):
    get, http, _ = api

    async def store(who: str, completion_id: str) -> None:
        principal = PRINCIPALS[who]
        body = {
            "request": {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"k": "v"},
            },
            "response": {"id": completion_id, "object": "chat.completion", "created": int(time.time())},
            "created_at": time.time(),
        }
        header = encode_principal(principal)
        # The router speaks for its callers with the master key (here: the admin token).
        response = await http.post(
            "/internal/completions",
            json=body,
            headers={"authorization": "Bearer admin", "x-gateway-principal": header.decode()},
        )
        assert response.status_code in (200, 201), response.text

    await store("red-member", "chatcmpl-red")
    await store("blue-admin", "chatcmpl-blue")
    red = (await get("/v1/chat/completions", "red-admin")).json()["data"]
    assert [c["id"] for c in red] == ["chatcmpl-red"]
    assert red[0]["metadata"] == {"k": "v"}
    assert (await get("/v1/chat/completions/chatcmpl-blue", "red-admin")).status_code == 404
    assert (await get("/v1/chat/completions/chatcmpl-blue", "blue-admin")).status_code == 200
    everything = (await get("/v1/chat/completions", "admin")).json()["data"]
    assert {c["id"] for c in everything} == {"chatcmpl-red", "chatcmpl-blue"}


async def test_csv_cells_that_look_like_formulas_stay_text(api):
    get, _, _ = api
    response = await get("/v1/usage", "admin", group_by="model", format="csv")
    assert response.status_code == 200
    cells = [line.split(",")[0] for line in response.text.splitlines()[1:]]
    assert "'=SUM(1)" in cells
    assert "=SUM(1)" not in cells
