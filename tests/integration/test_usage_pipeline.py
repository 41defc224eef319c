"""Router publisher → Redis stream → analytics consumer → PostgreSQL, on the real servers."""

import asyncio
import time

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.store import PostgresUsageStore
from services.kernel.stream import RedisUsageStream, events_of
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.usage import UsagePublisher
from tests.conftest import DATABASE_URL, unique
from tests.integration.events import make_event


async def count_rows(pg, tag: str) -> int:
    return await pg.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag)


async def wait_rows(pg, tag: str, n: int, deadline: float = 20.0) -> int:
    end = time.monotonic() + deadline
    while (rows := await count_rows(pg, tag)) < n and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return rows


@pytest.fixture
async def pipeline(redis, pg):
    name = unique("test:usage")
    tag = unique("pipeline")
    store = await PostgresUsageStore.open(DATABASE_URL)
    stream = RedisUsageStream(redis, name, "analytics")
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    task = asyncio.create_task(consumer.run())
    yield stream, tag, consumer
    consumer.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    await redis.delete(name)
    await pg.execute("DELETE FROM usage_events WHERE key_id = $1", tag)


async def test_n_events_give_exactly_n_rows_even_when_redelivered(pipeline, pg):
    stream, tag, consumer = pipeline
    events = [make_event(tag, i) for i in range(200)]
    await stream.publish([orjson.dumps(e) for e in events])
    await stream.publish([orjson.dumps(e) for e in events[:50]])  # a replayed spool, say
    assert await wait_rows(pg, tag, 200) == 200
    await asyncio.sleep(0.3)  # let any duplicate delivery land before counting again
    assert await count_rows(pg, tag) == 200
    assert consumer.metrics.stored._value.get() == 200


async def test_bad_entries_are_rejected_without_stopping_the_consumer(pipeline, pg):
    stream, tag, consumer = pipeline
    await stream.publish([b"not json", orjson.dumps({"event_id": "x"}), orjson.dumps(make_event(tag))])
    assert await wait_rows(pg, tag, 1) == 1
    assert consumer.metrics.rejected._value.get() == 2


async def test_events_stay_pending_while_the_store_fails(redis, pg):
    name, tag = unique("test:usage"), unique("pipeline")
    store = await PostgresUsageStore.open(DATABASE_URL)
    stream = RedisUsageStream(redis, name, "analytics")
    real_insert = store.insert
    failures = 0

    async def failing_insert(events):
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OSError("database down")
        return await real_insert(events)

    store.insert = failing_insert  # type: ignore[method-assign]
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    try:
        await stream.ensure_group()
        await stream.publish([orjson.dumps(make_event(tag, i)) for i in range(10)])
        task = asyncio.create_task(consumer.run())
        assert await wait_rows(pg, tag, 10) == 10
        assert failures == 3
        assert consumer.metrics.failures._value.get() == 3
        assert await redis.xlen(name) == 0  # acked (and deleted) only after the commit
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await store.close()
        await redis.delete(name)
        await pg.execute("DELETE FROM usage_events WHERE key_id = $1", tag)


async def test_publisher_spools_while_redis_is_down_and_replays(redis, tmp_path):
    name, tag = unique("test:usage"), unique("spool")
    down = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    spool = Spool(tmp_path / "spool")
    metrics = RouterMetrics(CollectorRegistry())
    publisher = UsagePublisher(
        RedisUsageStream(down, name, "analytics"),
        spool,
        metrics,
        flush_interval=0.01,
        max_batch=7,
        replay_every=0.0,
    )
    try:
        for i in range(20):
            publisher.emit(make_event(tag, i))
        await publisher.flush()
        assert spool.has_events()
        assert metrics.usage_events.labels("spooled")._value.get() == 20
        # Redis is back: the next flush publishes new events and replays the spool.
        publisher.stream = RedisUsageStream(redis, name, "analytics")
        publisher.emit(make_event(tag, 20))
        await publisher.flush()
        await publisher.flush()
        assert not spool.has_events()
        entries = await redis.xrange(name)
        ids = sorted(
            orjson.loads(line)["request_id"] for _, fields in entries for line in events_of(fields[b"e"])
        )
        assert ids == sorted(f"{tag}-{i}" for i in range(21))
    finally:
        await down.aclose()
        await redis.delete(name)
