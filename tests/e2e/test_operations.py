"""Probes, metrics, request ids and routing headers, and usage reaching analytics."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    MASTER_KEY,
    UPSTREAM_KEY,
    assert_openai_error,
    metric_value,
    sse_data,
    usage_events,
    user,
)
from tests.upstream import reply_words

CHAT = "/v1/chat/completions"
USAGE_DEADLINE_S = 20.0


async def test_health_and_readiness(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:  # probes need no key
        health = await anonymous.get("/healthz")
        ready = await anonymous.get("/readyz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert ready.json()["checks"] == {"models": "ok"}


async def test_metrics_count_each_request_exactly(http):
    labels = {"endpoint": "chat.completions", "model": "mock-small", "provider": "mock", "status": "200"}
    before = await http.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    for i in range(3):
        response = await http.post(CHAT, json={"model": "mock-small", "messages": user(f"count {i}")})
        assert response.status_code == 200
    after = (await http.get("/metrics")).text
    assert "gateway_requests_total" in after
    assert "gateway_request_duration_seconds_bucket" in after
    assert "process_resident_memory_bytes" in after
    assert (
        metric_value(after, "gateway_requests_total", **labels)
        - metric_value(before.text, "gateway_requests_total", **labels)
        == 3
    )


async def test_request_id_is_echoed_or_generated(http):
    body = {"model": "mock-small", "messages": user("ids")}
    given = f"client-{uuid.uuid4().hex}"
    echoed = await http.post(CHAT, json=body, headers={"x-request-id": given})
    assert echoed.headers["x-request-id"] == given

    first = await http.post(CHAT, json=body)
    second = await http.post(CHAT, json=body)
    generated = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[A-Za-z0-9._:\-]{8,128}", rid) for rid in generated)
    assert generated[0] != generated[1]

    # Not a sane id (spaces, too long): replaced, never reflected.
    for bad in ("has spaces in it", "x" * 200, "<script>"):
        replaced = await http.post(CHAT, json=body, headers={"x-request-id": bad})
        assert replaced.status_code == 200
        assert replaced.headers["x-request-id"] not in ("", bad)


@pytest.mark.parametrize(
    ("method", "path", "json", "status"),
    [
        ("POST", CHAT, {"model": "nope", "messages": user("x")}, 404),
        ("POST", CHAT, {"model": "mock-small"}, 400),
        ("GET", "/v1/not-a-route", None, 404),
        ("PUT", CHAT, None, 405),
        ("POST", CHAT, {"model": "up-error-500", "messages": user("x")}, 502),
    ],
)
async def test_errors_carry_the_request_id(http, method, path, json, status):
    rid = f"err-{uuid.uuid4().hex}"
    response = await http.request(method, path, json=json, headers={"x-request-id": rid})
    assert_openai_error(response, status)
    assert response.headers["x-request-id"] == rid


async def test_unauthenticated_errors_carry_the_request_id(gateway):
    rid = f"anon-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        response = await anonymous.post(CHAT, json={}, headers={"x-request-id": rid})
    assert_openai_error(response, 401)
    assert response.headers["x-request-id"] == rid


@pytest.mark.parametrize(
    ("path", "body", "provider"),
    [
        (CHAT, {"model": "mock-small", "messages": user("h")}, "mock"),
        (CHAT, {"model": "mock-small", "messages": user("h"), "stream": True}, "mock"),
        ("/v1/embeddings", {"model": "mock-small", "input": "h"}, "mock"),
        (CHAT, {"model": "up-chat", "messages": user("h")}, "openai"),
        (CHAT, {"model": "up-chat", "messages": user("h"), "stream": True}, "openai"),
        ("/v1/embeddings", {"model": "up-embed", "input": "h"}, "openai"),
    ],
    ids=["mock-chat", "mock-stream", "mock-embed", "up-chat", "up-stream", "up-embed"],
)
async def test_routing_headers_name_the_public_model_and_provider(http, path, body, provider):
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-model"] == body["model"]
    assert response.headers["x-gateway-provider"] == provider
    assert response.headers["x-request-id"]
    if body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"


async def summary_row(http: httpx.AsyncClient, model: str) -> dict[str, Any]:
    response = await http.get("/analytics/v1/usage/summary")
    assert response.status_code == 200, response.text
    rows = [r for r in response.json()["data"] if r["model"] == model]
    assert len(rows) <= 1, rows
    empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "errors": 0}
    return rows[0] if rows else {"model": model, "provider": "mock", **empty}


async def test_usage_reaches_analytics_with_exact_counts(http):
    """mock-usage is called by this test only, so the differences are exact."""
    model = "mock-usage"
    before = await summary_row(http, model)
    prompt = completion = 0
    requests = 0
    for i in range(4):
        response = await http.post(CHAT, json={"model": model, "messages": user(f"plain {i}")})
        usage = response.json()["usage"]
        prompt, completion, requests = (
            prompt + usage["prompt_tokens"],
            completion + usage["completion_tokens"],
            requests + 1,
        )
    for i in range(2):
        body = {
            "model": model,
            "messages": user(f"stream {i}"),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage = sse_data((await http.post(CHAT, json=body)).text)[-2]["usage"]
        prompt, completion, requests = (
            prompt + usage["prompt_tokens"],
            completion + usage["completion_tokens"],
            requests + 1,
        )
    # Streamed without usage: the same messages as "plain 0", so the same counts.
    same = await http.post(CHAT, json={"model": model, "messages": user("plain 0")})
    assert same.status_code == 200
    streamed = await http.post(CHAT, json={"model": model, "messages": user("plain 0"), "stream": True})
    assert sse_data(streamed.text)[-1] == "[DONE]"
    usage = same.json()["usage"]
    prompt += 2 * usage["prompt_tokens"]
    completion += 2 * usage["completion_tokens"]
    requests += 2
    # Refused by the provider (the mock answers n=1 only): counted as an error, no tokens.
    refused = await http.post(CHAT, json={"model": model, "messages": user("x"), "n": 2})
    assert refused.status_code == 400
    requests += 1

    deadline = time.monotonic() + USAGE_DEADLINE_S
    while True:
        after = await summary_row(http, model)
        if after["requests"] - before["requests"] >= requests or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    delta = {k: after[k] - before[k] for k in ("requests", "prompt_tokens", "completion_tokens", "errors")}
    assert delta == {
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "errors": 1,
    }
    assert after["provider"] == "mock"


async def test_usage_summary_needs_the_master_key(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert_openai_error(await anonymous.get("/analytics/v1/usage/summary"), 401)
        wrong = await anonymous.get(
            "/analytics/v1/usage/summary", headers={"authorization": "Bearer sk-not-the-key-123"}
        )
        assert_openai_error(wrong, 401)


async def test_upstream_usage_is_recorded_per_request(http, upstream):
    rid = f"usage-{uuid.uuid4().hex}"
    messages = user(rid)
    body = {"model": "up-chat", "messages": messages, "stream": True}  # the client did not ask for usage
    response = await http.post(CHAT, json=body, headers={"x-request-id": rid})
    assert response.status_code == 200

    [event] = await usage_events(http, rid)
    assert event["request_id"] == rid
    assert (event["model"], event["provider"], event["upstream_model"]) == (
        "up-chat",
        "openai",
        "upstream-chat-v1",
    )
    assert (event["status"], event["error_code"], event["stream"]) == (200, None, True)
    assert event["completion_tokens"] == len(reply_words(messages))
    assert event["prompt_tokens"] > 0
    assert event["ttft_ms"] is not None
    assert event["key_id"] == "master"


async def test_logs_carry_no_secrets(http, gateway):
    wrong_key = f"sk-wrong-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {wrong_key}"}
    ) as bad:
        assert (await bad.get("/v1/models")).status_code == 401
    assert (await http.post(CHAT, json={"model": "up-error-401", "messages": user("x")})).status_code == 502
    assert (await http.post(CHAT, json={"model": "up-chat", "messages": user("x")})).status_code == 200
    log = gateway.log_text()
    assert log  # it logged its start at least
    for secret in (MASTER_KEY, UPSTREAM_KEY, wrong_key):
        assert secret not in log
