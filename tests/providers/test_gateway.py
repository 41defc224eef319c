"""Every provider behind the gateway, with the official openai client in front (and the
anthropic client on the Messages ingress): answers, streams, tool calls, usage with its
details, embeddings, refused parameters, and what the client sees for each fault."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import sse_data, usage_events
from tests.providers.gateway import FAULTS, MASTER_KEY, PROVIDERS
from tests.providers.mocks import CACHED, KEY, THOUGHTS

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def client(gateway):
    c = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)
    yield c
    await c.close()


@pytest.fixture
async def http(gateway):
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ) as c:
        yield c


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_plain_and_streamed_answers_with_exact_usage(client, provider):
    messages = [{"role": "system", "content": "be brief"}, *user(f"hello {uuid.uuid4().hex}")]
    reply = await client.chat.completions.create(model=f"p-{provider}", messages=messages, max_tokens=50)
    text = reply.choices[0].message.content
    assert text
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.completion_tokens >= len(text.split())
    if provider != "azure":  # the OpenAI-format mock reports no details
        assert usage.prompt_tokens_details.cached_tokens == CACHED
    if provider == "gemini":
        assert usage.completion_tokens_details.reasoning_tokens == THOUGHTS
    stream = await client.chat.completions.create(
        model=f"p-{provider}",
        messages=messages,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == usage.prompt_tokens


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "azure"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_tool_calls_come_back_in_openai_shape(client, provider, stream):
    messages = user("what is the weather in Paris?")
    kwargs = {"model": f"p-{provider}", "messages": messages, "tools": TOOLS, "max_tokens": 50}
    if not stream:
        reply = await client.chat.completions.create(**kwargs)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        name, arguments, call_id = call.function.name, call.function.arguments, call.id
    else:
        chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
        calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
        name = "".join(t.function.name or "" for t in calls)
        arguments = "".join(t.function.arguments or "" for t in calls)
        call_id = next(t.id for t in calls if t.id)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "tool_calls"
        ]
    assert name == "get_weather"
    assert arguments.replace(" ", "") == '{"city":"Paris"}'
    # The result goes back the OpenAI way and reaches the provider in its own form.
    follow = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
    ]
    again = await client.chat.completions.create(
        model=f"p-{provider}", messages=follow, tools=TOOLS, max_tokens=50
    )
    assert again.choices[0].message.content


@pytest.mark.parametrize("provider", ["gemini", "cohere", "azure"])
async def test_embeddings(client, provider):
    reply = await client.embeddings.create(model=f"p-{provider}-embed", input=["a b c", "d"], dimensions=4)
    assert [len(d.embedding) for d in reply.data] == [4, 4]
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("model", "param"),
    [
        ("p-anthropic", "response_format"),
        ("p-bedrock", "seed"),
        ("p-cohere", "logprobs"),
        ("p-gemini", "logit_bias"),
    ],
)
async def test_a_parameter_the_provider_cannot_honour_is_a_400_naming_it(http, model, param):
    value = {"response_format": {"type": "json_object"}, "seed": 1, "logprobs": True, "logit_bias": {"1": 1}}[
        param
    ]
    response = await http.post(
        "/v1/chat/completions", json={"model": model, "messages": user("hi"), param: value}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# What the client sees for each fault, and how many tries were made (retries: 1).
# A 429 is tried again after its Retry-After (3 s, under resilience.max_retry_after_s);
# a stream reset after its first text has reached the client is not tried again: it
# ends with an in-band error event.
EXPECTED = {
    "error-500": (502, "upstream_error", 2),
    "error-429": (429, "rate_limit_exceeded", 2),
    "slow-first-byte": (504, "upstream_timeout", 2),
    "reset-mid-stream": (200, "upstream_error", 1),
    "malformed-json": (502, "upstream_error", 1),
    "wrong-content-type": (502, "upstream_error", 2),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_faults_are_mapped_and_the_tries_reported(http, provider, fault):
    if provider == "azure" and fault != "error-500":
        pytest.skip("the OpenAI-format faults are covered by tests/e2e")
    request_id = f"fault-{uuid.uuid4().hex}"
    body = {
        "model": f"p-{provider}-{fault}",
        "messages": user("hi"),
        "stream": fault in ("reset-mid-stream", "wrong-content-type"),
    }
    if provider == "azure":
        body["model"] = "p-azure-error-500"
    response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
    status, code, tries = EXPECTED[fault]
    if fault == "malformed-json" and body["stream"] is False:
        tries = 1  # a 200 with a broken body is not retried: the upstream did answer
    assert response.status_code == status, response.text
    if status == 200:
        *_, error, done = sse_data(response.text)
        assert (error["error"]["code"], done) == (code, "[DONE]")
        status = 502  # what the usage event records
    else:
        assert response.json()["error"]["code"] == code
    assert KEY not in response.text
    attempts = response.headers["x-gateway-attempts"].split(", ")
    assert len(attempts) == tries, attempts
    if status == 429:
        assert response.headers["retry-after"] == "3"
    [event] = await usage_events(http, request_id)
    assert event["status"] == status


async def test_a_failing_deployment_falls_over_to_another_provider(client):
    raw = await client.chat.completions.with_raw_response.create(model="p-failover", messages=user("hi"))
    tries = raw.headers["x-gateway-attempts"].split(", ")
    assert [t.split(";")[:2] for t in tries] == [["p-failover/0", "status=502"]] * 2 + [
        ["p-failover/1", "status=200"]
    ]
    assert raw.headers["x-gateway-provider"] == "gemini"


async def test_a_model_that_fails_goes_to_its_fallback_model(client):
    raw = await client.chat.completions.with_raw_response.create(model="p-fallback", messages=user("hi"))
    assert raw.headers["x-gateway-model"] == "p-cohere"
    assert raw.headers["x-route-reason"] == "fallback from p-fallback"


async def test_a_prompt_too_long_goes_to_the_context_fallback(client):
    raw = await client.chat.completions.with_raw_response.create(model="p-small-context", messages=user("hi"))
    assert raw.headers["x-gateway-model"] == "p-gemini"
    assert [t.split(";")[1] for t in raw.headers["x-gateway-attempts"].split(", ")] == [
        "status=400",
        "status=200",
    ]


async def test_anthropic_sdk_reaches_any_model_through_the_messages_ingress(gateway):
    client = anthropic.AsyncAnthropic(api_key=MASTER_KEY, base_url=gateway.url, max_retries=0)
    messages = [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}]
    for model in ("p-gemini", "p-azure", "p-anthropic"):
        message = await client.messages.create(
            model=model, max_tokens=64, messages=messages, system="be brief"
        )
        assert message.content[0].text
        assert message.stop_reason == "end_turn"
        async with client.messages.stream(
            model=model, max_tokens=64, messages=messages, system="be brief"
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].text == message.content[0].text
        assert final.usage.output_tokens == message.usage.output_tokens
    tool = {"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}
    ask = [{"role": "user", "content": "weather in Paris?"}]
    async with client.messages.stream(model="p-cohere", max_tokens=64, messages=ask, tools=[tool]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].input == {"city": "Paris"}
    counted = await client.messages.count_tokens(model="p-gemini", messages=messages)
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-model", max_tokens=8, messages=messages)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model="p-gemini", max_tokens=8, messages=messages, extra_body={"temperature": 1.5}
        )
    assert bad.value.body["type"] == "error"
    await client.close()


async def test_messages_ingress_records_usage_like_the_openai_path(http):
    request_id = f"msg-{uuid.uuid4().hex}"
    body = {"model": "p-bedrock", "max_tokens": 32, "messages": user("hi"), "stream": True}
    response = await http.post("/v1/messages", json=body, headers={"x-request-id": request_id})
    assert response.status_code == 200
    events = [e for e in sse_data(response.text)]
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "message_stop"
    [event] = await usage_events(http, request_id)
    assert event["endpoint"] == "messages"
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] > 0
    assert event["status"] == 200


async def test_deployments_health_shows_circuits_to_admins_only(http, gateway):
    response = await http.get("/v1/deployments/health")
    assert response.status_code == 200
    rows = {r["deployment"]: r for r in response.json()["data"]}
    assert rows["p-gemini/0"]["state"] in ("closed", "half_open", "open")
    assert rows["p-gemini/0"]["provider"] == "gemini"
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert (await anonymous.get("/v1/deployments/health")).status_code == 401
    metrics = (await http.get("/metrics")).text
    assert 'gateway_deployment_circuit_state{deployment="p-gemini/0",provider="gemini"}' in metrics
