"""Regions: the configuration that names them, the router's preference for its own, and
residency, over the call stage with a scripted transport (end to end: tests/regions/)."""

from __future__ import annotations

import pytest

from services.kernel.config import ConfigError, RegionConfig, load_config
from services.kernel.errors import GatewayError
from services.kernel.principal import Principal
from services.kernel.settings import Settings
from services.router.regions import RegionPolicy, describe
from services.router.sender import ConnectFailed
from tests.conftest import MASTER_KEY
from tests.unit.test_dispatch import build, dep, exchange, fail, ok

EU, US = "eu-west", "us-east"


def regional(model: str, index: int, region: str | None, **fields):
    return dep(model, index, **({"region": region} if region else {}), **fields)


def principal(*regions: str) -> Principal:
    return Principal(key_id="k", role="member", regions=frozenset(regions))


def policy(local: str | None, **residency: list[str]) -> RegionPolicy:
    pinned = {region.replace("_", "-"): allowed for region, allowed in residency.items()}
    return RegionPolicy.of(local, RegionConfig(residency=pinned))


def names(ex) -> list[str]:
    return [a.deployment.name for a in ex.attempts]


# -- configuration ---------------------------------------------------------------------


CONFIG = """
region:
  names: [eu-west, us-east]
  residency: {{eu-west: [eu-west]}}
models:
  - name: chat
    deployments:
      - {{provider: mock, model: a, region: {a}}}
      - {{provider: mock, model: b}}
"""


def test_deployments_carry_a_region_and_unknown_names_stop_the_start(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(a="eu-west"))
    config = load_config(path)
    assert [d.region for d in config.models[0].deployments] == ["eu-west", None]
    assert config.region.residency == {"eu-west": ("eu-west",)}
    path.write_text(CONFIG.format(a="eu-wset"))
    with pytest.raises(ConfigError, match=r"region 'eu-wset' is not in region\.names"):
        load_config(path)
    path.write_text(CONFIG.format(a="EU_West"))
    with pytest.raises(ConfigError, match=r"models\.0\.deployments\.0\.region"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("{names: [eu-west], name: us-east}", r"'us-east' is not in region\.names"),
        ("{names: [eu-west], residency: {eu-west: [us-east]}}", r"'us-east' is not in region\.names"),
        ("{residency: {eu-west: []}}", "names no region"),
    ],
)
def test_region_section_is_checked(tmp_path, section, fragment):
    path = tmp_path / "gateway.yaml"
    models = "models: [{name: m, deployments: [{provider: mock, model: m}]}]"
    path.write_text(f"region: {section}\n{models}\n")
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_the_router_region_comes_from_gateway_region_and_must_be_known(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(a="eu-west"))
    env = {"GATEWAY_CONFIG": str(path), "GATEWAY_MASTER_KEY": MASTER_KEY}
    assert Settings.from_env(env).region is None
    assert Settings.from_env({**env, "GATEWAY_REGION": US}).region == US
    assert Settings.from_env({**env, "GATEWAY__REGION__NAME": EU}).region == EU
    with pytest.raises(ConfigError, match=r"not in region\.names"):
        Settings.from_env({**env, "GATEWAY_REGION": "ap-south"})
    with pytest.raises(ConfigError, match="not a region name"):
        Settings.from_env({**env, "GATEWAY_REGION": "eu west"})


# -- the policy ------------------------------------------------------------------------


def test_own_region_first_each_group_in_the_balancers_order():
    e1, u1, n1, e2 = regional("m", 0, EU), regional("m", 1, US), regional("m", 2, None), regional("m", 3, EU)
    assert policy(EU).prefer([u1, e1, n1, e2]) == [e1, e2, u1, n1]
    assert policy(US).prefer([e1, n1, u1, e2]) == [u1, e1, n1, e2]
    assert policy(None).prefer([u1, e1]) == [u1, e1]
    assert policy("ap-south").prefer([u1, e1]) == [u1, e1]


def test_allowed_regions_are_the_keys_narrowed_by_the_routers():
    assert policy(US).allowed(None) is None
    assert policy(US).allowed(principal(EU)) == {EU}
    eu = policy(EU, eu_west=[EU, "eu-central"])
    assert eu.allowed(None) == {EU, "eu-central"}
    assert eu.allowed(principal(EU, US)) == {EU}
    assert eu.allowed(principal(US)) == frozenset()


def test_a_deployment_without_a_region_is_in_none():
    assert RegionPolicy.admits(None, regional("m", 0, None))
    assert not RegionPolicy.admits(frozenset({EU}), regional("m", 0, None))
    assert RegionPolicy.admits(frozenset({EU}), regional("m", 0, EU))
    assert describe(frozenset()) == "none"
    assert describe(frozenset(f"r{i}" for i in range(10))).endswith("and 2 more")


# -- the call stage --------------------------------------------------------------------


def build_regional(plan, models, local, **residency):
    dispatcher, script, _ = build(plan, models)
    dispatcher.regions = policy(local, **residency)
    return dispatcher, script


def counter(dispatcher, name: str, **labels) -> float:
    for metric in dispatcher.metrics.cross_region, dispatcher.metrics.residency_refusals:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
    return 0.0


async def test_the_own_region_serves_even_when_the_other_weighs_far_more():
    eu, us = regional("m", 0, EU, weight=1e-9), regional("m", 1, US, weight=1e9)
    dispatcher, script = build_regional({"m-0": [ok()], "m-1": [ok()]}, {"m": ([eu, us], {})}, EU)
    for _ in range(5):
        ex = exchange("m", [eu, us])
        await dispatcher.chat(ex)
        assert names(ex) == ["m/0"]
    assert script.calls.get("m-1", 0) == 0
    assert counter(dispatcher, "gateway_cross_region_requests_total", region=EU, deployment_region=US) == 0


async def test_failover_to_another_region_only_after_every_own_deployment_failed():
    e1, e2, us = regional("m", 0, EU, retries=0), regional("m", 1, EU, retries=0), regional("m", 2, US)
    plan = {"m-0": [fail(503)], "m-1": [ConnectFailed("down")], "m-2": [ok()]}
    dispatcher, _ = build_regional(plan, {"m": ([us, e1, e2], {})}, EU)
    ex = exchange("m", [us, e1, e2])
    await dispatcher.chat(ex)
    assert sorted(names(ex)[:2]) == ["m/0", "m/1"]
    assert names(ex)[2:] == ["m/2"]
    assert counter(dispatcher, "gateway_cross_region_requests_total", region=EU, deployment_region=US) == 1


async def test_an_open_own_circuit_sends_requests_to_the_other_region_until_it_heals():
    eu = regional("m", 0, EU, retries=0, breaker={"failures": 1, "cooldown_s": 60})
    us = regional("m", 1, US)
    dispatcher, script = build_regional({"m-0": [fail(500), ok()], "m-1": [ok()]}, {"m": ([eu, us], {})}, EU)
    first = exchange("m", [eu, us])
    await dispatcher.chat(first)
    assert names(first) == ["m/0", "m/1"]
    second = exchange("m", [eu, us])
    await dispatcher.chat(second)
    assert names(second) == ["m/1"]  # the EU circuit is open: not tried at all
    dispatcher.breakers.clock = lambda: 1e12  # the cool-down is over: the probe goes home
    third = exchange("m", [eu, us])
    await dispatcher.chat(third)
    assert names(third) == ["m/0"]
    assert script.calls["m-0"] == 2


async def test_a_restricted_request_never_fails_over_out_of_its_regions():
    eu, us = regional("m", 0, EU, retries=0), regional("m", 1, US)
    dispatcher, script = build_regional({"m-0": [fail(503)], "m-1": [ok()]}, {"m": ([eu, us], {})}, US)
    ex = exchange("m", [eu, us])
    ex.principal = principal(EU)
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert (err.value.status, err.value.code) == (503, "region_unavailable")
    assert "eu-west" in err.value.message
    assert "other regions are not used" in err.value.message
    assert err.value.headers["retry-after"]
    assert names(ex) == ["m/0"]  # the router's own region (us-east) is outside the key's
    assert script.calls.get("m-1", 0) == 0
    assert counter(dispatcher, "gateway_residency_refusals_total", reason="unavailable") == 1


async def test_residency_holds_across_fallback_models_too():
    eu, us_fallback, eu_fallback = regional("m", 0, EU, retries=0), regional("f", 0, US), regional("g", 0, EU)
    plan = {"m-0": [fail(500)], "f-0": [ok()], "g-0": [ok()]}
    models = {"m": ([eu], {"fallbacks": ("f", "g")}), "f": ([us_fallback], {}), "g": ([eu_fallback], {})}
    dispatcher, script = build_regional(plan, models, EU)
    ex = exchange("m", [eu])
    ex.principal = principal(EU)
    await dispatcher.chat(ex)
    assert names(ex) == ["m/0", "g/0"]
    assert ex.route.reason == "fallback from m"
    assert script.calls.get("f-0", 0) == 0


async def test_a_model_with_nothing_in_the_allowed_regions_is_refused_before_any_call():
    us, unplaced = regional("m", 0, US), regional("m", 1, None)
    dispatcher, script = build_regional({"m-0": [ok()], "m-1": [ok()]}, {"m": ([us, unplaced], {})}, EU)
    ex = exchange("m", [us, unplaced])
    ex.principal = principal(EU)
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert (err.value.status, err.value.code, err.value.param) == (403, "region_not_allowed", "model")
    assert ex.attempts == []
    assert not script.calls
    assert counter(dispatcher, "gateway_residency_refusals_total", reason="no_deployment") == 1


async def test_the_routers_own_residency_applies_to_unrestricted_keys():
    eu, us = regional("m", 0, EU, retries=0), regional("m", 1, US)
    dispatcher, script = build_regional(
        {"m-0": [fail(502)], "m-1": [ok()]}, {"m": ([eu, us], {})}, EU, eu_west=[EU]
    )
    ex = exchange("m", [eu, us])  # no principal restriction at all
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert err.value.code == "region_unavailable"
    assert script.calls.get("m-1", 0) == 0


async def test_a_failure_without_residency_keeps_its_own_error():
    eu, us = regional("m", 0, EU, retries=0), regional("m", 1, US, retries=0)
    dispatcher, _ = build_regional({"m-0": [fail(502)], "m-1": [fail(502)]}, {"m": ([eu, us], {})}, EU)
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(exchange("m", [eu, us]))
    assert (err.value.status, err.value.code) == (502, "upstream_error")


async def test_the_health_page_names_each_deployments_region():
    eu, plain = regional("m", 0, EU), regional("m", 1, None)
    dispatcher, _ = build_regional({}, {"m": ([eu, plain], {})}, EU)
    assert [d["region"] for d in dispatcher.health()] == [EU, None]


async def test_a_deployment_in_no_region_is_neither_preferred_nor_another_regions():
    unplaced, us = regional("m", 0, None, weight=1e9), regional("m", 1, US, weight=1e-9)
    dispatcher, _ = build_regional({"m-0": [ok()], "m-1": [ok()]}, {"m": ([unplaced, us], {})}, EU)
    ex = exchange("m", [unplaced, us])
    await dispatcher.chat(ex)
    assert names(ex) == ["m/0"]  # the balancer's choice: neither is eu-west's
    assert (
        counter(dispatcher, "gateway_cross_region_requests_total", region=EU, deployment_region="none") == 0
    )
    assert not dispatcher.regions.is_remote(unplaced)
    assert dispatcher.regions.is_remote(us)


async def test_a_key_whose_regions_and_teams_have_none_in_common_is_refused_whatever_the_model():
    eu, us = regional("m", 0, EU), regional("m", 1, US)
    dispatcher, script = build_regional({"m-0": [ok()], "m-1": [ok()]}, {"m": ([eu, us], {})}, US)
    ex = exchange("m", [eu, us])
    ex.principal = principal()  # the key's regions narrowed by its team's: nothing left
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert (err.value.status, err.value.code, err.value.param) == (403, "region_not_allowed", None)
    assert "its team have none in common" in err.value.message
    assert err.value.headers == {"x-should-retry": "false"}
    assert ex.attempts == []
    assert not script.calls
    assert counter(dispatcher, "gateway_residency_refusals_total", reason="no_region") == 1


async def test_a_key_restricted_outside_the_routers_residency_is_told_where_to_go():
    eu, us = regional("m", 0, EU), regional("m", 1, US)
    dispatcher, script = build_regional(
        {"m-0": [ok()], "m-1": [ok()]}, {"m": ([eu, us], {})}, EU, eu_west=[EU]
    )
    ex = exchange("m", [eu, us])
    ex.principal = principal(US)
    with pytest.raises(GatewayError) as err:
        await dispatcher.chat(ex)
    assert (err.value.status, err.value.code) == (403, "region_not_allowed")
    assert "keeps every request in eu-west" in err.value.message
    assert "may only be served in us-east" in err.value.message
    assert not script.calls
