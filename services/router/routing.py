"""Routing: which public model a request names (the resolve stage), and which of its
deployments takes it (load balancing, within each deployment's capacity).

The resolver answers once per request; the `Balancer` orders a model's deployments
when the call stage needs them, from live state kept in this process: requests in
flight (least busy), a moving average of the time to the first byte (lowest
latency), the requests and tokens of the last minute (RPM/TPM capacity), and a
Retry-After the deployment asked for.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Callable, Sequence

from services.kernel.config import Catalog, Deployment
from services.kernel.errors import Forbidden, NotFound
from services.router.exchange import Exchange, Route

WINDOW_S = 60.0
LATENCY_WEIGHT = 0.3  # of a new observation in the moving average


def attempt_order(deployments: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
    """Weighted random order without replacement: first choice by weight, then the rest."""
    if len(deployments) == 1:
        return list(deployments)
    pool = list(deployments)
    order = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[d.config.weight for d in pool])[0]
        order.append(pool.pop(pick))
    return order


def not_found(model: str) -> NotFound:
    # No deployment serves this name: a retry cannot help, and the official SDKs listen.
    return NotFound(
        f"The model '{model[:256]}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
        headers={"x-should-retry": "false"},
    )


class CatalogResolver:
    """Public names and aliases from the configuration; unknown names are rejected here,
    before anything else uses them. Deployments come in configured order: the call
    stage's `Balancer` picks among them."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

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
        return Route(name, deployments, reason)


@dataclasses.dataclass(slots=True)
class Load:
    """What this process knows about one deployment right now."""

    in_flight: int = 0
    latency: float | None = None  # moving average of seconds to the first byte
    requests: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    tokens: collections.deque[tuple[float, int]] = dataclasses.field(default_factory=collections.deque)
    token_sum: int = 0
    throttled_until: float = 0.0  # the deployment's own Retry-After


def _count_tokens(load: Load, now: float, tokens: int) -> None:
    """Count `tokens` against the deployment's tokens per minute from `now`."""
    if tokens > 0:
        load.tokens.append((now, tokens))
        load.token_sum += tokens


class Balancer:
    """Orders deployments by the model's policy and tracks their load and capacity."""

    def __init__(self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rng = rng or random.Random()
        self.clock = clock
        self.loads: dict[str, Load] = {}

    def load(self, dep: Deployment) -> Load:
        load = self.loads.get(dep.name)
        if load is None:
            load = self.loads[dep.name] = Load()
        return load

    def _expire(self, load: Load, now: float) -> None:
        horizon = now - WINDOW_S
        while load.requests and load.requests[0] <= horizon:
            load.requests.popleft()
        while load.tokens and load.tokens[0][0] <= horizon:
            load.token_sum -= load.tokens.popleft()[1]

    def order(self, deployments: Sequence[Deployment], policy: str) -> list[Deployment]:
        """The deployments in the order to try them: the policy's best first."""
        if len(deployments) <= 1 or policy == "weighted":
            return attempt_order(deployments, self.rng)
        shuffled = attempt_order(deployments, self.rng)  # ties go by weight
        if policy == "least_busy":
            return sorted(shuffled, key=lambda d: self.load(d).in_flight / d.config.weight)
        # lowest_latency: an unmeasured deployment counts as fastest, so it gets measured
        return sorted(shuffled, key=lambda d: self.load(d).latency or 0.0)

    def unavailable(self, dep: Deployment, tokens: int) -> tuple[str, float] | None:
        """Why `dep` cannot take a request of `tokens` now, and for how long; None if it can."""
        now = self.clock()
        load = self.load(dep)
        if load.throttled_until > now:
            return "throttled", load.throttled_until - now
        self._expire(load, now)
        rpm, tpm = dep.config.rpm, dep.config.tpm
        if rpm is not None and len(load.requests) >= rpm:
            return "rpm", load.requests[0] + WINDOW_S - now
        if tpm is not None and load.token_sum > 0 and load.token_sum + tokens > tpm:
            return "tpm", load.tokens[0][0] + WINDOW_S - now
        return None

    def start(self, dep: Deployment, tokens: int) -> None:
        """A request goes to `dep`: count it, and its prompt tokens, against its capacity."""
        now = self.clock()
        load = self.load(dep)
        load.in_flight += 1
        load.requests.append(now)
        _count_tokens(load, now, tokens)

    def add_tokens(self, dep: Deployment, tokens: int) -> None:
        _count_tokens(self.load(dep), self.clock(), tokens)

    def end(self, dep: Deployment) -> None:
        load = self.load(dep)
        load.in_flight = max(0, load.in_flight - 1)

    def observe(self, dep: Deployment, seconds: float) -> None:
        load = self.load(dep)
        load.latency = (
            seconds if load.latency is None else load.latency + LATENCY_WEIGHT * (seconds - load.latency)
        )

    def throttle(self, dep: Deployment, seconds: float) -> None:
        load = self.load(dep)
        load.throttled_until = max(load.throttled_until, self.clock() + seconds)

    def usage(self, dep: Deployment) -> tuple[int, int]:
        """Requests and tokens of the last minute."""
        load = self.load(dep)
        self._expire(load, self.clock())
        return len(load.requests), load.token_sum
