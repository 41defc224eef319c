"""The call stage's retry, fallback and breaker decisions, over a scripted transport
(the HTTP side is covered end to end in tests/providers/)."""

from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from services.kernel.config import Catalog, ModelConfig, ResilienceConfig
from services.kernel.errors import GatewayError
from services.kernel.redact import Redactor
from services.router.dispatch import Dispatcher, retry_after
from services.router.exchange import Exchange, Route
from services.router.metrics import RouterMetrics
from services.router.providers import adapters
from services.router.providers.base import HttpRequest, HttpResponse
from services.router.sender import ConnectFailed, Sender
from tests.unit.deployments import deployment

JSON = CIMultiDict({"content-type": "application/json"})
OK = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def dep(model: str, index: int, **fields):
    return deployment(
        model,
        index,
        provider="openai",
        model=f"{model}-{index}",
        base_url=f"http://{model}-{index}.test",
        **fields,
    )


class Script:
    """Answers per upstream host: a list of outcomes consumed in order, the last repeated."""

    def __init__(self, plan: dict[str, list[object]]) -> None:
        self.plan = plan
        self.calls: dict[str, int] = defaultdict(int)

    async def send(self, request: HttpRequest) -> HttpResponse:
        host = request.url.split("//")[1].split("/")[0].removesuffix(".test")
        outcomes = self.plan[host]
        outcome = outcomes[min(self.calls[host], len(outcomes) - 1)]
        self.calls[host] += 1
        if isinstance(outcome, Exception):
            raise outcome
        status, headers, body = outcome  # type: ignore[misc]
        return HttpResponse(status, CIMultiDict({"content-type": "application/json", **headers}), body)

    async def open(self, request: HttpRequest):
        raise NotImplementedError


def ok():
    return (200, {}, orjson.dumps(OK))


def fail(status, headers=None, code=None):
    return (status, headers or {}, orjson.dumps({"error": {"message": "no", "type": "x", "code": code}}))


def build(plan, models, **resilience):
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    catalog = Catalog(
        models={name: tuple(deps) for name, (deps, _) in models.items()},
        configs={
            name: ModelConfig(name=name, deployments=[d.config for d in deps], **extra)
            for name, (deps, extra) in models.items()
        },
    )
    script = Script(plan)
    dispatcher = Dispatcher(
        Sender(script, script),
        adapters(),
        RouterMetrics(CollectorRegistry()),
        Redactor(),
        catalog=catalog,
        resilience=ResilienceConfig(**resilience),
        rng=random.Random(3),
        sleep=sleep,
    )
    return dispatcher, script, slept


def exchange(model, deps):
    ex = Exchange(
        "r", "chat.completions", body={"model": model, "messages": [{"role": "user", "content": "x"}]}
    )
    ex.route = Route(model, tuple(deps))
    return ex


async def test_a_5xx_is_retried_on_the_same_deployment_with_growing_jittered_backoff():
    a = dep("m", 0, retries=2)
    dispatcher, _script, slept = build({"m-0": [fail(500), fail(503), ok()]}, {"m": ([a], {})})
    ex = exchange("m", [a])
    await dispatcher.chat(ex)
    assert [t.status for t in ex.attempts] == [502, 502, 200]
    assert len(slept) == 2
    assert 0 <= slept[0] <= 0.1
    assert 0 <= slept[1] <= 0.2


async def test_retries_exhausted_go_to_the_next_deployment_then_the_fallback_model():
    a, b, c = dep("m", 0, retries=1), dep("m", 1, retries=0), dep("f", 0)
    plan = {"m-0": [ConnectFailed("x")], "m-1": [fail(502)], "f-0": [ok()]}
    dispatcher, _, _ = build(plan, {"m": ([a, b], {"fallbacks": ("f",)}), "f": ([c], {})})
    ex = exchange("m", [a, b])
    await dispatcher.chat(ex)
    assert [(t.deployment.name, t.status) for t in ex.attempts][-1] == ("f/0", 200)
    assert sorted(t.deployment.name for t in ex.attempts[:-1]) == ["m/0", "m/0", "m/1"]
    assert ex.route.model == "f"
    assert ex.route.reason == "fallback from m"


async def test_a_400_is_final_and_nothing_else_is_tried():
    a, b = dep("m", 0), dep("m", 1)
    dispatcher, _script, _ = build({"m-0": [fail(400)], "m-1": [fail(400)]}, {"m": ([a, b], {})})
    ex = exchange("m", [a, b])
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert err.value.status == 400
    assert len(ex.attempts) == 1


async def test_a_429_moves_on_at_once_and_the_deployment_is_left_alone_for_its_retry_after():
    a, b = dep("m", 0, weight=1e9), dep("m", 1, weight=1e-9)
    plan = {"m-0": [fail(429, {"retry-after": "20"})], "m-1": [ok()]}
    dispatcher, script, slept = build(plan, {"m": ([a, b], {})})
    await dispatcher.chat(exchange("m", [a, b]))
    assert slept == []
    second = exchange("m", [a, b])
    await dispatcher.chat(second)
    assert [t.deployment.name for t in second.attempts] == ["m/1"]  # m/0 asked for 20 s of peace
    assert script.calls["m-0"] == 1


async def test_the_last_deployment_waits_out_a_short_retry_after_but_not_a_long_one():
    a = dep("m", 0, retries=1)
    dispatcher, _, slept = build({"m-0": [fail(429, {"retry-after": "2"}), ok()]}, {"m": ([a], {})})
    await dispatcher.chat(exchange("m", [a]))
    assert slept == [2.0]
    dispatcher, _, slept = build({"m-0": [fail(429, {"retry-after": "60"}), ok()]}, {"m": ([a], {})})
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(exchange("m", [a]))
    assert (err.value.status, err.value.headers["retry-after"]) == (429, "60")
    assert slept == []


async def test_context_overflow_jumps_to_the_context_fallback():
    a, big = dep("m", 0), dep("big", 0)
    plan = {"m-0": [fail(400, code="context_length_exceeded")], "big-0": [ok()]}
    dispatcher, _, _ = build(plan, {"m": ([a], {"context_fallbacks": ("big",)}), "big": ([big], {})})
    ex = exchange("m", [a])
    await dispatcher.chat(ex)
    assert [(t.deployment.name, t.status) for t in ex.attempts] == [("m/0", 400), ("big/0", 200)]


async def test_a_prompt_over_the_context_window_goes_straight_to_the_larger_model():
    a, big = dep("m", 0), dep("big", 0)
    dispatcher, _script, _ = build(
        {"m-0": [ok()], "big-0": [ok()]},
        {"m": ([a], {"context_window": 5, "context_fallbacks": ("big",)}), "big": ([big], {})},
    )
    ex = exchange("m", [a])
    ex.body["messages"] = [{"role": "user", "content": "many words in this prompt here"}]
    await dispatcher.chat(ex)
    assert [t.deployment.name for t in ex.attempts] == ["big/0"]


async def test_an_open_circuit_is_skipped_while_another_deployment_can_answer():
    a = dep("m", 0, weight=1e9, retries=0, breaker={"failures": 2, "cooldown_s": 60})
    b = dep("m", 1, weight=1e-9)
    dispatcher, script, _ = build({"m-0": [fail(500)], "m-1": [ok()]}, {"m": ([a, b], {})})
    for _ in range(2):
        await dispatcher.chat(exchange("m", [a, b]))
    assert dispatcher.breakers.state(a) == "open"
    for _ in range(3):
        ex = exchange("m", [a, b])
        await dispatcher.chat(ex)
        assert [t.deployment.name for t in ex.attempts] == ["m/1"]
    assert script.calls["m-0"] == 2


async def test_when_every_circuit_is_open_the_request_still_tries_them():
    a = dep("m", 0, retries=0, breaker={"failures": 1, "cooldown_s": 60})
    dispatcher, _script, _ = build({"m-0": [fail(500), ok()]}, {"m": ([a], {})})
    with pytest.raises(GatewayError):
        await dispatcher.chat(exchange("m", [a]))
    assert dispatcher.breakers.state(a) == "open"
    await dispatcher.chat(exchange("m", [a]))
    assert dispatcher.breakers.state(a) == "closed"


async def test_rpm_capacity_is_respected_with_a_429_from_the_gateway():
    a = dep("m", 0, rpm=1)
    dispatcher, _, _ = build({"m-0": [ok()]}, {"m": ([a], {})})
    ex = exchange("m", [a])
    await dispatcher.chat(ex)
    dispatcher.finish(ex)
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(exchange("m", [a]))
    assert err.value.status == 429
    assert 1 <= int(err.value.headers["retry-after"]) <= 60


async def test_no_try_starts_after_the_deadline():
    a = dep("m", 0, retries=10)
    dispatcher, script, _ = build({"m-0": [fail(500)]}, {"m": ([a], {})}, deadline_s=0.001)
    ex = exchange("m", [a])
    ex.started -= 1  # the request arrived a second ago
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert err.value.status == 504
    assert script.calls["m-0"] == 0


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after(GatewayError("x", headers={"retry-after": "7"})) == 7
    assert retry_after(GatewayError("x", headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    assert retry_after(GatewayError("x", headers={"retry-after": "soon"})) is None
    assert retry_after(GatewayError("x")) is None
