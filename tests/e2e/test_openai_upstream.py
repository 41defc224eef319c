"""Through the gateway to a local server speaking OpenAI's wire format: what goes
upstream, and how streams come back."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from openai import AsyncOpenAI

from tests.e2e.conftest import MASTER_KEY, UPSTREAM_KEY, metric_value, sse_data, usage_events, user
from tests.upstream import MockUpstream, Received, reply_words

FIRST_CHUNK_DEADLINE_S = 20.0  # only for waiting; a buffering gateway never delivers before the gate opens


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def sent_upstream(upstream: MockUpstream, mark: str) -> Received:
    """The one request the upstream received that carries `mark`."""
    found = [r for r in list(upstream.requests) if mark.encode() in orjson.dumps(r.body)]
    assert len(found) == 1, found
    return found[0]


def passthrough_body(mark: str) -> dict[str, Any]:
    return {
        "model": "up-chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": mark}]},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        "seed": 42,
        "logprobs": True,
        "top_logprobs": 3,
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "logit_bias": {"50256": -100},
        "stop": ["\n\n"],
        "user": "user-123",
        "metadata": {"team": "e2e"},
        "x_vendor_extension": {"nested": [1, 2.5, None, True, "é", {"deep": []}]},
    }


def assert_upstream_auth(received: Received) -> None:
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received.headers["content-type"].startswith("application/json")
    assert not any(MASTER_KEY in v for v in received.headers.values())


async def test_fields_the_gateway_does_not_interpret_reach_upstream_untouched(http, upstream):
    mark = marker()
    body = passthrough_body(mark)
    response = await http.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-model"] == "up-chat"
    assert response.headers["x-gateway-provider"] == "openai"
    received = sent_upstream(upstream, mark)
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.body == {**body, "model": "upstream-chat-v1"}
    assert_upstream_auth(received)
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "".join(reply_words(body["messages"]))
    assert answer["system_fingerprint"] == "fp_upstream"  # fields the gateway does not know come back too


async def test_streaming_asks_upstream_for_usage_and_keeps_other_fields(http, upstream):
    mark = marker()
    body = {
        **passthrough_body(mark),
        "stream": True,
        "stream_options": {"include_usage": False, "x_vendor_option": 1},
    }
    response = await http.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    received = sent_upstream(upstream, mark)
    # The gateway always asks for usage (to record it); everything else is the client's.
    expected = {**body, "model": "upstream-chat-v1"}
    expected["stream_options"] = {"include_usage": True, "x_vendor_option": 1}
    assert received.body == expected
    assert_upstream_auth(received)

    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    # The client did not ask for usage: the usage-only chunk is dropped.
    assert all(c["choices"] for c in chunks)
    assert all(c.get("usage") is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "".join(
        reply_words(body["messages"])
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_without_include_usage_has_no_usage_key(http):
    """OpenAI sends a `usage` key only to clients that set include_usage; the
    gateway asked upstream for it on its own behalf, so it must not show."""
    body = {"model": "up-chat", "messages": user(marker()), "stream": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    chunks = sse_data(response.text)[:-1]
    assert [c for c in chunks if "usage" in c] == []


async def test_stream_with_include_usage_relays_the_upstream_usage_chunk(http, upstream):
    messages = user(marker())
    body = {
        "model": "up-chat",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await http.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    *chunks, done = sse_data(response.text)
    assert done == "[DONE]"
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert usage_chunks == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    words = reply_words(messages)
    assert chunks[-1]["usage"]["completion_tokens"] == len(words)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "".join(words)


async def test_upstream_that_always_sends_usage_inline(http, upstream):
    """Some hosts put usage on the finishing chunk whether asked or not."""
    messages = user(marker())
    words = reply_words(messages)
    plain = {"model": "up-usage-inline", "messages": messages, "stream": True}
    response = await http.post("/v1/chat/completions", json=plain)
    assert response.status_code == 200, response.text
    chunks = sse_data(response.text)[:-1]
    assert all("usage" not in c for c in chunks)  # stripped: the client did not ask
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "".join(words)

    asked = {**plain, "stream_options": {"include_usage": True}}
    response = await http.post("/v1/chat/completions", json=asked)
    chunks = sse_data(response.text)[:-1]
    with_usage = [c for c in chunks if c.get("usage")]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == len(words)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_chunks_are_forwarded_as_they_arrive(http, upstream):
    """The upstream holds the rest of the answer until the test has the first chunk:
    a gateway that buffered would never deliver it, whatever the machine's speed."""
    name = marker()
    gate = upstream.gate(name)
    messages = user(name)
    words = reply_words(messages)
    body = {"model": "up-gated", "messages": messages, "stream": True}

    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()

        async def first_content() -> str:
            async for line in lines:
                if line.startswith("data: ") and line != "data: [DONE]":
                    content = orjson.loads(line[6:])["choices"][0]["delta"].get("content")
                    if content:
                        return content
            raise AssertionError("the stream ended before any content")

        try:
            first = await asyncio.wait_for(first_content(), FIRST_CHUNK_DEADLINE_S)
        finally:
            gate_was_open = gate.is_set()
            gate.set()
        assert not gate_was_open
        assert first == words[0]
        rest = "\n".join([line async for line in lines])

    events = sse_data(rest)
    assert events[-1] == "[DONE]"
    assert first + "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1]) == "".join(words)


async def test_the_openai_client_gets_each_chunk_before_the_next_exists(client: AsyncOpenAI, upstream):
    name = marker()
    gate = upstream.gate(name)
    stream = await client.chat.completions.create(model="up-gated", messages=user(name), stream=True)
    async with stream:
        received = []
        try:
            async with asyncio.timeout(FIRST_CHUNK_DEADLINE_S):
                async for chunk in stream:
                    received.append(chunk)
                    if chunk.choices and chunk.choices[0].delta.content:
                        break
        finally:
            gate_was_open = gate.is_set()
            gate.set()
        assert not gate_was_open
        received += [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "".join(reply_words(user(name)))


async def test_failed_deployment_falls_over_to_the_next(http, upstream):
    before = (await http.get("/metrics")).text
    mark = marker()
    response = await http.post("/v1/chat/completions", json={"model": "up-fallback", "messages": user(mark)})

    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-model"] == "up-fallback"
    assert sent_upstream(upstream, mark).body["model"] == "fallback-v1"
    after = (await http.get("/metrics")).text
    labels = {"provider": "openai", "code": "upstream_error"}
    failed = metric_value(after, "gateway_upstream_errors_total", **labels) - metric_value(
        before, "gateway_upstream_errors_total", **labels
    )
    # The closed deployment was tried first, then again twice (its default `retries: 2`).
    assert failed == 3
    tries = [t.split(";") for t in response.headers["x-gateway-attempts"].split(", ")]
    assert [(t[0], t[1]) for t in tries] == [("up-fallback/0", "status=502")] * 3 + [
        ("up-fallback/1", "status=200")
    ]


async def test_streaming_falls_over_too(http, upstream):
    mark = marker()
    body = {"model": "up-fallback", "messages": user(mark), "stream": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert sse_data(response.text)[-1] == "[DONE]"
    assert sent_upstream(upstream, mark).body["model"] == "fallback-v1"


async def test_deployment_without_a_key_sends_no_authorization(http, upstream):
    mark = marker()
    response = await http.post("/v1/chat/completions", json={"model": "up-keyless", "messages": user(mark)})
    assert response.status_code == 200, response.text
    received = sent_upstream(upstream, mark)
    assert received.body["model"] == "keyless-v1"
    assert "authorization" not in received.headers


async def test_embeddings_pass_through(http, upstream):
    mark = marker()
    body = {"model": "up-embed", "input": [mark, "two"], "encoding_format": "float", "user": "u-1"}
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-model"] == "up-embed"
    received = sent_upstream(upstream, mark)
    assert received.path == "/v1/embeddings"
    assert received.body == {**body, "model": "upstream-embed-v1"}
    assert_upstream_auth(received)
    assert [d["index"] for d in response.json()["data"]] == [0, 1]


async def test_client_disconnect_closes_the_upstream_stream(http, upstream):
    """A client that hangs up mid-stream must not leave the provider generating."""
    name = marker()
    gate = upstream.gate(name)
    body = {"model": "up-gated", "messages": user(name), "stream": True}
    try:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": name}
        ) as res:
            assert res.status_code == 200

            async def first_data() -> None:
                async for line in res.aiter_lines():
                    if line.startswith("data: "):
                        return

            await asyncio.wait_for(first_data(), FIRST_CHUNK_DEADLINE_S)
        # Leaving the block mid-body closes the connection.
        deadline = time.monotonic() + FIRST_CHUNK_DEADLINE_S
        while name not in upstream.abandoned and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert name in upstream.abandoned
        [event] = await usage_events(http, name)
        assert (event["status"], event["error_code"]) == (499, "client_closed_request")
    finally:
        gate.set()
