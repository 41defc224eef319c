"""What the client sees when the provider fails: mapped statuses in OpenAI's error
shape, before a stream starts or in-band once it has."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.e2e.conftest import (
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    assert_openai_error,
    sse_data,
    usage_events,
    user,
)
from tests.upstream import RETRY_AFTER, reply_words

CHAT = "/v1/chat/completions"

FAILURES = [
    # public model, status the client gets, error type, error code
    ("up-error-500", 502, "api_error", "upstream_error"),
    ("up-error-503", 502, "api_error", "upstream_error"),
    ("up-error-401", 502, "api_error", "upstream_auth_failed"),
    ("up-error-429", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("up-error-400", 400, "invalid_request_error", None),
    ("up-slow", 504, "api_error", "upstream_timeout"),
    ("up-closed", 502, "api_error", "upstream_error"),
    ("up-non-json", 502, "api_error", "upstream_error"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("model", "status", "type_", "code"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_upstream_failure_is_mapped(http, model, status, type_, code, stream):
    request_id = f"fail-{uuid.uuid4().hex}"
    body = {"model": model, "messages": user("hello"), "stream": stream}
    response = await http.post(CHAT, json=body, headers={"x-request-id": request_id})

    error = assert_openai_error(response, status, type_=type_, code=code)
    assert response.headers["x-request-id"] == request_id
    everything = response.text + repr(response.headers.raw)
    assert UPSTREAM_KEY not in everything
    if status == 429:
        assert response.headers["retry-after"] == RETRY_AFTER
    if model == "up-error-400":
        assert "Invalid value for 'temperature'" in error["message"]  # the provider's own words
    if model == "up-error-401":
        assert UPSTREAM_KEY_ENV in error["message"]  # names the variable to fix, never its value
        assert response.headers["x-should-retry"] == "false"  # the official SDKs then do not retry
    [event] = await usage_events(http, request_id)
    assert (event["model"], event["status"], event["stream"]) == (model, status, stream)


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("up-error-500", 502, "upstream_error"),
        ("up-error-429", 429, "rate_limit_exceeded"),
        ("up-closed", 502, None),
    ],
)
async def test_embedding_failures_are_mapped(http, model, status, code):
    response = await http.post("/v1/embeddings", json={"model": model, "input": "hello"})
    assert_openai_error(response, status, code=code)


async def test_stream_that_breaks_midway_ends_with_an_in_band_error(http):
    request_id = f"break-{uuid.uuid4().hex}"
    messages = user("break me")
    body = {"model": "up-break", "messages": messages, "stream": True}
    response = await http.post(CHAT, json=body, headers={"x-request-id": request_id})

    assert response.status_code == 200  # headers were sent before the upstream failed
    *chunks, error_event, done = sse_data(response.text)
    assert done == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "".join(reply_words(messages)[:2])
    assert set(error_event) == {"error"}
    error = error_event["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")
    assert UPSTREAM_KEY not in response.text
    [event] = await usage_events(http, request_id)
    assert (event["status"], event["error_code"]) == (502, "upstream_error")


async def test_the_openai_client_raises_on_a_broken_stream(client):
    stream = await client.chat.completions.create(model="up-break", messages=user("break me"), stream=True)
    received = []

    async def drain() -> None:
        async for chunk in stream:
            received.append(chunk)

    async with stream:
        with pytest.raises(openai.APIError):
            await drain()
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices)


async def test_the_openai_client_sees_mapped_errors(client):
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="up-error-429", messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == RETRY_AFTER
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="up-error-400", messages=user("hi"))
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="up-error-500", messages=user("hi"))
    assert failed.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as timed_out:
        await client.chat.completions.create(model="up-slow", messages=user("hi"))
    assert timed_out.value.status_code == 504


async def test_an_upstream_redirect_is_not_followed(http, upstream):
    request_id = f"redirect-{uuid.uuid4().hex}"
    body = {"model": "up-redirect", "messages": user("hello")}
    response = await http.post(CHAT, json=body, headers={"x-request-id": request_id})
    error = assert_openai_error(response, 502, type_="api_error", code="upstream_error")
    assert "redirect" in error["message"]
    assert upstream.redirected == []  # the body (and the key) never went to the other location
    [event] = await usage_events(http, request_id)
    assert event["status"] == 502
