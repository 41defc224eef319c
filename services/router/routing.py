"""Which deployment serves a request, and in which order the others are tried."""

from __future__ import annotations

import random
from collections.abc import Mapping

from services.kernel.config import Deployment
from services.kernel.errors import NotFound


def deployments_for(models: Mapping[str, tuple[Deployment, ...]], model: str) -> tuple[Deployment, ...]:
    deployments = models.get(model)
    if deployments is None:
        raise NotFound(
            f"The model '{model[:256]}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return deployments


def attempt_order(deployments: tuple[Deployment, ...], rng: random.Random) -> list[Deployment]:
    """Weighted random order without replacement: first choice by weight, then the rest."""
    if len(deployments) == 1:
        return [deployments[0]]
    pool = list(deployments)
    order = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[d.weight for d in pool])[0]
        order.append(pool.pop(pick))
    return order
