"""Who sees what: the analytics API cut to the caller's `Principal`.

Auth issues principals later; here the test maps bearer tokens to principals it
builds, through the same `authenticate` hook auth will use, on the real app
(in-process, SQLite store, in-process stream)."""

from __future__ import annotations

import contextlib
import time
import uuid

import httpx
import orjson
import pytest

from services.analytics.access import encode_principal
from services.analytics.app import create_app
from services.kernel.errors import Unauthorized
from services.kernel.principal import ADMIN, Principal
from services.kernel.stream import MemoryUsageStream
from tests.conftest import make_settings
from tests.integration.events import make_event
from tests.integration.streams import wait_for

PRINCIPALS = {
    "admin": ADMIN,
    "red-admin": Principal(key_id="red-admin-key", role="team_admin", team_id="red"),
    "blue-admin": Principal(key_id="blue-admin-key", role="team_admin", team_id="blue"),
    "teamless": Principal(key_id="lost", role="team_admin"),
    "red-member": Principal(key_id="red-1", role="member", team_id="red"),
}


async def authenticate(headers):
    token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
    if token not in PRINCIPALS:
        raise Unauthorized("Invalid API key.")
    return PRINCIPALS[token]


@pytest.fixture
async def api(tmp_path):
    stream = MemoryUsageStream()
    app = create_app(make_settings(tmp_path), stream=stream, process_metrics=False, authenticate=authenticate)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics")
        )
        tag = uuid.uuid4().hex[:8]
        events = [make_event(tag, i, key_id="red-1", team_id="red", cost=0.01) for i in range(3)]
        events += [make_event(tag, 3 + i, key_id="red-2", team_id="red", cost=0.01) for i in range(2)]
        events += [make_event(tag, 5 + i, key_id="blue-1", team_id="blue", cost=0.02) for i in range(4)]
        events[5]["model"] = "=SUM(1)"  # as a client's unknown model name reaches the store (a 404)
        await stream.publish([orjson.dumps(e) for e in events])
        await wait_for(lambda: stream.backlog() == 0, what="the events to be stored")

        async def get(path: str, who: str, **params):
            return await http.get(path, params=params, headers={"authorization": f"Bearer {who}"})

        yield get, http, tag


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
