"""The settle stage: runs exactly once per model request, however it ended.

It turns the exchange into the usage event (handed to the publisher, which never
blocks), the metrics and the optional access log line, synchronously, so that
cancellation cannot interrupt it halfway. The follow-ups that need I/O (reconciling
the admission reservation, storing the answer in the cache) run as background
tasks that shutdown waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from services.kernel.ids import new_id
from services.kernel.pricing import cost_of
from services.kernel.usage import UsageEvent
from services.router.exchange import Exchange
from services.router.metrics import RouterMetrics
from services.router.stages import Admission, ResponseCache
from services.router.usage import UsagePublisher

if TYPE_CHECKING:  # stored.py uses the pipeline's responders, and the pipeline settles
    from services.router.stored import StoredCompletions
    from services.router.tracing import Tracing

log = logging.getLogger("gateway.router")
access = logging.getLogger("gateway.access")


class Background:
    """Follow-up tasks of settled requests; bounded, awaited at shutdown."""

    def __init__(self, metrics: RouterMetrics, limit: int = 10_000, drain_s: float = 10.0) -> None:
        self.metrics = metrics
        self.limit = limit
        self.drain_s = drain_s
        self.tasks: set[asyncio.Task[None]] = set()

    def run(self, name: str, work: Coroutine[Any, Any, None], *, essential: bool) -> None:
        """Start `work`; optional work is skipped (and counted) when too much is in flight."""
        if not essential and len(self.tasks) >= self.limit:
            work.close()
            self.metrics.stage_outcome(name, "skipped")
            return
        task = asyncio.get_running_loop().create_task(self._guard(name, work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guard(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # a follow-up failing must not go unseen, nor take anything down
            self.metrics.stage_outcome(name, "failed")
            log.warning("settle follow-up failed", extra={"stage": name, "error": type(exc).__name__})

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.drain_s)


class Settler:
    def __init__(
        self,
        publisher: UsagePublisher,
        metrics: RouterMetrics,
        admission: Admission,
        cache: ResponseCache,
        background: Background,
        *,
        access_log: bool = False,
        cache_enabled: bool = False,
        stored: StoredCompletions | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.admission = admission
        self.cache = cache
        self.background = background
        self.access_log = access_log
        self.cache_enabled = cache_enabled
        self.stored = stored
        self.tracing = tracing

    def settle(self, ex: Exchange) -> None:
        """Record the exchange; a second call does nothing."""
        if ex.settled:
            return
        ex.settled = True
        latency = time.perf_counter() - ex.started
        ttft = None if ex.first_byte_at is None else ex.first_byte_at - ex.started
        self.metrics.record(ex, latency, ttft)
        principal = ex.principal
        if principal is None:
            return  # unauthenticated: counted in metrics, no usage record
        dep = ex.deployment
        usage = ex.usage
        route = ex.route
        priced = dep or (route.deployments[0] if route is not None and route.deployments else None)
        cost = cost_of(
            priced.config.price if priced is not None else None,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
        saved = None
        if ex.cache is not None:  # served from the gateway's cache: nothing spent upstream
            cost, saved = (0.0 if cost is not None else None), cost
        self.metrics.account(ex, cost, saved, self.cache_enabled)
        if self.tracing is not None:
            try:
                self.tracing.record(ex, ex.started + latency, cost)
            except Exception as exc:  # a trace must never cost a usage record
                self.metrics.stage_outcome("tracing", "failed")
                log.warning("span not recorded", extra={"error": type(exc).__name__})
        event: UsageEvent = {
            "event_id": new_id(),
            "request_id": ex.request_id,
            "key_id": principal.key_id,
            "team_id": principal.team_id,
            "endpoint": ex.endpoint,
            "model": route.model if route is not None else ex.requested_model,
            "provider": dep.provider if dep is not None else "",
            "upstream_model": dep.model if dep is not None else "",
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "estimated": usage.estimated,
            "latency_ms": round(latency * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "status": ex.status,
            "error_code": ex.error_code,
            "cached": ex.cache is not None,
            "stream": ex.stream,
            "created_at": ex.created_at,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost": cost,
            "saved_cost": saved,
            "cache": ex.cache,
            "deployment": dep.name if dep is not None else "",
            "attempts": len(ex.attempts),
            "attempt_log": ex.attempt_log(),
            "route_reason": route.reason or None if route is not None else None,
            "region": ex.region,
        }
        self.publisher.emit(event)
        if self.access_log:
            access.info("request", extra=dict(event))
        if ex.reservation is not None:
            self.background.run("admission", self.admission.settle(ex), essential=True)
        if self.cache_enabled and ex.completion is not None and ex.status == 200 and ex.cache is None:
            self.background.run("cache_store", self.cache.store(ex), essential=False)
        if self.stored is not None and self.stored.wanted(ex):  # `store: true`, kept by analytics
            self.background.run("store_completion", self.stored.store(ex), essential=False)
