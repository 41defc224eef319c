import random

import pytest

from services.kernel.config import Catalog
from services.kernel.errors import Forbidden, NotFound
from services.kernel.principal import Principal
from services.router.exchange import Exchange
from services.router.routing import CatalogResolver, attempt_order
from tests.unit.deployments import deployment

HEAVY = deployment("m", 0, provider="mock", model="heavy", weight=9.0)
LIGHT = deployment("m", 1, provider="mock", model="light", weight=1.0)
CATALOG = Catalog(models={"m": (HEAVY, LIGHT)}, aliases={"m-latest": "m"})


async def test_unknown_model_is_404_model_not_found():
    with pytest.raises(NotFound) as err:
        await CatalogResolver(CATALOG).resolve(Exchange("r", "chat.completions"), "b")
    assert err.value.code == "model_not_found"
    assert err.value.status == 404


async def test_an_alias_resolves_to_its_model_and_says_so():
    route = await CatalogResolver(CATALOG).resolve(Exchange("r", "chat.completions"), "m-latest")
    assert route.model == "m"
    assert "alias" in route.reason
    assert sorted(d.model for d in route.deployments) == ["heavy", "light"]


async def test_a_model_the_caller_may_not_use_is_403():
    ex = Exchange("r", "chat.completions", principal=Principal("k", "member", models=frozenset({"other"})))
    with pytest.raises(Forbidden) as err:
        await CatalogResolver(CATALOG).resolve(ex, "m")
    assert err.value.status == 403


def test_order_contains_every_deployment_once_and_follows_weights():
    rng = random.Random(7)
    firsts = {"heavy": 0, "light": 0}
    for _ in range(2000):
        order = attempt_order((HEAVY, LIGHT), rng)
        assert sorted(d.model for d in order) == ["heavy", "light"]
        firsts[order[0].model] += 1
    # Expected 1800/200; the bound is many standard deviations wide, so never flaky.
    assert 1650 < firsts["heavy"] < 1950
