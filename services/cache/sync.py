"""Background work of a cache replica: keep its index in step with storage.

`follow` rebuilds the index from storage at start, then applies every change any
replica makes (read from the change stream as it is written, so an entry stored
through one replica is searchable through all within milliseconds); when it fell
too far behind (the stream was trimmed past its position, or storage was
unreachable for long) it rebuilds again. `sweep` removes expired entries, and
`publish_counts` adds this replica's counters to the shared statistics.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.cache.semantic import SemanticCache

log = logging.getLogger("gateway.cache.sync")


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for it to end. Cancelled again until it does: on
    Python 3.11 a cancel that lands as a client's read timeout fires is absorbed by the
    timeout (redis-py then retries the read), and one cancel would be lost."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    if not task.cancelled() and task.exception() is not None:
        log.warning("cache background task failed", extra={"error": type(task.exception()).__name__})


async def rebuild(cache: SemanticCache) -> str:
    """Load every vector from storage; returns the change-stream position to follow from."""
    started = time.perf_counter()
    cursor, changes = await cache.entries.snapshot()
    cache.index.clear()
    cache.apply(changes, source="rebuild")
    log.info(
        "cache index rebuilt",
        extra={"entries": len(changes), "seconds": round(time.perf_counter() - started, 3)},
    )
    return cursor


async def follow(cache: SemanticCache, *, block_ms: int = 1000, retry_s: float = 1.0) -> None:
    """Rebuild, then follow the change stream until cancelled; storage errors are retried."""
    cursor: str | None = None
    while True:
        try:
            if cursor is None:
                cursor = await rebuild(cache)
                cache.ready = True
            result = await cache.entries.changes(cursor, block_ms)
            if result is None:
                log.warning("cache change stream trimmed past this replica: rebuilding")
                cursor = None
                continue
            cursor, changes = result
            if changes:
                cache.apply(changes, source="sync")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # storage down or slow: keep the index, retry, catch up after
            cache.metrics.sync_errors.inc()
            log.warning("cache sync failed; retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(retry_s)


async def sweep(cache: SemanticCache, every_s: float) -> None:
    """Remove expired entries from storage and from the index, every `every_s`."""
    while True:
        await asyncio.sleep(every_s)
        try:
            cache.apply(await cache.entries.sweep(time.time()))
        except Exception as exc:
            log.warning("cache sweep failed", extra={"error": type(exc).__name__})
        cache.index.sweep()


async def publish_counts(cache: SemanticCache, every_s: float = 1.0) -> None:
    """Add this replica's counters to the shared statistics, batched."""
    while True:
        await asyncio.sleep(every_s)
        await flush_counts(cache)


async def flush_counts(cache: SemanticCache) -> None:
    counts = cache.metrics.take()
    if not counts:
        return
    try:
        await cache.entries.add_counts(counts)
    except Exception as exc:  # kept for the next try
        cache.metrics.give_back(counts)
        log.info("cache statistics not published", extra={"error": type(exc).__name__})
