"""Stream → store: read a batch, insert it idempotently, acknowledge only after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.analytics.store import UsageStore
from services.kernel.stream import Entry, UsageStream, events_of
from services.kernel.usage import BadEvent, UsageEvent, decode_event

log = logging.getLogger("gateway.analytics.consumer")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.read = Counter("gateway_analytics_events_read_total", "Stream entries read", registry=registry)
        self.stored = Counter(
            "gateway_analytics_events_stored_total",
            "Usage rows newly inserted (duplicates excluded)",
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_analytics_events_rejected_total",
            "Stream lines that were not valid usage events",
            registry=registry,
        )
        self.failures = Counter(
            "gateway_analytics_batch_failures_total",
            "Batches that could not be stored or acknowledged (retried)",
            registry=registry,
        )
        self.lag = Gauge(
            "gateway_analytics_last_batch_age_seconds",
            "Age of the newest event in the last stored batch",
            registry=registry,
        )


class UsageConsumer:
    """One member of the consumer group; run several for throughput."""

    def __init__(
        self,
        stream: UsageStream,
        store: UsageStore,
        metrics: ConsumerMetrics,
        *,
        name: str,
        batch: int = 32,  # stream entries per read; each holds up to a flush of events
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.stream = stream
        self.store = store
        self.metrics = metrics
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._stopping = asyncio.Event()

    async def process(self, entries: list[Entry]) -> int:
        """Store then ack one batch; raises (nothing acked) if the store fails."""
        good: list[UsageEvent] = []
        for entry_id, data in entries:
            for raw in events_of(data):
                try:
                    good.append(decode_event(raw))
                except BadEvent as exc:
                    self.metrics.rejected.inc()
                    log.warning("rejected usage event", extra={"entry": entry_id, "reason": str(exc)})
        self.metrics.read.inc(len(good))
        inserted = await self.store.insert(good)
        await self.stream.ack([entry_id for entry_id, _ in entries])
        self.metrics.stored.inc(inserted)
        if good:
            self.metrics.lag.set(max(0.0, time.time() - good[-1]["created_at"]))
        return inserted

    async def drain_pending(self) -> None:
        while entries := await self.stream.read(self.name, count=self.batch, block_ms=0, pending=True):
            await self.process(entries)

    async def run(self) -> None:
        backoff = 0.1
        retry_pending = True
        last_claim = 0.0
        while not self._stopping.is_set():
            try:
                if retry_pending:
                    await self.stream.ensure_group()
                    await self.drain_pending()
                    retry_pending = False
                now = time.monotonic()
                if now - last_claim > self.claim_idle_ms / 1000:
                    last_claim = now
                    stale = await self.stream.claim_stale(
                        self.name, min_idle_ms=self.claim_idle_ms, count=self.batch
                    )
                    if stale:
                        await self.process(stale)
                entries = await self.stream.read(self.name, count=self.batch, block_ms=self.block_ms)
                if entries:
                    await self.process(entries)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store or stream down: keep entries pending, retry
                self.metrics.failures.inc()
                retry_pending = True
                log.warning(
                    "usage batch not stored; will retry",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)

    async def drain(self) -> None:
        """Store everything already in the stream (embedded shutdown)."""
        await self.drain_pending()
        while entries := await self.stream.read(self.name, count=self.batch, block_ms=1):
            await self.process(entries)

    def stop(self) -> None:
        self._stopping.set()
