"""The analytics app in-process (SQLite store, in-process stream) with principals built
by the tests, through the `authenticate` hook the auth service will use."""

from __future__ import annotations

import contextlib
import uuid

import httpx
import orjson
import pytest

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
