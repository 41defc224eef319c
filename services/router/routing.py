"""The resolve stage: which public model a request names, and the order in which its
deployments are tried."""

from __future__ import annotations

import random

from services.kernel.config import Catalog, Deployment
from services.kernel.errors import Forbidden, NotFound
from services.router.exchange import Exchange, Route


def attempt_order(deployments: tuple[Deployment, ...], rng: random.Random) -> tuple[Deployment, ...]:
    """Weighted random order without replacement: first choice by weight, then the rest."""
    if len(deployments) == 1:
        return deployments
    pool = list(deployments)
    order = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[d.config.weight for d in pool])[0]
        order.append(pool.pop(pick))
    return tuple(order)


def not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{model[:256]}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


class CatalogResolver:
    """Public names and aliases from the configuration; unknown names are rejected here,
    before anything else uses them."""

    def __init__(self, catalog: Catalog, rng: random.Random | None = None) -> None:
        self.catalog = catalog
        self.rng = rng or random.Random()

    def lookup(self, model: str) -> tuple[str, tuple[Deployment, ...]]:
        """The public name and deployments of `model` (a name or an alias), or NotFound."""
        name = self.catalog.aliases.get(model, model)
        deployments = self.catalog.models.get(name)
        if deployments is None:
            raise not_found(model)
        return name, deployments

    async def resolve(self, ex: Exchange, model: str) -> Route:
        name, deployments = self.lookup(model)
        if ex.principal is not None and not ex.principal.may_use(name):
            raise Forbidden(f"This key may not use the model '{name}'.", param="model")
        reason = f"alias of {name}" if name != model else ""
        return Route(name, attempt_order(deployments, self.rng), reason)
