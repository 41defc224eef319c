"""The admit stage: exact RPM/TPM windows, budgets reserved and settled, the Lua scripts
on the real Redis against their in-process twin, and local counting while Redis is away."""

from __future__ import annotations

import asyncio
import calendar
import logging
import random
import time
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from services.auth.client import NANO, period_bounds
from services.kernel.config import LimitsConfig
from services.kernel.errors import Forbidden, RateLimited, ServiceUnavailable
from services.kernel.principal import Limits, Principal
from services.router.exchange import Attempt, Exchange, Route
from services.router.limits import (
    _LUA,
    BudgetExceeded,
    LimitAdmission,
    LocalCounters,
    Subject,
    max_tokens,
)
from services.router.providers.base import Usage
from services.router.reachability import Reachability
from tests.unit.deployments import deployment

PRICED = deployment("priced", provider="mock", model="m", price={"input": 1.0, "output": 2.0})
DEAR = deployment("priced", 1, provider="mock", model="m", price={"input": 3.0, "output": 10.0})
FREE = deployment("free", provider="mock", model="m")


def exchange(principal: Principal, *, max_tokens_: int | None = 10, content: str = "hi", deps=(PRICED,)):
    ex = Exchange(uuid.uuid4().hex, "chat.completions")
    ex.principal = principal
    ex.body = {"model": "priced", "messages": [{"role": "user", "content": content}]}
    if max_tokens_ is not None:
        ex.body["max_tokens"] = max_tokens_
    ex.route = Route(deps[0].public_model, tuple(deps))
    return ex


def key(**limits) -> Principal:
    return Principal(key_id=f"key_{uuid.uuid4().hex[:10]}", role="member", limits=Limits(**limits))


@pytest.fixture
async def admission(redis) -> LimitAdmission:
    prefix = f"test:limits:{uuid.uuid4().hex[:10]}"
    registry = CollectorRegistry()
    # A generous timeout: a slow machine must not turn a burst into a (correct) local fallback.
    made = LimitAdmission(
        LimitsConfig(redis_timeout_s=10),
        redis=redis,
        prefix=prefix,
        reach=Reachability(registry),
        registry=registry,
    )
    yield made
    names = [n async for n in redis.scan_iter(match=f"{prefix}:*")]
    if names:
        await redis.delete(*names)


def test_max_tokens_is_an_upper_bound():
    ex = exchange(key(tpm=10**6), max_tokens_=100, content="hello " * 50)
    prompt, completion = max_tokens(ex, LimitsConfig())
    assert completion == 100
    assert prompt >= 300  # every byte of text, at least
    ex.body["n"] = 3
    ex.body["messages"].append(
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    )
    prompt2, completion2 = max_tokens(ex, LimitsConfig(image_tokens=2000))
    assert completion2 == 300
    assert prompt2 >= prompt + 2000
    del ex.body["max_tokens"]
    assert max_tokens(ex, LimitsConfig(default_max_tokens=77))[1] == 77 * 3


async def test_rpm_admits_exactly_the_limit_under_concurrency(admission):
    principal = key(rpm=10)
    results = await asyncio.gather(
        *(admission.admit(exchange(principal)) for _ in range(50)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) == 10
    assert len(refused) == 40
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
    assert refused[0].headers["x-ratelimit-remaining-requests"] == "0"


async def test_success_carries_rate_limit_headers(admission):
    principal = key(rpm=5, tpm=100_000)
    ex = exchange(principal)
    await admission.admit(ex)
    headers = dict(ex.response_headers)
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert headers[b"x-ratelimit-remaining-requests"] == b"4"
    assert headers[b"x-ratelimit-limit-tokens"] == b"100000"
    assert int(headers[b"x-ratelimit-remaining-tokens"]) < 100_000


async def test_tpm_reserves_then_settles_to_the_real_usage(admission):
    principal = key(tpm=1000)
    first = exchange(principal, max_tokens_=400)
    first.reservation = await admission.admit(first)
    with pytest.raises(RateLimited) as err:
        await admission.admit(exchange(principal, max_tokens_=600))
    assert err.value.code == "rate_limit_exceeded"
    # The first request really used 20 tokens: its reservation shrinks, room comes back.
    first.usage = Usage(prompt_tokens=12, completion_tokens=8)
    first.attempts.append(_attempt())
    await admission.settle(first)
    await admission.admit(exchange(principal, max_tokens_=600))
    with pytest.raises(RateLimited) as err:
        await admission.admit(exchange(principal, max_tokens_=2000))
    assert err.value.code == "request_too_large_for_limit"


def _attempt():
    return Attempt(PRICED, 0.0, 200)


async def test_a_budget_is_never_overspent_by_concurrent_requests(admission):
    # Each request may cost up to (prompt bytes * 1 + 100 * 2) / 1e6; the budget fits a few.
    principal = key(budget=0.002)
    results = await asyncio.gather(
        *(admission.admit(exchange(principal, max_tokens_=100)) for _ in range(40)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert admitted
    assert len(admitted) + len(refused) == 40
    assert sum(r.cost for r in admitted) <= 0.002 * NANO
    assert refused[0].type == "insufficient_quota"
    assert "Budget exceeded" in refused[0].message
    assert "retry-after" not in refused[0].headers  # a lifetime budget does not reset


async def test_settle_charges_the_real_cost_and_frees_the_rest(admission, redis):
    principal = key(budget=1.0, budget_period="day")
    ex = exchange(principal, max_tokens_=1000)
    ex.reservation = await admission.admit(ex)
    ex.usage = Usage(prompt_tokens=100, completion_tokens=50)
    ex.attempts.append(_attempt())
    await admission.settle(ex)
    start, _ = period_bounds("day", time.time())
    spent = int(await redis.get(f"{admission.prefix}:spend:key:{principal.key_id}:{start}"))
    assert spent == (100 * 1 + 50 * 2) * 1000  # nano-units: price per million * tokens * 1e3


async def test_a_budget_and_a_model_without_a_price_is_refused(admission):
    with pytest.raises(Forbidden) as err:
        await admission.admit(exchange(key(budget=5.0), deps=(FREE,)))
    assert err.value.code == "model_not_priced"
    # Without a budget the same model is fine (tokens and requests are still counted).
    assert await admission.admit(exchange(key(rpm=5), deps=(FREE,))) is not None


async def test_the_dearest_deployment_prices_the_reservation(admission):
    cheap = await admission.admit(exchange(key(budget=5.0), max_tokens_=1000))
    dear = await admission.admit(exchange(key(budget=5.0), max_tokens_=1000, deps=(PRICED, DEAR)))
    assert dear.cost > 4 * cheap.cost


async def test_no_limits_means_no_redis_at_all():
    admission = LimitAdmission(
        LimitsConfig(), redis=None, prefix="x", reach=Reachability(None), registry=None
    )
    assert await admission.admit(exchange(Principal(key_id="k", role="member"))) is None


async def test_key_and_team_limits_apply_together(admission):
    team = f"team_{uuid.uuid4().hex[:8]}"
    a = Principal(key_id="a" + team, role="member", team_id=team, team_limits=Limits(rpm=3))
    b = Principal(
        key_id="b" + team, role="member", team_id=team, team_limits=Limits(rpm=3), limits=Limits(rpm=10)
    )
    await admission.admit(exchange(a))
    await admission.admit(exchange(b))
    await admission.admit(exchange(a))
    with pytest.raises(RateLimited) as err:
        await admission.admit(exchange(b))
    assert "team" in err.value.message


@pytest.mark.parametrize("period", ["hour", "day", "week", "month"])
async def test_the_script_and_python_agree_on_budget_periods(redis, period):
    harness = (_LUA / "admit.lua").read_text().split("local n = tonumber(ARGV[1])")[0]
    harness += "local s, e = period_bounds(ARGV[1], tonumber(ARGV[2])); return {s, e}"
    rng = random.Random(7)
    moments = [calendar.timegm((y, m, d, h, 0, 0)) for y, m, d, h in [(2024, 2, 29, 23), (2024, 12, 31, 23),
               (2025, 1, 1, 0), (2026, 3, 1, 0), (2000, 2, 29, 12), (2100, 3, 1, 1)]]  # fmt: skip
    moments += [rng.randrange(0, 4_102_444_800) for _ in range(200)]
    for now in moments:
        start, end = await redis.eval(harness, 0, period, now)
        assert (start, end) == period_bounds(period, now), (period, now)


def test_local_counters_follow_the_same_rules():
    counters = LocalCounters()
    s = (Subject("key:k", Limits(rpm=2, tpm=100, budget=1.0, budget_period="day"), "key"),)
    now = 1_800_000_000
    assert counters.admit(s, 40, NANO // 4, now).admitted
    assert counters.admit(s, 40, NANO // 4, now + 1).admitted
    refused = counters.admit(s, 1, 1, now + 2)
    assert (refused.admitted, refused.reason, refused.retry_after) == (False, "rpm", 58)
    # At now + 60 the first second has left the window: one request and 40 tokens remain.
    assert counters.admit(s, 70, NANO // 4, now + 60).reason == "tpm"
    assert counters.admit(s, 101, 1, now + 60).reason == "too_large"
    assert counters.admit(s, 10, NANO, now + 60).reason == "budget"
    assert counters.admit(s, 10, NANO // 4, now + 60).admitted
    assert counters.admit(s, 10, 1, now + 60).reason == "rpm"


async def test_redis_away_means_local_counters_said_in_metrics_and_logs(caplog):
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    registry = CollectorRegistry()
    admission = LimitAdmission(
        LimitsConfig(redis_timeout_s=0.5),
        redis=dead,
        prefix="x",
        reach=Reachability(registry),
        registry=registry,
    )
    principal = key(rpm=3)
    with caplog.at_level(logging.WARNING, logger="gateway.router"):
        results = await asyncio.gather(
            *(admission.admit(exchange(principal)) for _ in range(5)), return_exceptions=True
        )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3  # still exact, in this process
    text = generate_latest(registry).decode()
    assert "gateway_redis_degraded 1.0" in text
    assert 'gateway_admission_decisions_total{counter="local",outcome="admitted"} 3.0' in text
    assert any("redis unreachable" in r.getMessage() for r in caplog.records)
    await dead.aclose()


async def test_spend_counted_locally_reaches_redis_when_it_is_back(redis):
    prefix = f"test:limits:{uuid.uuid4().hex[:10]}"
    registry = CollectorRegistry()
    reach = Reachability(registry, retry_after_s=0.05)
    admission = LimitAdmission(LimitsConfig(), redis=redis, prefix=prefix, reach=reach, registry=registry)
    principal = key(budget=10.0, budget_period="day")
    try:
        reach.failed("test", OSError("simulated outage"))  # as if the last call had failed
        assert not reach.usable
        local = exchange(principal, max_tokens_=100)
        local.reservation = await admission.admit(local)
        assert local.reservation.local
        await asyncio.sleep(0.06)
        remote = exchange(principal, max_tokens_=100)
        remote.reservation = await admission.admit(remote)  # Redis again: the local spend is flushed
        assert not remote.reservation.local
        await admission.aclose()
        start, _ = period_bounds("day", time.time())
        spent = int(await redis.get(f"{prefix}:spend:key:{principal.key_id}:{start}"))
        assert spent == local.reservation.cost + remote.reservation.cost
        assert "gateway_redis_degraded 0.0" in generate_latest(registry).decode()
    finally:
        names = [n async for n in redis.scan_iter(match=f"{prefix}:*")]
        if names:
            await redis.delete(*names)


async def test_deny_mode_refuses_while_redis_is_away():
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    admission = LimitAdmission(
        LimitsConfig(on_redis_down="deny"), redis=dead, prefix="x", reach=Reachability(None), registry=None
    )
    with pytest.raises(ServiceUnavailable) as err:
        await admission.admit(exchange(key(rpm=3)))
    assert err.value.code == "limits_unavailable"
    await dead.aclose()
