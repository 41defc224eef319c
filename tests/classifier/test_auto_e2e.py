"""`model: "auto"` end to end, with the official openai client: the embedded gateway
(classifier in-process), and a distributed router whose classifier is down."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from tests.classifier.conftest import ROUTED_CONFIG, run_service
from tests.conftest import MASTER_KEY, REDIS_URL
from tests.e2e.conftest import assert_openai_error, metric_value, usage_events

CODE = "Write a Python function that checks whether a string is a palindrome."
HELLO = "hello!"
UNCLEAR = (
    "Which of the following was a cause of the 2008 financial crisis?\n"
    "A. Subprime lending\nB. Low oil prices\nC. Rising savings\nD. Tariffs\nAnswer:"
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def client(routed_gateway):
    openai = AsyncOpenAI(base_url=f"{routed_gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)
    yield openai
    await openai.close()


@pytest.fixture
async def http(routed_gateway):
    async with httpx.AsyncClient(
        base_url=routed_gateway.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ) as raw:
        yield raw


async def test_auto_picks_a_model_and_says_why(client):
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user(CODE))
    completion = raw.parse()
    assert raw.headers["x-gateway-model"] == "strong"
    reason = raw.headers["x-route-reason"]
    assert reason.startswith("auto: category=code; difficulty=")
    assert "band=" in reason
    assert completion.choices[0].message.content

    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user(HELLO))
    assert raw.headers["x-gateway-model"] == "cheap"
    assert "category=general" in raw.headers["x-route-reason"]


async def test_auto_streams(client):
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=user(CODE), stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-gateway-model"] == "strong"
    assert "category=code" in raw.headers["x-route-reason"]
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None


def access_line(gateway, request_id: str) -> dict:
    """The usage event of one request, as the access log wrote it."""
    for line in gateway.log_text().splitlines():
        if request_id in line and line.startswith("{"):
            entry = orjson.loads(line)
            if entry.get("request_id") == request_id and "route_reason" in entry:
                return entry
    raise AssertionError(f"no access line for {request_id}")


async def test_the_usage_event_records_the_chosen_model_and_the_reason(routed_gateway, client, http):
    request_id = f"auto-{uuid.uuid4().hex[:12]}"
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=user(CODE), extra_headers={"x-request-id": request_id}
    )
    [stored] = await usage_events(http, request_id)  # stored by analytics, as every request
    assert stored["model"] == "strong"
    deadline = time.monotonic() + 20
    while True:
        try:
            event = access_line(routed_gateway, request_id)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert event["model"] == "strong"
    assert event["route_reason"] == raw.headers["x-route-reason"]
    assert event["cost"] > 0  # priced at the chosen model's price


async def test_the_routing_aliases_are_listed_as_models(client):
    names = {m.id for m in (await client.models.list()).data}
    assert {"auto", "auto-best", "cheap", "strong"} <= names


async def test_auto_cannot_embed(http):
    response = await http.post("/v1/embeddings", json={"model": "auto", "input": "hi"})
    assert_openai_error(response, 400, param="model")


async def test_once_the_model_is_loaded_unclear_prompts_are_decided_by_it(client, http):
    deadline = time.monotonic() + 120
    while True:  # the router probes its helpers every few seconds
        text = (await http.get("/metrics")).text
        if metric_value(text, "gateway_helper_ready", service="classifier") == 1:
            break
        assert time.monotonic() < deadline, "the classifier's model did not load"
        await asyncio.sleep(0.2)
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user(UNCLEAR))
    assert raw.headers["x-route-reason"].endswith("method=model")
    assert "category=general" in raw.headers["x-route-reason"]
    text = (await http.get("/metrics")).text
    assert metric_value(text, "gateway_auto_routes_total", alias="auto", method="model") >= 1


@pytest.fixture(scope="module")
def router_without_classifier(tmp_path_factory):
    """The router on its own (distributed mode) with CLASSIFIER_URL on a port nobody serves."""
    import socket

    stream = f"test:usage:{uuid.uuid4().hex[:12]}"
    config = ROUTED_CONFIG.replace("usage:\n", f'usage:\n  stream: "{stream}"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        env = {"REDIS_URL": REDIS_URL, "CLASSIFIER_URL": f"http://127.0.0.1:{s.getsockname()[1]}"}
        with run_service(tmp_path_factory.mktemp("router"), "router", config, env=env) as process:
            yield process
    import redis

    redis.Redis.from_url(REDIS_URL).delete(stream)


@pytest.mark.redis
async def test_with_the_classifier_down_auto_still_routes(router_without_classifier):
    openai = AsyncOpenAI(
        base_url=f"{router_without_classifier.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30
    )
    try:
        for text, model in ((CODE, "strong"), (HELLO, "cheap")):
            raw = await openai.chat.completions.with_raw_response.create(model="auto", messages=user(text))
            assert raw.headers["x-gateway-model"] == model
            assert raw.headers["x-route-reason"].endswith("method=rules")
        chunks = [
            c
            async for c in await openai.chat.completions.create(
                model="auto", messages=user(CODE), stream=True
            )
        ]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        await openai.close()
    async with httpx.AsyncClient(
        base_url=router_without_classifier.url, headers={"authorization": f"Bearer {MASTER_KEY}"}
    ) as http:
        text = (await http.get("/metrics")).text
    assert metric_value(text, "gateway_stage_outcomes_total", stage="classifier", outcome="failed") >= 1
