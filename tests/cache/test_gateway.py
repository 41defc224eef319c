"""The router's cache stage through the whole gateway over real HTTP (uvicorn on a free
port, the official openai client), the cache service on real Redis: hits for plain and
streaming requests, tenants kept apart, the cache headers, the usage event, and a gateway
that keeps answering when the cache service or its Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from services.cache import app as cache_app
from services.cache.client import CacheClient
from services.kernel.principal import Principal
from services.kernel.stream import MemoryUsageStream, events_of
from services.router import app as router_app
from tests.cache.conftest import FixedKeys, ask, serving, until_hit
from tests.conftest import REDIS_URL, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYS = {
    "sk-team-a-one-0000": Principal("key-a1", "member", team_id="a"),
    "sk-team-a-two-0000": Principal("key-a2", "member", team_id="a"),
    "sk-team-b-one-0000": Principal("key-b1", "member", team_id="b"),
}
CONFIG = """
cache:
  enabled: true
  redis_prefix: "{prefix}"
  lookup_timeout_ms: 10000
  max_temperature: 0.5
  models:
    mock-nocache: {{enabled: false}}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
        price: {{input: 1000, output: 2000}}
  - name: mock-nocache
    deployments:
      - provider: mock
        model: mock-nocache
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def gateway(
    tmp_path, prefix: str, encoder, *, cache_redis: str | None = REDIS_URL, cache_url: str | None = None
) -> AsyncIterator[tuple[str, MemoryUsageStream]]:
    settings = make_settings(tmp_path, CONFIG.format(prefix=prefix))
    stream = MemoryUsageStream()
    subs = []
    if cache_url is None:
        cache = cache_app.create_app(
            settings.replace(redis_url=cache_redis), encoder=encoder, process_metrics=False
        )
        client = CacheClient.in_process(cache)
        subs.append(cache)
    else:
        client = CacheClient.over_http(cache_url)
    app = router_app.create_app(
        settings,
        stream=stream,
        helpers=router_app.Helpers(cache=client),
        sub_apps=subs,
        stages=router_app.Stages(authenticator=FixedKeys(KEYS)),
    )
    async with serving(app) as url:
        yield url, stream


async def usage_of(stream: MemoryUsageStream, request_id: str, deadline_s: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < end:
        for _, data in await stream.read("test", count=1000, block_ms=50):
            seen += [orjson.loads(e) for e in events_of(data)]
        for event in seen:
            if event["request_id"] == request_id:
                return event
    raise AssertionError(f"no usage event for {request_id}")


async def test_exact_and_semantic_hits_plain_and_streaming(tmp_path, encoder, cleanup, openai):
    async with gateway(tmp_path, cleanup, encoder) as (url, stream):
        client = openai(url, "sk-team-a-one-0000")
        headers, first = await ask(client, "What is the capital of Portugal?")
        assert headers["x-gateway-cache"] == "miss"
        headers, again = await until_hit(client, "What is the capital of Portugal?")
        assert headers["x-gateway-cache"] == "hit"
        assert headers["x-gateway-cache-kind"] == "exact"
        assert headers["x-gateway-cache-similarity"] == "1.0000"
        assert again.choices[0].message.content == first.choices[0].message.content
        assert again.id != first.id
        event = await usage_of(stream, headers["x-request-id"])
        assert (event["cached"], event["cache"]) == (True, "exact")
        assert event["cost"] == 0.0
        assert event["saved_cost"] > 0

        headers, close = await ask(client, "Which city is the capital of Portugal?")
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "semantic")
        assert 0.8 < float(headers["x-gateway-cache-similarity"]) < 1.0
        assert close.choices[0].message.content == first.choices[0].message.content

        chunks = []
        async with client.chat.completions.with_streaming_response.create(
            model="mock-small",
            messages=[{"role": "user", "content": "What is the capital of Portugal?"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            assert response.headers["x-gateway-cache"] == "hit"
            assert response.headers["content-type"].startswith("text/event-stream")
            async for chunk in await response.parse():
                chunks.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == first.choices[0].message.content
        assert chunks[-1].usage is not None
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == first.choices[0].finish_reason


async def test_a_streamed_answer_is_stored_once_complete(tmp_path, encoder, cleanup, openai):
    async with gateway(tmp_path, cleanup, encoder) as (url, _):
        client = openai(url, "sk-team-a-one-0000")
        parts = []
        async for chunk in await client.chat.completions.create(
            model="mock-small", messages=[{"role": "user", "content": "Stream me a greeting"}], stream=True
        ):
            parts += [c.delta.content or "" for c in chunk.choices]
        headers, answer = await until_hit(client, "Stream me a greeting")
        assert headers["x-gateway-cache"] == "hit"
        assert answer.choices[0].message.content == "".join(parts)


async def test_tenants_never_share_answers_but_keys_of_one_team_do(tmp_path, encoder, cleanup, openai):
    async with gateway(tmp_path, cleanup, encoder) as (url, _):
        a1, a2, b1 = (openai(url, k) for k in KEYS)
        await ask(a1, "Name the largest ocean.")
        headers, _ = await until_hit(a2, "Name the largest ocean.")
        assert headers["x-gateway-cache"] == "hit"  # same team
        for prompt in ("Name the largest ocean.", "Name the largest ocean!", "Which ocean is the largest?"):
            # no-store: team b's own answers must not be what it finds next
            headers, _ = await ask(b1, prompt, extra_headers={"cache-control": "no-store"})
            assert headers["x-gateway-cache"] == "miss", prompt


async def test_cache_control_ttl_temperature_and_per_model_switch(tmp_path, encoder, cleanup, openai):
    async with gateway(tmp_path, cleanup, encoder) as (url, _):
        client = openai(url, "sk-team-a-one-0000")
        await ask(client, "What is 2 plus 2?")
        await until_hit(client, "What is 2 plus 2?")
        headers, _ = await ask(client, "What is 2 plus 2?", extra_headers={"cache-control": "no-cache"})
        assert headers["x-gateway-cache"] == "bypass"
        headers, _ = await ask(client, "What is 2 plus 2?", extra_headers={"cache-control": "max-age=0"})
        assert headers["x-gateway-cache"] == "bypass"

        await ask(client, "Do not keep this one.", extra_headers={"cache-control": "no-store"})
        await asyncio.sleep(0.3)
        headers, _ = await ask(client, "Do not keep this one.", extra_headers={"cache-control": "no-store"})
        assert headers["x-gateway-cache"] == "miss"

        await ask(client, "Keep this briefly.", extra_headers={"x-gateway-cache-ttl": "1"})
        headers, _ = await until_hit(client, "Keep this briefly.", extra_headers={"x-gateway-cache-ttl": "1"})
        assert headers["x-gateway-cache"] == "hit"
        end = time.monotonic() + 15
        while headers["x-gateway-cache"] == "hit" and time.monotonic() < end:
            await asyncio.sleep(0.2)
            headers, _ = await ask(client, "Keep this briefly.", extra_headers={"cache-control": "no-store"})
        assert headers["x-gateway-cache"] == "miss"

        for _ in range(2):
            headers, _ = await ask(client, "Be creative.", temperature=0.9)
            assert headers["x-gateway-cache"] == "bypass"
            headers, _ = await ask(client, "Not cached at all.", model="mock-nocache")
            assert headers["x-gateway-cache"] == "bypass"


async def test_a_malformed_ttl_header_is_a_clear_400(tmp_path, encoder, cleanup, openai):
    async with gateway(tmp_path, cleanup, encoder) as (url, _), httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer sk-team-a-one-0000", "x-gateway-cache-ttl": "soon"},
            json={"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_cache_header"


@pytest.mark.parametrize("down", ["cache service", "redis"])
async def test_the_gateway_answers_when_the_cache_is_down_and_counts_it(
    tmp_path, encoder, cleanup, openai, down
):
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    where = (
        {"cache_url": f"http://127.0.0.1:{closed_port()}"}
        if down == "cache service"
        else {"cache_redis": dead}
    )
    async with gateway(tmp_path, cleanup, encoder, **where) as (url, _):
        client = openai(url, "sk-team-a-one-0000")
        for _ in range(2):
            headers, answer = await ask(client, "Are you there?")
            assert headers["x-gateway-cache"] == "miss"
            assert answer.choices[0].message.content
        async with httpx.AsyncClient(base_url=url) as http:
            end = time.monotonic() + 10
            while True:
                metrics = (await http.get("/metrics")).text
                lookups = 'gateway_stage_outcomes_total{outcome="failed",stage="cache_lookup"} 2.0' in metrics
                stores = 'outcome="failed",stage="cache_store"' in metrics
                if (lookups and stores) or time.monotonic() > end:
                    break
                await asyncio.sleep(0.05)
        assert lookups, metrics
        assert stores, metrics
