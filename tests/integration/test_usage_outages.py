"""Every event has exactly one row through the outages the pipeline is built for: Redis
killed and restarted, Redis paused, PostgreSQL stopped. Router side and analytics side
run as they do in the services (publisher task, consumer task), on private servers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.postgres import PostgresUsageStore
from services.analytics.store import UsageStore
from services.kernel.stream import RedisUsageStream
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.usage import UsagePublisher
from tests.conftest import unique
from tests.integration.events import make_event
from tests.integration.streams import stream_settled, wait_for

STREAM = "gateway:usage"


class Pipeline:
    """Publisher → private Redis → consumer → store, with the services' client settings."""

    def __init__(self, redis_url: str, store: UsageStore, spool_dir: Path) -> None:
        self.tag = unique("outage")
        # Router: short socket timeouts; analytics: none (its reads block on purpose).
        self.router_redis = aioredis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=1.0, retry=None
        )
        self.analytics_redis = aioredis.from_url(redis_url)
        self.store = store
        self.router_registry = CollectorRegistry()
        self.spool = Spool(spool_dir)
        self.publisher = UsagePublisher(
            RedisUsageStream(self.router_redis, STREAM, "analytics"),
            self.spool,
            RouterMetrics(self.router_registry),
            flush_interval=0.005,
            max_batch=16,
            replay_every=0.2,
        )
        self.consumer = UsageConsumer(
            RedisUsageStream(self.analytics_redis, STREAM, "analytics"),
            store,
            ConsumerMetrics(CollectorRegistry()),
            name="analytics-1",
            block_ms=50,
        )
        self.emitted = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.consumer.stream.ensure_group()
        self.tasks = [asyncio.create_task(self.publisher.run()), asyncio.create_task(self.consumer.run())]

    async def emit(self, n: int) -> None:
        """n requests finishing, a few at a time, as a loaded router emits them."""
        for _ in range(n):
            self.publisher.emit(make_event(self.tag, self.emitted))
            self.emitted += 1
            if self.emitted % 5 == 0:
                await asyncio.sleep(0.001)

    def router_sample(self, name: str, **labels: str) -> float:
        return self.router_registry.get_sample_value(name, labels) or 0.0

    async def settled(self) -> bool:
        """Nothing left anywhere: the router's buffer and spool empty, the stream acked."""
        if self.router_sample("gateway_usage_events_buffered") or self.publisher._buffer:
            return False
        if self.spool.has_events():
            return False
        with contextlib.suppress(OSError, aioredis.RedisError):
            return await stream_settled(self.analytics_redis, STREAM)
        return False

    async def close(self) -> None:
        self.consumer.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.publisher.aclose()
        await self.router_redis.aclose()
        await self.analytics_redis.aclose()


async def rows(conn: asyncpg.Pool | asyncpg.Connection, tag: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS distinct_ids FROM usage_events"
        " WHERE key_id = $1",
        tag,
    )
    return row["n"], row["distinct_ids"]


async def assert_exactly_once(pipeline: Pipeline, conn: asyncpg.Pool | asyncpg.Connection) -> None:
    n = pipeline.emitted

    async def all_stored() -> bool:
        return (await rows(conn, pipeline.tag))[0] >= n

    await wait_for(all_stored, what=f"{n} rows", deadline=60)
    await wait_for(pipeline.settled, what="the pipeline to settle", deadline=60)
    assert await rows(conn, pipeline.tag) == (n, n)
    # Inserted (not deduplicated) rows: each event was stored once, whatever was redelivered.
    assert pipeline.consumer.metrics.stored._value.get() == n


async def test_redis_killed_and_restarted(private_redis, pg_schema, tmp_path):
    store = await PostgresUsageStore.open(pg_schema)
    pipeline = Pipeline(private_redis.url, store, tmp_path / "spool")
    try:
        await pipeline.start()
        await pipeline.emit(100)
        private_redis.kill()  # some events in the buffer, some in the stream, some stored
        await pipeline.emit(100)
        await wait_for(
            lambda: pipeline.router_sample("gateway_usage_events_total", outcome="spooled") > 0,
            what="events to be spooled while Redis is down",
        )
        await pipeline.emit(50)
        private_redis.start()
        await pipeline.emit(100)
        await assert_exactly_once(pipeline, store.pool)
        assert pipeline.router_sample("gateway_usage_events_total", outcome="replayed") > 0
    finally:
        await pipeline.close()
        await store.close()


async def test_redis_paused(private_redis, pg_schema, tmp_path):
    """A paused Redis times writes out, and may apply them when it resumes: those events
    are both in the stream and in the spool, and still give one row each."""
    store = await PostgresUsageStore.open(pg_schema)
    pipeline = Pipeline(private_redis.url, store, tmp_path / "spool")
    try:
        await pipeline.start()
        await pipeline.emit(100)
        private_redis.pause()
        try:
            await pipeline.emit(100)
            await wait_for(
                lambda: pipeline.router_sample("gateway_usage_events_total", outcome="spooled") > 0,
                what="a write to time out and be spooled",
            )
            await pipeline.emit(50)
        finally:
            private_redis.resume()
        await pipeline.emit(100)
        await assert_exactly_once(pipeline, store.pool)
    finally:
        await pipeline.close()
        await store.close()


async def test_postgres_stopped_and_started(private_redis, private_pg, tmp_path):
    store = await PostgresUsageStore.open(private_pg.dsn)
    pipeline = Pipeline(private_redis.url, store, tmp_path / "spool")
    conn = None
    try:
        await pipeline.start()
        await pipeline.emit(100)
        private_pg.stop()
        await pipeline.emit(100)
        await wait_for(lambda: pipeline.consumer.metrics.failures._value.get() > 0, what="inserts to fail")
        await pipeline.emit(50)
        private_pg.start()
        await pipeline.emit(100)
        conn = await asyncpg.connect(private_pg.dsn)
        await assert_exactly_once(pipeline, conn)
        assert await pipeline.consumer.stream.dead_letter_count() == 0
    finally:
        private_pg.ensure_started()
        await pipeline.close()
        await store.close()
        if conn is not None:
            await conn.close()
