"""Poison events: isolated, kept in a bounded dead-letter stream, replayable; a store
that is down is not a reason to dead-letter anything."""

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.analytics.consumer import ConsumerMetrics, UsageConsumer
from services.analytics.postgres import PostgresUsageStore
from services.analytics.sqlite import SqliteUsageStore
from services.kernel.stream import DeadLetter, MemoryUsageStream, RedisUsageStream
from tests.conftest import DATABASE_URL, MASTER_KEY, unique
from tests.integration.events import make_event
from tests.integration.servers import free_port
from tests.integration.streams import wait_for, wait_settled


def with_param(dsn: str, param: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}{param}"


@pytest.fixture
async def schema_store(pg):
    """A store on the shared server in a schema of its own, so a test may add a constraint."""
    schema = unique("usage_dl").replace("-", "_")
    await pg.execute(f"CREATE SCHEMA {schema}")
    store = await PostgresUsageStore.open(with_param(DATABASE_URL, f"search_path={schema}"))
    try:
        yield store
    finally:
        await store.close()
        await pg.execute(f"DROP SCHEMA {schema} CASCADE")


def dead_lettered(consumer: UsageConsumer, stage: str) -> float:
    registry = consumer.metrics.registry
    return registry.get_sample_value("gateway_analytics_events_dead_lettered_total", {"stage": stage}) or 0.0


async def test_an_event_the_store_refuses_is_split_out_dead_lettered_and_replayable(redis, schema_store):
    store = schema_store
    # A constraint the store enforces plays a store that refuses some events.
    await store.pool.execute(
        "ALTER TABLE usage_records ADD CONSTRAINT no_poison CHECK (request_id NOT LIKE 'poison-%')"
    )
    name, tag = unique("test:usage"), unique("refused")
    stream = RedisUsageStream(redis, name, "analytics")
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    events = [make_event(tag, i) for i in range(30)]
    poisoned = {3, 29}
    for i in poisoned:
        events[i]["request_id"] = f"poison-{tag}-{i}"
    await stream.ensure_group()
    for start in range(0, 30, 10):
        await stream.publish([orjson.dumps(e) for e in events[start : start + 10]])
    task = asyncio.create_task(consumer.run())
    try:
        await wait_settled(redis, name)
        count = "SELECT count(*) FROM usage_events WHERE key_id = $1"
        assert await store.pool.fetchval(count, tag) == 28
        dead = await stream.dead_letters(count=10)
        assert {orjson.loads(d.data)["request_id"] for _, d in dead} == {
            f"poison-{tag}-3",
            f"poison-{tag}-29",
        }
        assert {d.stage for _, d in dead} == {"refused"}
        assert all("no_poison" in d.reason for _, d in dead)
        assert dead_lettered(consumer, "refused") == 2
        assert consumer.metrics.failures._value.get() == 0  # data errors are not store outages

        # The cause is fixed; the dead letters go back through the stream, once.
        await store.pool.execute("ALTER TABLE usage_records DROP CONSTRAINT no_poison")
        assert await stream.replay_dead_letters([eid for eid, _ in dead]) == 2
        assert await stream.replay_dead_letters([eid for eid, _ in dead]) == 0  # already moved
        await wait_settled(redis, name)
        assert await store.pool.fetchval(count, tag) == 30
        assert await stream.dead_letter_count() == 0
    finally:
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.delete(name, f"{name}:dead")


async def test_a_stopped_postgres_leaves_every_entry_pending_and_nothing_dead(redis, private_pg):
    name, tag = unique("test:usage"), unique("pgdown")
    store = await PostgresUsageStore.open(private_pg.dsn)
    stream = RedisUsageStream(redis, name, "analytics")
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    await stream.ensure_group()
    task = None
    private_pg.stop()
    try:
        for start in range(0, 30, 10):
            await stream.publish([orjson.dumps(make_event(tag, i)) for i in range(start, start + 10)])
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.metrics.failures._value.get() >= 3, what="inserts to fail")
        assert (await redis.xpending(name, "analytics"))["pending"] == 3
        assert await stream.dead_letter_count() == 0
        private_pg.start()
        await wait_settled(redis, name)
        conn = await asyncpg.connect(private_pg.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag) == 30
        finally:
            await conn.close()
        assert await stream.dead_letter_count() == 0
    finally:
        private_pg.ensure_started()
        consumer.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await store.close()
        await redis.delete(name, f"{name}:dead")


async def test_an_entry_is_not_acknowledged_until_its_dead_letters_are_kept(redis, pg_schema):
    """The dead-letter key is unusable (wrong type): the entry stays pending, and
    nothing is lost; once the key is usable the dead letter is kept and the entry acked."""
    name, tag = unique("test:usage"), unique("dlfirst")
    store = await PostgresUsageStore.open(pg_schema)
    pg = store.pool
    stream = RedisUsageStream(redis, name, "analytics")
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="c1", block_ms=50)
    await redis.set(stream.dead_letter, "in the way")
    await stream.ensure_group()
    await stream.publish([orjson.dumps(make_event(tag, 0)), b"not json"])
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: consumer.metrics.failures._value.get() >= 2, what="the ack to fail")
        assert (await redis.xpending(name, "analytics"))["pending"] == 1
        await redis.delete(stream.dead_letter)
        await wait_settled(redis, name)
        assert [d.data for _, d in await stream.dead_letters(count=10)] == [b"not json"]
        assert await pg.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag) == 1
    finally:
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        await redis.delete(name, stream.dead_letter)


async def test_redis_dead_letters_are_bounded(redis):
    name = unique("test:usage")
    stream = RedisUsageStream(redis, name, "analytics", dead_letter_max=3)
    try:
        await stream.ensure_group()
        await stream.publish([b"x"])
        [(entry_id, _)] = await stream.read("c1", count=1, block_ms=100)
        dead = [DeadLetter(f"bad {i}".encode(), "r", "invalid", entry_id) for i in range(5)]
        await stream.ack([entry_id], dead=dead)
        kept = await stream.dead_letters(count=10)
        assert [d.data for _, d in kept] == [b"bad 2", b"bad 3", b"bad 4"]  # the newest are kept
        assert await stream.dead_letter_count() == 3
        page = await stream.dead_letters(count=10, after=kept[0][0])
        assert [d.data for _, d in page] == [b"bad 3", b"bad 4"]
    finally:
        await redis.delete(name, f"{name}:dead")


def sqlite_rows(path, tag: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM usage_events WHERE key_id = ?", (tag,)).fetchone()[0]


async def test_the_embedded_stream_dead_letters_too_and_keeps_them_on_disk(tmp_path):
    """Embedded mode: in-process stream, SQLite store; a trigger plays the refusing store."""
    db_path, dl_path = tmp_path / "gateway.db", tmp_path / "usage-dead-letters.jsonl"
    store = await SqliteUsageStore.open(db_path)
    store.conn.execute(
        "CREATE TRIGGER no_poison BEFORE INSERT ON usage_records WHEN NEW.request_id LIKE 'poison-%'"
        " BEGIN SELECT RAISE(ABORT, 'no_poison'); END"
    )
    tag = unique("embedded")
    stream = MemoryUsageStream(dead_letter_path=dl_path, dead_letter_max=100)
    consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="gw", block_ms=20)
    first = [make_event(tag, i) for i in range(10)]
    first[4]["request_id"] = f"poison-{tag}-4"
    first[7]["status"] = 999
    await stream.publish([orjson.dumps(e) for e in first])
    await stream.publish([orjson.dumps(make_event(tag, i)) for i in range(10, 15)])
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: stream.backlog() == 0, what="the embedded stream to drain")
        assert sqlite_rows(db_path, tag) == 13
        dead = await stream.dead_letters(count=10)
        assert sorted((orjson.loads(d.data)["request_id"], d.stage) for _, d in dead) == [
            (f"{tag}-7", "invalid"),
            (f"poison-{tag}-4", "refused"),
        ]
        assert dead_lettered(consumer, "refused") == dead_lettered(consumer, "invalid") == 1

        # Kept: a new process (a new stream on the same file) finds them.
        again = MemoryUsageStream(dead_letter_path=dl_path, dead_letter_max=100)
        assert [(eid, d) for eid, d in await again.dead_letters(count=10)] == dead

        store.conn.execute("DROP TRIGGER no_poison")
        assert await stream.replay_dead_letters() == 2
        await wait_for(lambda: stream.backlog() == 0, what="the replay to drain")
        assert sqlite_rows(db_path, tag) == 14
        # The invalid one is still invalid: back in the dead letters, still kept.
        [(_, back)] = await stream.dead_letters(count=10)
        assert orjson.loads(back.data)["request_id"] == f"{tag}-7"
        reopened = MemoryUsageStream(dead_letter_path=dl_path, dead_letter_max=100)
        assert await reopened.dead_letter_count() == 1
    finally:
        consumer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_the_embedded_dead_letters_are_bounded(tmp_path):
    stream = MemoryUsageStream(dead_letter_path=tmp_path / "dl.jsonl", dead_letter_max=3)
    await stream.publish([b"x"])
    [(entry_id, _)] = await stream.read("c1", count=1, block_ms=10)
    dead = [DeadLetter(f"bad {i}".encode(), "r", "invalid", entry_id) for i in range(5)]
    await stream.ack([entry_id], dead=dead)
    assert [d.data for _, d in await stream.dead_letters(count=10)] == [b"bad 2", b"bad 3", b"bad 4"]
    reopened = MemoryUsageStream(dead_letter_path=tmp_path / "dl.jsonl", dead_letter_max=3)
    assert [d.data for _, d in await reopened.dead_letters(count=10)] == [b"bad 2", b"bad 3", b"bad 4"]


def start_embedded_gateway(tmp_path: Path, data: Path, port: int) -> subprocess.Popen[bytes]:
    (tmp_path / "gateway.yaml").write_text(
        "models:\n  - name: mock-small\n    deployments:\n      - {provider: mock, model: mock-small}\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
        "GATEWAY_CONFIG": str(tmp_path / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(data),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services", "gateway", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_the_embedded_gateway_keeps_and_replays_dead_letters(tmp_path):
    """The real embedded gateway: dead letters left in its data folder by an earlier run
    are listed at /analytics/v1/usage/dead-letters and stored once replayed."""
    data = tmp_path / "data"
    tag = unique("embedded-api")
    event = make_event(tag, 0)
    earlier = MemoryUsageStream(dead_letter_path=data / "usage-dead-letters.jsonl")
    await earlier.publish([b"x"])
    [(entry_id, _)] = await earlier.read("gw", count=1, block_ms=10)
    letter = DeadLetter(orjson.dumps(event), "disk I/O error", "refused", entry_id)
    await earlier.ack([entry_id], dead=[letter])

    port = free_port()
    proc = start_embedded_gateway(tmp_path, data, port)
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/analytics", headers=auth) as http:

            async def ready() -> bool:
                assert proc.poll() is None, "the gateway exited"
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, what="the embedded gateway to be ready")
            listing = (await http.get("/v1/usage/dead-letters")).json()
            assert [(d["stage"], d["reason"]) for d in listing["data"]] == [("refused", "disk I/O error")]
            replay = await http.post("/v1/usage/dead-letters/replay", json={})
            assert replay.json() == {"replayed": 1, "remaining": 0}

            async def stored() -> bool:
                rows = (await http.get("/v1/usage/events", params={"request_id": f"{tag}-0"})).json()
                return len(rows["data"]) == 1

            await wait_for(stored, what="the replayed event to be stored")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    reopened = MemoryUsageStream(dead_letter_path=data / "usage-dead-letters.jsonl")
    assert await reopened.dead_letter_count() == 0
