"""Stream → store: read a batch, insert it idempotently, acknowledge only after commit.

One bad event must not hold up the ones behind it. An event that does not decode
(`decode_event` checks types and ranges) and an event the store refuses
(`RefusedEvents`, found by splitting the refused batch in halves until the culprits
are alone) go to the dead-letter stream, atomically with the acknowledgement of the
entry that carried them; their neighbours are stored. Any other store failure means
the store is down: nothing is acknowledged, the batch stays pending and is retried
with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.analytics.store import RefusedEvents, UsageStore
from services.kernel.stream import DeadLetter, Entry, UsageStream, events_of
from services.kernel.usage import BadEvent, UsageEvent, decode_event

log = logging.getLogger("gateway.analytics.consumer")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
        self.dead_lettered = Counter(
            "gateway_analytics_events_dead_lettered_total",
            "Events moved to the dead-letter stream, by stage: invalid (refused by decoding),"
            " refused (refused by the store)",
            ["stage"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "gateway_analytics_dead_letters",
            "Entries in the dead-letter stream, as last seen",
            registry=registry,
        )
        self.lag = Gauge(
            "gateway_analytics_last_batch_age_seconds",
            "Age of the newest event in the last stored batch",
            registry=registry,
        )
        self.lag_entries = Gauge(
            "gateway_analytics_consumer_lag_entries",
            "Stream entries not yet stored and acknowledged (waiting or pending)",
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "gateway_analytics_consumer_lag_seconds",
            "Age of the oldest stream entry not yet stored and acknowledged (0 when none)",
            registry=registry,
        )
        self.expired = Counter(
            "gateway_analytics_events_expired_total",
            "Events older than the retention horizon, acknowledged without being stored",
            registry=registry,
        )
        self.partitions_dropped = Counter(
            "gateway_analytics_partitions_dropped_total",
            "Partitions (or, embedded, rows) dropped by retention, by table",
            ["table"],
            registry=registry,
        )
        self.legacy_imported = Counter(
            "gateway_analytics_legacy_rows_imported_total",
            "Rows of the version-1 usage table copied into the compact layout",
            registry=registry,
        )
        self.maintenance_failures = Counter(
            "gateway_analytics_maintenance_failures_total",
            "Runs of partition creation and retention that failed (retried)",
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
        linger_ms: float = 0,
    ) -> None:
        self.stream = stream
        self.store = store
        self.metrics = metrics
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.linger_ms = linger_ms
        self._stopping = asyncio.Event()

    async def process(self, entries: list[Entry]) -> int:
        """Store then ack one batch; raises (nothing acked) if the store is down.

        Events refused by decoding or by the store are dead-lettered with the ack."""
        good: list[UsageEvent] = []
        origin: list[tuple[str, bytes]] = []  # (entry id, raw line) of each good event
        dead: list[DeadLetter] = []
        for entry_id, data in entries:
            for raw in events_of(data):
                try:
                    good.append(decode_event(raw))
                except BadEvent as exc:
                    self.metrics.rejected.inc()
                    dead.append(DeadLetter(raw, str(exc), "invalid", entry_id))
                else:
                    origin.append((entry_id, raw))
        self.metrics.read.inc(len(good))
        inserted, refused = await self._insert(good, 0)
        for index, reason in refused:
            entry_id, raw = origin[index]
            dead.append(DeadLetter(raw, reason, "refused", entry_id))
        await self.stream.ack([entry_id for entry_id, _ in entries], dead=dead)
        if good:
            self.metrics.lag.set(max(0.0, time.time() - good[-1]["created_at"]))
        if dead:
            for letter in dead:
                self.metrics.dead_lettered.labels(letter.stage).inc()
                log.warning(
                    "usage event dead-lettered",
                    extra={"entry": letter.source, "stage": letter.stage, "reason": letter.reason[:300]},
                )
            await self._count_dead_letters()
        return inserted

    async def _count_dead_letters(self) -> None:
        """Refresh the gauge; a failure here must not hold up storing events."""
        try:
            self.metrics.dead_letters.set(await self.stream.dead_letter_count())
        except Exception as exc:  # the gauge keeps its last value
            log.warning("dead letters not counted", extra={"error": type(exc).__name__})

    async def _insert(self, events: list[UsageEvent], offset: int) -> tuple[int, list[tuple[int, str]]]:
        """Insert; when the store refuses the data, halve until each refused event is
        alone. Returns rows inserted and (index, reason) of each refused event. A store
        that is down raises, whatever was inserted so far (it dedupes on the retry)."""
        try:
            inserted = await self.store.insert(events)
        except RefusedEvents as exc:
            if len(events) == 1:
                return 0, [(offset, str(exc))]
        else:
            # Counted at commit, not at ack: an ack lost to a Redis outage does not make
            # the rows any less inserted (the redelivery inserts none).
            self.metrics.stored.inc(inserted)
            return inserted, []
        half = len(events) // 2
        first, refused_first = await self._insert(events[:half], offset)
        second, refused_second = await self._insert(events[half:], offset + half)
        return first + second, refused_first + refused_second

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
                    await self._count_dead_letters()
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
                if entries and len(entries) < self.batch and self.linger_ms > 0:
                    # Caught up: let the next entries gather, so that one insert and one
                    # acknowledgement carry them all (a batch's round trips cost more CPU
                    # than its events do). Behind, read again at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=self.linger_ms / 1000)
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
