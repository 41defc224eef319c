import dataclasses
import random

import pytest

from services.kernel.errors import NotFound
from services.router.routing import attempt_order, deployments_for
from tests.unit.test_mock_provider import DEP


def test_unknown_model_is_404_model_not_found():
    with pytest.raises(NotFound) as err:
        deployments_for({"a": (DEP,)}, "b")
    assert err.value.code == "model_not_found"
    assert err.value.status == 404


def test_order_contains_every_deployment_once_and_follows_weights():
    heavy = dataclasses.replace(DEP, model="heavy", weight=9.0)
    light = dataclasses.replace(DEP, model="light", weight=1.0)
    rng = random.Random(7)
    firsts = {"heavy": 0, "light": 0}
    for _ in range(2000):
        order = attempt_order((heavy, light), rng)
        assert sorted(d.model for d in order) == ["heavy", "light"]
        firsts[order[0].model] += 1
    # Expected 1800/200; the bound is many standard deviations wide, so never flaky.
    assert 1650 < firsts["heavy"] < 1950
