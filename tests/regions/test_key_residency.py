"""Residency of a key: the us-east router, in-process behind a real HTTP server, with an
authenticator that gives some keys a region restriction (as the auth stage does from its
keys and teams), driven with the official openai client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Mapping

import openai
import orjson
import pytest
import pytest_asyncio
import uvicorn
from openai import AsyncOpenAI

from services.kernel.bearer import bearer_token
from services.kernel.config import build_catalog
from services.kernel.errors import Unauthorized
from services.kernel.principal import Principal
from services.kernel.stream import MemoryUsageStream, events_of
from services.router import app as router_app
from tests.conftest import make_settings
from tests.regions.conftest import EU, UPSTREAM_KEY, UPSTREAM_KEY_ENV, US, config_text, served_by

KEYS = {
    "sk-unrestricted-0000": Principal(key_id="open", role="member"),
    "sk-eu-only-00000000": Principal(key_id="eu-only", role="member", regions=frozenset({EU})),
    "sk-nowhere-00000000": Principal(key_id="nowhere", role="member", regions=frozenset()),
}


class KeyTable:
    """Keys to principals, from a table."""

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        self.keys = keys

    async def authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        principal = self.keys.get(bearer_token(headers) or "")
        if principal is None:
            raise Unauthorized("unknown key")
        return principal


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(tmp_path_factory, upstreams) -> AsyncIterator[dict]:
    tmp = tmp_path_factory.mktemp("residency")
    settings = make_settings(tmp, config_text(upstreams, "{flush_interval_ms: 5}"), region=US)
    settings = settings.replace(catalog=build_catalog(settings.config, {UPSTREAM_KEY_ENV: UPSTREAM_KEY}))
    stream = MemoryUsageStream()
    app = router_app.create_app(
        settings,
        stream=stream,
        helpers=router_app.Helpers(),
        stages=router_app.Stages(authenticator=KeyTable(KEYS)),
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, loop="none", log_config=None, access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the router did not start")
        await asyncio.sleep(0.01)
    try:
        yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "stream": stream}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@contextlib.asynccontextmanager
async def as_key(router, key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=router["url"], api_key=key, max_retries=0) as client:
        yield client


async def usage_event(router, request_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _, data in await router["stream"].read("tests", count=1000, block_ms=1):
            for event in map(orjson.loads, events_of(data)):
                router.setdefault("events", {})[event["request_id"]] = event
        if request_id in router.get("events", {}):
            return router["events"][request_id]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no usage event for {request_id}")


MESSAGES = [{"role": "user", "content": "where am I served?"}]


async def test_an_unrestricted_key_is_served_in_the_routers_region(router, upstreams):
    before = served_by(upstreams, "chat-us")[US]
    async with as_key(router, "sk-unrestricted-0000") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, extra_headers={"x-request-id": "residency-open-1"}
        )
    assert raw.parse().choices[0].message.content
    assert served_by(upstreams, "chat-us")[US] == before + 1
    event = await usage_event(router, "residency-open-1")
    assert (event["region"], event["deployment"]) == (US, "chat/1")


async def test_a_key_restricted_to_another_region_is_served_there_not_here(router, upstreams):
    before = served_by(upstreams, "chat-eu")[EU]
    us_before = served_by(upstreams, "chat-us")[US]
    async with as_key(router, "sk-eu-only-00000000") as client:
        reply = await client.chat.completions.create(
            model="chat", messages=MESSAGES, extra_headers={"x-request-id": "residency-eu-1"}
        )
        stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert reply.choices[0].message.content
    assert text
    assert served_by(upstreams, "chat-eu")[EU] == before + 2
    assert served_by(upstreams, "chat-us")[US] == us_before
    event = await usage_event(router, "residency-eu-1")
    # The event says which router served it (us-east) and which deployment answered (eu-west's).
    assert (event["region"], event["deployment"], event["key_id"]) == (US, "chat/0", "eu-only")


async def test_a_restricted_key_gets_a_clear_error_when_its_region_fails(router, upstreams):
    async with as_key(router, "sk-eu-only-00000000") as client:
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="eu-down", messages=MESSAGES)
        # A stream fails before its first byte, so the same error comes as the answer.
        with pytest.raises(openai.InternalServerError) as in_stream:
            await client.chat.completions.create(model="eu-down", messages=MESSAGES, stream=True)
    assert err.value.status_code == 503
    assert err.value.response.json()["error"]["code"] == "region_unavailable"
    assert "other regions are not used" in err.value.message
    assert in_stream.value.response.json()["error"]["code"] == "region_unavailable"
    # The router's own region had a healthy deployment of the model; the key may not use it.
    assert served_by(upstreams, "eu-down-us")[US] == 0


async def test_a_restricted_key_is_refused_a_model_with_nothing_in_its_regions(router, upstreams):
    async with as_key(router, "sk-eu-only-00000000") as client:
        with pytest.raises(openai.PermissionDeniedError) as err:
            await client.chat.completions.create(model="us-only", messages=MESSAGES)
    assert err.value.response.json()["error"]["code"] == "region_not_allowed"
    assert "eu-west" in err.value.message
    async with as_key(router, "sk-nowhere-00000000") as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert served_by(upstreams, "us-only-us")[US] == 0
