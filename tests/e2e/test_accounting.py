"""Every request is billed for what it used, however it ended."""

from __future__ import annotations

import asyncio
import socket
import uuid
from urllib.parse import urlsplit

from tests.e2e.conftest import MASTER_KEY, sse_data, usage_events, user
from tests.upstream import prompt_tokens, reply_words

DEADLINE_S = 20.0


def marker() -> str:
    return f"acct-{uuid.uuid4().hex}"


async def test_a_stream_the_client_abandons_is_billed_for_what_was_relayed(http, upstream):
    """Through the OpenAI adapter the provider's usage chunk never comes when the client
    hangs up; the gateway then counts the prompt it sent and the chunks it relayed."""
    name = marker()
    gate = upstream.gate(name)
    body = {"model": "up-gated", "messages": user(name), "stream": True}
    try:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": name}
        ) as res:
            assert res.status_code == 200

            async def first_content() -> None:
                async for line in res.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        return

            await asyncio.wait_for(first_content(), DEADLINE_S)
        [event] = await usage_events(http, name)
    finally:
        gate.set()
    assert (event["status"], event["error_code"]) == (499, "client_closed_request")
    assert event["estimated"] is True
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] >= 1


async def test_a_complete_stream_without_provider_usage_is_estimated(http):
    name = marker()
    body = {"model": "up-no-usage", "messages": user(name), "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": name})
    assert response.status_code == 200
    [event] = await usage_events(http, name)
    assert (event["status"], event["estimated"]) == (200, True)
    assert event["completion_tokens"] == len(reply_words(user(name)))
    assert event["prompt_tokens"] > 0


async def test_a_complete_stream_with_provider_usage_is_exact(http):
    name = marker()
    body = {"model": "up-chat", "messages": user(name), "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": name})
    assert response.status_code == 200
    [event] = await usage_events(http, name)
    assert event["estimated"] is False
    assert event["prompt_tokens"] == prompt_tokens(user(name))


async def test_an_error_event_after_the_first_chunk_is_relayed_in_band_and_recorded(http, upstream):
    name = marker()
    gate = upstream.gate(name)
    body = {"model": "up-error-event-gated", "messages": user(name), "stream": True}
    lines: list[str] = []
    try:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": name}
        ) as res:
            assert res.status_code == 200  # the headers were sent before the error
            async for line in res.aiter_lines():
                lines.append(line)
                if '"content":"' in line and '"content":""' not in line:
                    gate.set()
    finally:
        gate.set()
    events = sse_data("\n".join(lines))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "upstream_error"
    assert "overloaded" in events[-2]["error"]["message"]
    [event] = await usage_events(http, name)
    assert (event["status"], event["error_code"]) == (502, "upstream_error")


async def test_a_client_that_hangs_up_while_sending_its_body_is_recorded_as_499(gateway, http):
    name = marker()
    url = urlsplit(gateway.url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.hostname}\r\n"
        f"authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n"
        f"x-request-id: {name}\r\ncontent-length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head + b'{"model": "mock-small", "mess')
    [event] = await usage_events(http, name)
    assert (event["status"], event["error_code"]) == (499, "client_closed_request")
