"""Router publisher → Redis stream → analytics consumer → PostgreSQL, on the real servers."""

import asyncio
import time

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.postgres import PostgresUsageStore
from services.kernel.stream import RedisUsageStream
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.usage import UsagePublisher
from tests.conftest import unique
from tests.integration.events import make_event
from tests.integration.streams import stream_events, wait_for, wait_settled


async def count_rows(pg, tag: str) -> int:
    return await pg.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag)


async def wait_rows(pg, tag: str, n: int, deadline: float = 20.0) -> int:
    end = time.monotonic() + deadline
    while (rows := await count_rows(pg, tag)) < n and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return rows


@pytest.fixture
async def pipeline(redis, pg_schema):
    name = unique("test:usage")
    tag = unique("pipeline")
    store = await PostgresUsageStore.open(pg_schema)
    stream = RedisUsageStream(redis, name, "analytics")
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    task = asyncio.create_task(consumer.run())
    yield stream, tag, consumer
    consumer.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    await redis.delete(name, f"{name}:dead")


async def test_n_events_give_exactly_n_rows_even_when_redelivered(pipeline):
    stream, tag, consumer = pipeline
    pg = consumer.store.pool
    events = [make_event(tag, i) for i in range(200)]
    await stream.publish([orjson.dumps(e) for e in events])
    await stream.publish([orjson.dumps(e) for e in events[:50]])  # a replayed spool, say
    assert await wait_rows(pg, tag, 200) == 200
    await wait_settled(stream.redis, stream.stream)  # the duplicates too were read and acked
    assert await count_rows(pg, tag) == 200
    assert consumer.metrics.stored._value.get() == 200


async def test_bad_entries_are_rejected_without_stopping_the_consumer(pipeline):
    stream, tag, consumer = pipeline
    pg = consumer.store.pool
    await stream.publish([b"not json", orjson.dumps({"event_id": "x"}), orjson.dumps(make_event(tag))])
    assert await wait_rows(pg, tag, 1) == 1
    await wait_settled(stream.redis, stream.stream)
    assert consumer.metrics.rejected._value.get() == 2
    dead = await stream.dead_letters(count=10)
    assert [(d.data, d.stage) for _, d in dead] == [
        (b"not json", "invalid"),
        (b'{"event_id":"x"}', "invalid"),
    ]


async def test_an_out_of_range_event_does_not_hold_up_the_ones_behind_it(pipeline):
    """2^31 prompt tokens: PostgreSQL's integer refuses it. It goes to the dead-letter
    stream; its neighbours in the same entry and every later entry are stored."""
    stream, tag, consumer = pipeline
    pg = consumer.store.pool
    poison = make_event(tag, 5, prompt_tokens=2**31)
    first = [make_event(tag, i) for i in range(5)] + [poison] + [make_event(tag, i) for i in range(6, 10)]
    await stream.publish([orjson.dumps(e) for e in first])
    await stream.publish([orjson.dumps(make_event(tag, i)) for i in range(10, 20)])
    assert await wait_rows(pg, tag, 19) == 19
    await wait_settled(stream.redis, stream.stream)
    assert await count_rows(pg, tag) == 19
    [(_, dead)] = await stream.dead_letters(count=10)
    assert orjson.loads(dead.data)["event_id"] == poison["event_id"]
    assert dead.stage == "invalid"
    assert "prompt_tokens" in dead.reason
    assert await stream.dead_letter_count() == 1
    dead_lettered = consumer.metrics.registry.get_sample_value(
        "gateway_analytics_events_dead_lettered_total", {"stage": "invalid"}
    )
    assert dead_lettered == 1


async def test_events_stay_pending_while_the_store_fails(redis, pg_schema):
    name, tag = unique("test:usage"), unique("pipeline")
    store = await PostgresUsageStore.open(pg_schema)
    pg = store.pool
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
        await wait_settled(redis, name)  # the ack follows the commit: wait for it, then look
        assert failures == 3
        assert consumer.metrics.failures._value.get() == 3
        assert await redis.xlen(name) == 0  # acknowledged entries are deleted
        assert await stream.dead_letter_count() == 0  # a failing store is not a reason to give up
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await store.close()
        await redis.delete(name, f"{name}:dead")


async def test_a_caught_up_consumer_lets_entries_gather_into_one_insert(redis, pg_schema):
    """The first entry after a quiet spell is stored at once; the entries published
    while the consumer lingers after it are read, inserted and acknowledged together."""
    name, tag = unique("test:usage"), unique("linger")
    store = await PostgresUsageStore.open(pg_schema)
    stream = RedisUsageStream(redis, name, "analytics")
    real_insert = store.insert
    inserts: list[int] = []

    async def counting_insert(events):
        inserts.append(len(events))
        return await real_insert(events)

    store.insert = counting_insert  # type: ignore[method-assign]
    consumer = UsageConsumer(
        stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50, linger_ms=2000
    )
    task = asyncio.create_task(consumer.run())
    try:
        await stream.ensure_group()
        await stream.publish([orjson.dumps(make_event(tag, 0))])
        assert await wait_rows(store.pool, tag, 1) == 1
        for i in range(1, 6):  # five flushes of the router, well within the linger
            await stream.publish([orjson.dumps(make_event(tag, i))])
        assert await wait_rows(store.pool, tag, 6) == 6
        await wait_settled(redis, name)
        assert inserts == [1, 5]
    finally:
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        await redis.delete(name, f"{name}:dead")


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
    task = asyncio.create_task(publisher.run())
    try:
        for i in range(20):
            publisher.emit(make_event(tag, i))
        await wait_for(
            lambda: metrics.usage_events.labels("spooled")._value.get() == 20, what="20 events spooled"
        )
        assert spool.has_events()
        # Redis is back: new events are published and the spool is replayed.
        publisher.stream = RedisUsageStream(redis, name, "analytics")
        publisher.emit(make_event(tag, 20))
        expected = sorted(f"{tag}-{i}" for i in range(21))

        async def replayed() -> bool:
            ids = sorted(orjson.loads(line)["request_id"] for line in await stream_events(redis, name))
            return ids == expected and not spool.has_events()

        await wait_for(replayed, what="the spool replayed into the stream")
        # All 20 went through the spool; the 21st too if the stream was still backing off.
        replayed = metrics.usage_events.labels("replayed")._value.get()
        published = metrics.usage_events.labels("published")._value.get()
        assert replayed >= 20
        assert replayed + published == 21
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await down.aclose()
        await redis.delete(name)
