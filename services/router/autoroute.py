"""The resolve stage for `auto`-style names: classify the prompt, then pick from the table.

`routing.aliases` in gateway.yaml name the public models that route automatically
(`auto`, `auto-cheap`, `auto-best`, …), each with where its difficulty bands start.
For such a name the classifier gives the prompt's category and difficulty; the table
gives the category's models for that band (an ordered list: the first one that is
configured with a usable deployment and that the caller may use), then `routing.default`.
Every other name goes to the catalog resolver unchanged.

The classifier is optional: it is called with a short timeout, and when it is slow,
down or answers nonsense, the rule stage runs here, in-process, from the same rules
file, and the classifier is left alone for `classifier_retry_s` (each skip counted in
`gateway_stage_outcomes_total{stage="classifier"}`). `auto` never fails because of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from services.classifier.client import (
    Classification,
    ClassifierClient,
    ClassifierUnavailable,
    RuleClassifier,
    from_messages,
    local_classification,
)
from services.kernel.config import BANDS, AutoAlias, ConfigError, RoutingConfig
from services.kernel.errors import Forbidden, InvalidRequest
from services.router.exchange import Exchange, Route
from services.router.metrics import RouterMetrics
from services.router.routing import CatalogResolver, attempt_order, not_found

log = logging.getLogger("gateway.router")


def band_of(difficulty: float, alias: AutoAlias) -> str:
    if difficulty >= alias.hard:
        return "hard"
    if difficulty >= alias.medium:
        return "medium"
    return "easy"


class AutoResolver:
    """`Resolver` for the routing aliases; plain names are delegated to `CatalogResolver`."""

    def __init__(
        self,
        catalog: CatalogResolver,
        routing: RoutingConfig,
        rules: RuleClassifier,
        *,
        classifier: ClassifierClient | None,
        metrics: RouterMetrics,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        unknown = sorted(set(routing.table) - set(rules.categories))
        if unknown:
            raise ConfigError(
                f"routing.table names categories the rules file ({rules.source}) does not have: {unknown}; "
                f"known: {list(rules.categories)}"
            )
        self.catalog = catalog
        self.routing = routing
        self.rules = rules
        self.classifier = classifier
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.timeout = routing.classifier_timeout_ms / 1000
        self._skip_until = 0.0
        self.routes = Counter(
            "gateway_auto_routes_total",
            "Requests to a routing alias, by alias, chosen model, category, band and deciding stage",
            ["alias", "model", "category", "band", "method"],
            registry=registry,
        )
        # Candidates per (category, band), the default appended: computed once, not per request.
        self._candidates: dict[tuple[str, str], tuple[str, ...]] = {}
        for category in rules.categories:
            row = routing.table.get(category)
            for band in BANDS:
                listed = (getattr(row, band) or ()) if row is not None else ()
                self._candidates[category, band] = tuple(dict.fromkeys((*listed, *routing.default)))

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.routing.aliases)

    def available(self) -> list[str]:
        """The aliases that can route somewhere (a model of theirs has a usable deployment)."""
        usable = any(self._usable(name) for names in self._candidates.values() for name in names)
        return list(self.routing.aliases) if usable else []

    def _usable(self, name: str) -> bool:
        target = self.catalog.catalog.aliases.get(name, name)
        return target in self.catalog.catalog.models

    async def classify(self, ex: Exchange) -> Classification:
        """The classification of the exchange's prompt: the service's, or the local rules'."""
        prompt = from_messages(ex.body.get("messages") or [])
        now = self.clock()
        if self.classifier is not None and now >= self._skip_until:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self.classifier.classify(prompt, timeout_s=self.timeout)
            except TimeoutError:
                self.metrics.stage_outcome("classifier", "timed_out")
                self._skip_until = now + self.routing.classifier_retry_s
            except ClassifierUnavailable as exc:
                self.metrics.stage_outcome("classifier", "failed")
                self._skip_until = now + self.routing.classifier_retry_s
                log.warning("classifier unavailable; routing by the rules", extra={"error": str(exc)})
        elif self.classifier is not None:
            self.metrics.stage_outcome("classifier", "skipped")
        return local_classification(self.rules, prompt)

    async def resolve(self, ex: Exchange, model: str) -> Route:
        alias = self.routing.aliases.get(model)
        if alias is None:
            return await self.catalog.resolve(ex, model)
        if ex.endpoint != "chat.completions":
            raise InvalidRequest(
                f"'{model}' routes chat completions; name an embedding model here.", param="model"
            )
        principal = ex.principal
        if principal is not None and not principal.may_use(model):
            raise Forbidden(f"This key may not use the model '{model}'.", param="model")
        result = await self.classify(ex)
        band = band_of(result.difficulty, alias)
        category = result.category if result.category in self.rules.categories else self.rules.default
        for name in self._candidates[category, band]:
            if not self._usable(name):
                continue
            public, deployments = self.catalog.lookup(name)
            self.routes.labels(model, public, category, band, result.method).inc()
            reason = (
                f"{model}: category={category}; difficulty={result.difficulty:.2f}; "
                f"band={band}; method={result.method}"
            )
            return Route(public, tuple(attempt_order(deployments, self.rng)), reason)
        raise not_found(model)
