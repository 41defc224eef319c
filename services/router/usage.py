"""Usage events leave the hot path here: buffered, published to the stream in
batches, spooled to disk when the stream is unreachable, replayed when it is back.

`emit` is synchronous and cheap (one orjson dump, one append); the request never
waits for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson

from services.kernel.stream import UsageStream
from services.kernel.usage import UsageEvent
from services.router.metrics import RouterMetrics
from services.router.spool import Spool

log = logging.getLogger("gateway.router.usage")


class UsagePublisher:
    def __init__(
        self,
        stream: UsageStream,
        spool: Spool,
        metrics: RouterMetrics,
        *,
        flush_interval: float,
        max_batch: int,
        replay_every: float = 2.0,
    ) -> None:
        self.stream = stream
        self.spool = spool
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.replay_every = replay_every
        self._buffer: list[bytes] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_replay = 0.0
        self._stream_ok = True

    def emit(self, event: UsageEvent) -> None:
        self._buffer.append(orjson.dumps(event))
        if len(self._buffer) >= self.max_batch:
            self._wake.set()

    async def _publish(self, batch: list[bytes]) -> None:
        try:
            await self.stream.publish(batch)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.spool.append, batch)
            raise
        except Exception as exc:  # any stream failure: keep the events on disk
            await asyncio.to_thread(self.spool.append, batch)
            self.metrics.usage_events.labels("spooled").inc(len(batch))
            if self._stream_ok:
                log.warning("usage stream unreachable; spooling events", extra={"error": type(exc).__name__})
            self._stream_ok = False
            return
        self.metrics.usage_events.labels("published").inc(len(batch))
        self._stream_ok = True

    async def _replay(self) -> None:
        self._last_replay = time.monotonic()
        path, events = await asyncio.to_thread(self.spool.take)
        if path is None:
            return
        for i in range(0, len(events), self.max_batch):
            try:
                await self.stream.publish(events[i : i + self.max_batch])
            except Exception:  # still down: the claimed file stays and is retried
                self._stream_ok = False
                return
            self.metrics.usage_events.labels("replayed").inc(len(events[i : i + self.max_batch]))
        self.spool.done(path)
        log.info("replayed spooled usage events", extra={"events": len(events)})

    async def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
            await self._publish(batch)
        self.metrics.usage_buffer.set(0)
        if (
            self._stream_ok
            and time.monotonic() - self._last_replay > self.replay_every
            and self.spool.has_events()
        ):
            await self._replay()

    async def run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            self._wake.clear()
            self.metrics.usage_buffer.set(len(self._buffer))
            await self.flush()

    async def aclose(self) -> None:
        self._stopping = True
        self._wake.set()
        await self.flush()
