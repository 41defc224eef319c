"""The gateway's own credentials never come back, even when an upstream echoes them."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import UPSTREAM_KEY, assert_openai_error, sse_data, usage_events, user

ECHOING = [("up-echo-400", 400), ("up-echo-429", 429), ("up-echo-500", 502)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("model", "status"), ECHOING, ids=[m for m, _ in ECHOING])
async def test_an_echoed_provider_key_is_redacted_from_the_answer_and_the_log(
    gateway, http, model, status, stream
):
    name = f"echo-{uuid.uuid4().hex}"
    body = {"model": model, "messages": user(name), "stream": stream}
    response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": name})
    error = assert_openai_error(response, status)
    assert "you sent authorization" in error["message"]  # the provider's words are kept...
    assert "[redacted]" in error["message"]  # ...without the key
    assert UPSTREAM_KEY not in response.text
    assert UPSTREAM_KEY[:12] not in response.text
    await usage_events(http, name)  # the request is settled, so its log lines are written
    assert UPSTREAM_KEY not in gateway.log_text()


async def test_nothing_secret_in_an_in_band_stream_error(http, upstream):
    name = f"echo-{uuid.uuid4().hex}"
    gate = upstream.gate(name)
    body = {"model": "up-error-event-gated", "messages": user(name), "stream": True}
    lines: list[str] = []
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as res:
            async for line in res.aiter_lines():
                lines.append(line)
                if '"content":"' in line and '"content":""' not in line:
                    gate.set()  # the error comes after the first chunk reached the client
    finally:
        gate.set()
    text = "\n".join(lines)
    assert UPSTREAM_KEY not in text
    assert sse_data(text)[-1] == "[DONE]"
