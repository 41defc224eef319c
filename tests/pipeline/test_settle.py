"""Settle runs exactly once per model request, whatever way it ends; a stage that fails is
recorded and answered in OpenAI's format; optional stages that fail are skipped and counted.

No sleeps decide anything here: streams are held open by gates on the upstream, and each
test waits for the condition it needs."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from services.kernel.errors import RateLimited
from services.kernel.lifecycle import Lifecycle
from services.router.app import Stages
from services.router.exchange import Exchange
from tests.e2e.conftest import assert_openai_error, metric_value, sse_data, user
from tests.pipeline.conftest import serve_router

CHAT = "/v1/chat/completions"
DEADLINE_S = 20.0


def rid() -> str:
    return f"settle-{uuid.uuid4().hex}"


async def first_line(response: httpx.Response, needle: str) -> None:
    async def scan() -> None:
        async for line in response.aiter_lines():
            if needle in line:
                return

    await asyncio.wait_for(scan(), DEADLINE_S)


async def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


@pytest.fixture
async def router(tmp_path, upstream):
    async with serve_router(tmp_path, upstream) as r:
        yield r


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "up-chat", "messages": user("hi")}, 200, None),
        ({"model": "up-chat", "messages": user("hi"), "stream": True}, 200, None),
        ({"model": "mock-small", "messages": user("hi"), "stream": True}, 200, None),
        ({"model": "up-chat", "messages": "not a list"}, 400, "invalid_value"),
        ({"model": "no-such-model", "messages": user("hi")}, 404, "model_not_found"),
        ({"model": "up-error-500", "messages": user("hi")}, 502, "upstream_error"),
        ({"model": "up-error-500", "messages": user("hi"), "stream": True}, 502, "upstream_error"),
    ],
    ids=[
        "plain",
        "stream",
        "mock-stream",
        "invalid",
        "unknown-model",
        "upstream-error",
        "upstream-error-stream",
    ],
)
async def test_each_outcome_is_recorded_once(router, body, status, code):
    request_id = rid()
    async with router.client() as http:
        response = await http.post(CHAT, json=body, headers={"x-request-id": request_id})
    assert response.status_code == status
    [event] = await router.usage.of(request_id)
    assert (event["status"], event["error_code"]) == (status, code)


async def test_settled_requests_show_in_the_upstream_and_cost_metrics(router):
    """Counted as plain numbers on the event loop, exposed under the usual names at scrape."""
    async with router.client() as http:
        plain = await http.post(CHAT, json={"model": "up-chat", "messages": user("hi")})
        stream = await http.post(CHAT, json={"model": "up-chat", "messages": user("hi"), "stream": True})
        mock = await http.post(CHAT, json={"model": "mock-small", "messages": user("hi")})
        for response in (plain, stream, mock):
            assert response.status_code == 200
        page = (await http.get("/metrics")).text
    up = {"provider": "openai", "deployment": "up-chat/0"}
    assert metric_value(page, "gateway_upstream_attempts_total", status="200", **up) >= 2
    assert metric_value(page, "gateway_upstream_request_duration_seconds_count", outcome="ok", **up) >= 2
    assert metric_value(page, "gateway_upstream_request_duration_seconds_bucket", le="+Inf", **up) >= 2
    assert metric_value(page, "gateway_deployment_time_to_first_token_seconds_count", **up) >= 1
    assert metric_value(page, "gateway_cost_total", model="up-chat", provider="openai") > 0
    assert metric_value(page, "gateway_unpriced_requests_total", model="mock-small") >= 1
    assert "# TYPE gateway_upstream_attempts_total counter" in page


async def test_unauthenticated_requests_are_counted_but_leave_no_usage_record(router):
    request_id = rid()
    async with httpx.AsyncClient(base_url=router.url) as http:
        response = await http.post(
            CHAT, json={"model": "up-chat", "messages": user("hi")}, headers={"x-request-id": request_id}
        )
        assert_openai_error(response, 401, code="missing_api_key")
        page = (await http.get("/metrics")).text
    assert metric_value(page, "gateway_requests_total", status="401") == 1
    assert await router.usage.of(request_id, settle_s=0.2) == []


@pytest.mark.parametrize(
    "model", ["up-gated-start", "up-gated"], ids=["before-first-byte", "after-first-byte"]
)
async def test_a_client_gone_mid_stream_is_recorded_once_as_499(router, upstream, model):
    request_id = rid()
    gate = upstream.gate(request_id)
    body = {"model": model, "messages": user(request_id), "stream": True}
    async with router.client() as http:
        if model == "up-gated":
            async with http.stream("POST", CHAT, json=body, headers={"x-request-id": request_id}) as res:
                assert res.status_code == 200
                await first_line(res, '"content":"')
        else:
            # The gateway holds the headers until the first text (so that it can still fall
            # over); the client gives up before any byte arrives.
            call = asyncio.create_task(http.post(CHAT, json=body, headers={"x-request-id": request_id}))
            await wait_for(
                lambda: any(request_id.encode() in orjson.dumps(r.body) for r in list(upstream.requests))
            )
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    await wait_for(lambda: request_id in upstream.abandoned)  # the upstream call was closed too
    gate.set()
    [event] = await router.usage.of(request_id)
    assert (event["status"], event["error_code"], event["estimated"]) == (499, "client_closed_request", True)


async def test_a_stream_still_running_after_the_drain_ends_with_an_error_event_and_done(tmp_path, upstream):
    lifecycle = Lifecycle(drain_s=0.05)
    async with serve_router(tmp_path, upstream, lifecycle=lifecycle) as router:
        request_id = rid()
        body = {"model": "up-gated", "messages": user(request_id), "stream": True}
        lines: list[str] = []
        drained = None
        async with (
            router.client() as http,
            http.stream("POST", CHAT, json=body, headers={"x-request-id": request_id}) as res,
        ):
            async for line in res.aiter_lines():
                lines.append(line)
                if drained is None and '"content":"' in line and '"content":""' not in line:
                    drained = asyncio.create_task(lifecycle.drain())  # what the server does on SIGTERM
        assert drained is not None
        await drained
        events = sse_data("\n".join(lines))
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "gateway_shutdown"
        [event] = await router.usage.of(request_id)
        assert (event["status"], event["error_code"], event["estimated"]) == (503, "gateway_shutdown", True)
        assert event["completion_tokens"] >= 1


async def test_a_request_the_server_gives_up_on_at_shutdown_is_answered_and_recorded_once(tmp_path, upstream):
    async with serve_router(tmp_path, upstream, graceful_s=0.2) as router:
        request_id = rid()
        async with router.client() as http:
            call = asyncio.create_task(
                http.post(
                    CHAT,
                    json={"model": "up-slow", "messages": user("hi")},
                    headers={"x-request-id": request_id},
                )
            )
            await wait_for(
                lambda: any(r.body and r.body.get("model") == "slow" for r in list(upstream.requests))
            )
            router.server.should_exit = True  # uvicorn cancels what is still running after 0.2 s
            response = await call
        assert_openai_error(response, 503, code="gateway_shutdown")
    [event] = await router.usage.of(request_id)
    assert (event["status"], event["error_code"]) == (503, "gateway_shutdown")


class Faulty:
    """An admission stage with a bug for prompts saying "boom", that refuses "limit"."""

    async def admit(self, ex: Exchange) -> None:
        text = ex.body["messages"][-1]["content"]
        if text == "boom":
            raise RuntimeError("boom")
        if text == "limit":
            raise RateLimited("over the limit", headers={"retry-after": "3"})

    async def settle(self, ex: Exchange) -> None:
        return None


async def test_a_stage_that_raises_is_a_recorded_openai_error_not_a_bare_500(tmp_path, upstream):
    async with (
        serve_router(tmp_path, upstream, stages=Stages(admission=Faulty())) as router,
        router.client() as http,
    ):
        request_id = rid()
        response = await http.post(
            CHAT, json={"model": "up-chat", "messages": user("boom")}, headers={"x-request-id": request_id}
        )
        error = assert_openai_error(response, 500, code="internal_error")
        assert "boom" not in error["message"]
        assert response.headers["x-request-id"] == request_id
        [event] = await router.usage.of(request_id)
        assert (event["status"], event["error_code"]) == (500, "internal_error")
        refused = await http.post(CHAT, json={"model": "up-chat", "messages": user("limit")})
        assert_openai_error(refused, 429, code="rate_limit_exceeded")
        assert refused.headers["retry-after"] == "3"


class Reservations:
    """Counts admit and settle calls: every admitted request is reconciled once."""

    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.settled: list[tuple[str, int]] = []

    async def admit(self, ex: Exchange) -> str:
        self.admitted.append(ex.request_id)
        return ex.request_id

    async def settle(self, ex: Exchange) -> None:
        self.settled.append((ex.reservation, ex.status))


async def test_every_reservation_is_reconciled_once(tmp_path, upstream):
    reservations = Reservations()
    async with (
        serve_router(tmp_path, upstream, stages=Stages(admission=reservations)) as router,
        router.client() as http,
    ):
        ok, failed = rid(), rid()
        await http.post(CHAT, json={"model": "up-chat", "messages": user("hi")}, headers={"x-request-id": ok})
        await http.post(
            CHAT, json={"model": "up-error-500", "messages": user("hi")}, headers={"x-request-id": failed}
        )
        await wait_for(lambda: len(reservations.settled) == 2)
    assert sorted(reservations.settled) == sorted([(ok, 200), (failed, 502)])


class Hit:
    kind = "exact"
    headers = [(b"x-cache", b"hit")]

    def __init__(self) -> None:
        self.completion = {
            "id": "chatcmpl-cached",
            "object": "chat.completion",
            "created": 1,
            "model": "upstream-chat-v1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "from cache"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        }


class FakeCache:
    """A cache stage that answers prompts saying "cached", fails on "fail", and records stores."""

    def __init__(self) -> None:
        self.stored: list[dict[str, Any]] = []

    async def lookup(self, ex: Exchange) -> Hit | None:
        text = ex.body["messages"][-1]["content"]
        if text == "fail":
            raise ConnectionError("cache down")
        return Hit() if text == "cached" else None

    async def store(self, ex: Exchange) -> None:
        assert ex.completion is not None
        self.stored.append(ex.completion)


async def test_cache_hits_plain_and_replayed_as_a_stream_and_a_failing_lookup_is_a_counted_miss(
    tmp_path, upstream
):
    cache = FakeCache()
    async with (
        serve_router(tmp_path, upstream, stages=Stages(cache=cache)) as router,
        router.client() as http,
    ):
        hit_id = rid()
        plain = await http.post(
            CHAT, json={"model": "up-chat", "messages": user("cached")}, headers={"x-request-id": hit_id}
        )
        assert plain.json()["choices"][0]["message"]["content"] == "from cache"
        assert plain.headers["x-cache"] == "hit"
        stream = await http.post(
            CHAT,
            json={
                "model": "up-chat",
                "messages": user("cached"),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        events = sse_data(stream.text)
        assert (
            "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
            == "from cache"
        )
        assert events[-2]["usage"]["total_tokens"] == 9
        assert events[-1] == "[DONE]"
        [event] = await router.usage.of(hit_id)
        assert (event["cache"], event["cached"], event["cost"]) == ("exact", True, 0.0)
        assert event["saved_cost"] == pytest.approx((7 * 1.0 + 2 * 2.0) / 1e6)

        failed = await http.post(CHAT, json={"model": "up-chat", "messages": user("fail")})
        assert failed.status_code == 200  # answered by the provider
        page = (await http.get("/metrics")).text
        assert metric_value(page, "gateway_stage_outcomes_total", stage="cache_lookup", outcome="failed") == 1

        miss = await http.post(CHAT, json={"model": "up-chat", "messages": user("store me"), "stream": True})
        assert miss.status_code == 200
        await wait_for(lambda: len(cache.stored) == 2)  # the plain "fail" answer and the stream
        assert {c["object"] for c in cache.stored} == {"chat.completion"}
