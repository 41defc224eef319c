"""Usage events leave the hot path here: buffered, published to the stream in
batches, spooled to disk when the stream is unreachable, replayed when it is back.

`emit` is synchronous and cheap (one orjson dump, one append); the request never
waits for Redis.

A batch leaves the buffer only once the stream or the spool has taken it, so an
event is lost only when both refuse for long enough that the buffer reaches
`max_buffered`: events emitted past that bound are dropped (counted as
`dropped`, logged as errors), and so are those still held when the process stops.
Every failure is retried with backoff; the publishing task never ends on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Generator
from pathlib import Path

import orjson

from services.kernel.stream import UsageStream
from services.kernel.usage import UsageEvent
from services.router.metrics import RouterMetrics
from services.router.spool import Spool

log = logging.getLogger("gateway.router.usage")


class _Target:
    """Backoff and up/down state of one place events go (the stream or the spool)."""

    def __init__(self, name: str, first: float = 0.05, most: float = 5.0) -> None:
        self.name = name
        self.first, self.most = first, most
        self.up = True
        self.delay = 0.0
        self.next_try = 0.0

    def due(self, now: float) -> bool:
        return self.up or now >= self.next_try

    def failed(self, now: float) -> bool:
        """Back off; True when this failure is a change of state (worth one log line)."""
        changed = self.up
        self.up = False
        self.delay = min(self.most, self.delay * 2 or self.first)
        self.next_try = now + self.delay
        return changed

    def succeeded(self) -> bool:
        changed = not self.up
        self.up, self.delay, self.next_try = True, 0.0, 0.0
        return changed

    def retry_now(self) -> None:
        self.next_try = 0.0


@dataclasses.dataclass
class _Replay:
    """A claimed spool file being replayed a few batches per flush."""

    path: Path
    batches: Generator[list[bytes], None, None]
    events: int = 0


class UsagePublisher:
    def __init__(
        self,
        stream: UsageStream,
        spool: Spool,
        metrics: RouterMetrics,
        *,
        flush_interval: float,
        max_batch: int,
        max_buffered: int = 100_000,
        replay_every: float = 2.0,
    ) -> None:
        self.stream = stream
        self.spool = spool
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self.replay_every = replay_every
        self._buffer: list[bytes] = []
        self._lock = asyncio.Lock()  # one flush at a time: the run loop's or the final one
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_replay = 0.0
        self._to_stream = _Target("stream")
        self._to_spool = _Target("spool")
        self._dropping = 0  # events dropped since the buffer last had room
        self._replaying: _Replay | None = None

    def emit(self, event: UsageEvent) -> None:
        if len(self._buffer) >= self.max_buffered:
            self._drop(1)
            return
        self._buffer.append(orjson.dumps(event))
        # Woken by the first event (an idle publisher sleeps on no timer) and by a full batch.
        if len(self._buffer) == 1 or len(self._buffer) >= self.max_batch:
            self._wake.set()

    def _drop(self, n: int) -> None:
        self.metrics.usage_events.labels("dropped").inc(n)
        if not self._dropping:
            log.error(
                "usage events dropped: the stream and the spool both refuse and the buffer is full",
                extra={"max_buffered_events": self.max_buffered},
            )
        self._dropping += n

    def _room_again(self) -> None:
        if self._dropping and len(self._buffer) < self.max_buffered:
            log.error("usage buffer has room again", extra={"dropped_events": self._dropping})
            self._dropping = 0

    def _failed(self, target: _Target, exc: BaseException) -> None:
        self.metrics.usage_failures.labels(target.name).inc()
        if target.failed(time.monotonic()):
            if target is self._to_stream:
                log.warning("usage stream unreachable; spooling events", extra={"error": type(exc).__name__})
            else:
                log.error(
                    "usage spool refuses writes; holding events in memory",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )

    def _succeeded(self, target: _Target) -> None:
        if target.succeeded():
            log.info(f"usage {target.name} accepts events again")

    async def _deliver(self, batch: list[bytes]) -> bool:
        """Hand one batch to the stream, else to the spool; False if neither took it."""
        if self._to_stream.due(time.monotonic()):
            try:
                await self.stream.publish(batch)
            except Exception as exc:  # any stream failure: try the disk
                self._failed(self._to_stream, exc)
            else:
                self._succeeded(self._to_stream)
                self.metrics.usage_events.labels("published").inc(len(batch))
                return True
        if self._to_spool.due(time.monotonic()):
            try:
                await asyncio.to_thread(self.spool.append, batch)
            except Exception as exc:  # disk full, read-only, gone: keep them in memory
                self._failed(self._to_spool, exc)
            else:
                self._succeeded(self._to_spool)
                self.metrics.usage_events.labels("spooled").inc(len(batch))
                return True
        return False

    async def _replay_some(self, most: int = 8) -> None:
        """Replay up to `most` batches of the spool, then let the buffer go first again:
        a spool written through a long outage must not hold new events back meanwhile."""
        if self._replaying is None:
            now = time.monotonic()
            if now - self._last_replay <= self.replay_every:
                return
            # Looked at once per `replay_every`, found or not (a look lists the spool directory).
            self._last_replay = now
            if not self.spool.has_events():
                return
            try:
                path = await asyncio.to_thread(self.spool.claim)
            except OSError as exc:
                self._failed(self._to_spool, exc)
                return
            if path is None:
                return
            self._replaying = _Replay(path, self.spool.batches(path, self.max_batch))
        replay = self._replaying
        for _ in range(most):
            try:
                batch = await asyncio.to_thread(next, replay.batches, None)
            except OSError as exc:  # the claimed file cannot be read: it stays, retried later
                self._failed(self._to_spool, exc)
                self._end_replay()
                return
            if batch is None:
                self._end_replay()
                self.spool.done(replay.path)
                log.info("replayed spooled usage events", extra={"events": replay.events})
                return
            try:
                await self.stream.publish(batch)
            except Exception as exc:  # still down: the claimed file stays and is retried whole
                self._failed(self._to_stream, exc)
                self._end_replay()
                return
            self._succeeded(self._to_stream)
            replay.events += len(batch)
            self.metrics.usage_events.labels("replayed").inc(len(batch))

    def _end_replay(self) -> None:
        if self._replaying is not None:
            self._replaying.batches.close()
            self._replaying = None

    async def flush(self, *, replay: bool = True) -> None:
        """Send what is buffered; stops at the first batch nobody takes (kept for later)."""
        async with self._lock:
            while self._buffer:
                batch = self._buffer[: self.max_batch]
                if not await self._deliver(batch):
                    break
                # Only now, and only these: emit() appends behind them meanwhile.
                del self._buffer[: len(batch)]
            self._room_again()
            self.metrics.usage_buffer.set(len(self._buffer))
            # A replay also probes a stream that was down: it is tried when due.
            if replay and not self._buffer and self._to_stream.due(time.monotonic()):
                await self._replay_some()

    def _blocked_for(self) -> float:
        """Seconds until the stream or the spool may be tried again, when both are
        backing off with events waiting; else 0."""
        if not self._buffer:
            return 0.0
        now = time.monotonic()
        if self._to_stream.due(now) or self._to_spool.due(now):
            return 0.0
        return min(self._to_stream.next_try, self._to_spool.next_try) - now

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                blocked = self._blocked_for()
                if blocked > 0:  # wake on time, not on every emit into a full buffer
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=blocked)
                else:
                    if not self._buffer:
                        # Idle: sleep until an event arrives, or the spool is due for a look
                        # (a spool written during an outage, by this process or another).
                        await self._until_woken(max(self.replay_every, self.flush_interval))
                    if self._buffer and len(self._buffer) < self.max_batch:
                        # Events wait at most one interval, so that they travel in batches.
                        await self._until_woken(self.flush_interval)
                self.metrics.usage_buffer.set(len(self._buffer))
                await self.flush()
            except Exception:  # not an outage (those are handled above): a bug. Keep going.
                log.exception("usage publisher error; continuing")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    async def _until_woken(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that lands
        # as the event is set (an emit and a shutdown together), and the task never ends.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def aclose(self) -> None:
        """The final flush (after the run task is cancelled): one more try on the stream
        and the spool whatever their backoff; what neither takes is lost, loudly."""
        self._stop.set()
        self._wake.set()
        self._to_stream.retry_now()
        self._to_spool.retry_now()
        try:
            await self.flush(replay=False)
        except Exception:
            log.exception("usage final flush failed")
        if self._buffer:
            lost = len(self._buffer)
            self._buffer.clear()
            self.metrics.usage_events.labels("dropped").inc(lost)
            self.metrics.usage_buffer.set(0)
            log.error(
                "usage events lost at shutdown: neither the stream nor the spool took them",
                extra={"events": lost},
            )
