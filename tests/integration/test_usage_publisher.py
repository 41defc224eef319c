"""The router's usage publisher when Redis and the disk both refuse: it keeps running,
holds a bounded number of events in memory, and still flushes at shutdown."""

import asyncio
import contextlib
import errno
import logging
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.kernel.stream import RedisUsageStream
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.usage import UsagePublisher
from tests.conftest import unique
from tests.integration.events import make_event
from tests.integration.streams import stream_events, wait_for


def full_disk_spool(tmp_path: Path) -> Spool:
    """Every write fails with ENOSPC, as on a full disk."""
    directory = tmp_path / "spool"
    directory.mkdir(parents=True)
    (directory / "usage.jsonl").symlink_to("/dev/full")
    return Spool(directory)


def spool_under_a_file(tmp_path: Path) -> Spool:
    """The spool folder cannot be created: a regular file is in the way (ENOTDIR)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "not-a-dir").write_text("x")
    return Spool(tmp_path / "not-a-dir" / "spool")


def router_redis(url: str) -> aioredis.Redis:
    # The router's client settings (services/router/app.py), without client-side retries
    # so each refused attempt is one attempt.
    return aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0, retry=None)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_the_broken_spools_really_refuse(tmp_path):
    with pytest.raises(OSError, match="No space left") as full:
        full_disk_spool(tmp_path / "a").append([b"{}"])
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"Not a directory|File exists"):  # depends on where mkdir trips
        spool_under_a_file(tmp_path / "b").append([b"{}"])


@pytest.mark.parametrize("broken_spool", [full_disk_spool, spool_under_a_file])
async def test_the_publisher_outlives_a_refusing_disk_and_delivers_when_redis_returns(
    private_redis, tmp_path, broken_spool, caplog
):
    name, tag = unique("test:usage"), unique("nodisk")
    (tmp_path / "case").mkdir()
    private_redis.kill()
    client = router_redis(private_redis.url)
    registry = CollectorRegistry()
    publisher = UsagePublisher(
        RedisUsageStream(client, name, "analytics"),
        broken_spool(tmp_path / "case"),
        RouterMetrics(registry),
        flush_interval=0.01,
        max_batch=8,
    )
    task = asyncio.create_task(publisher.run())
    try:
        for i in range(30):
            publisher.emit(make_event(tag, i))
        await wait_for(
            lambda: task.done() or sample(registry, "gateway_usage_failures_total", target="spool") > 0,
            what="the spool to refuse",
        )
        assert not task.done(), "the publisher task stopped when the spool refused"
        assert any(r.levelno >= logging.ERROR and "spool" in r.getMessage() for r in caplog.records)

        private_redis.start()  # Redis is back: everything held in memory gets out
        expected = {f"{tag}-{i}" for i in range(30)}

        async def delivered() -> bool:
            lines = await stream_events(client, name)
            return {orjson.loads(line)["request_id"] for line in lines} == expected

        await wait_for(delivered, what="the held events to reach the stream")
        # The gauge is set after the write returns, which may be a moment after the events land.
        await wait_for(
            lambda: sample(registry, "gateway_usage_events_buffered") == 0, what="the buffer gauge to read 0"
        )
        assert sample(registry, "gateway_usage_events_total", outcome="dropped") == 0

        # Shutdown as the router does it: cancel the task, then the final flush.
        for i in range(30, 35):
            publisher.emit(make_event(tag, i))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.aclose()
        lines = await stream_events(client, name)
        assert {orjson.loads(line)["request_id"] for line in lines} == {f"{tag}-{i}" for i in range(35)}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.delete(name)
        await client.aclose()


async def test_the_buffer_is_bounded_and_every_drop_is_counted_and_logged(private_redis, tmp_path, caplog):
    name, tag = unique("test:usage"), unique("bounded")
    private_redis.kill()
    client = router_redis(private_redis.url)
    registry = CollectorRegistry()
    publisher = UsagePublisher(
        RedisUsageStream(client, name, "analytics"),
        full_disk_spool(tmp_path),
        RouterMetrics(registry),
        flush_interval=0.01,
        max_batch=8,
        max_buffered=20,
    )
    task = asyncio.create_task(publisher.run())
    try:
        for i in range(20):
            publisher.emit(make_event(tag, i))
        await wait_for(
            lambda: sample(registry, "gateway_usage_failures_total", target="spool") > 0,
            what="the spool to refuse",
        )
        for i in range(20, 50):
            publisher.emit(make_event(tag, i))  # past the bound: dropped, counted, logged
        assert sample(registry, "gateway_usage_events_total", outcome="dropped") == 30
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("dropped" in message for message in errors), errors

        private_redis.start()

        async def delivered() -> bool:
            return len(await stream_events(client, name)) >= 20

        await wait_for(delivered, what="the 20 held events to reach the stream")
        lines = await stream_events(client, name)
        # The oldest 20 were kept; the 30 that arrived while the buffer was full are the loss.
        assert {orjson.loads(line)["request_id"] for line in lines} == {f"{tag}-{i}" for i in range(20)}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
        await client.delete(name)
        await client.aclose()


async def test_the_shutdown_flush_runs_after_the_disk_refused(private_redis, tmp_path):
    """Redis comes back only at shutdown: the final flush still gets every event out."""
    name, tag = unique("test:usage"), unique("lastflush")
    private_redis.kill()
    client = router_redis(private_redis.url)
    registry = CollectorRegistry()
    publisher = UsagePublisher(
        RedisUsageStream(client, name, "analytics"),
        full_disk_spool(tmp_path),
        RouterMetrics(registry),
        flush_interval=0.01,
        max_batch=8,
    )
    task = asyncio.create_task(publisher.run())
    try:
        for i in range(25):
            publisher.emit(make_event(tag, i))
        await wait_for(
            lambda: task.done() or sample(registry, "gateway_usage_failures_total", target="spool") > 0,
            what="the spool to refuse",
        )
        private_redis.start()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.aclose()
        lines = await stream_events(client, name)
        assert {orjson.loads(line)["request_id"] for line in lines} == {f"{tag}-{i}" for i in range(25)}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.delete(name)
        await client.aclose()


async def test_events_are_lost_at_shutdown_only_when_both_refuse_and_that_is_loud(
    private_redis, tmp_path, caplog
):
    name, tag = unique("test:usage"), unique("lost")
    private_redis.kill()
    client = router_redis(private_redis.url)
    registry = CollectorRegistry()
    publisher = UsagePublisher(
        RedisUsageStream(client, name, "analytics"),
        full_disk_spool(tmp_path),
        RouterMetrics(registry),
        flush_interval=0.01,
        max_batch=8,
    )
    try:
        for i in range(12):
            publisher.emit(make_event(tag, i))
        await publisher.aclose()  # no exception: shutdown goes on
        assert sample(registry, "gateway_usage_events_total", outcome="dropped") == 12
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "lost" in r.getMessage()]
        assert errors
        assert errors[-1].__dict__.get("events") == 12
    finally:
        await client.aclose()


async def test_a_long_replay_lets_new_events_go_first(redis, tmp_path):
    """A spool written through a long outage is replayed a slice per flush, so events of
    the requests being served meanwhile are not held behind it (nor dropped)."""
    name, tag = unique("test:usage"), unique("slices")
    spool = Spool(tmp_path / "spool")
    spool.append([orjson.dumps(make_event(tag, i)) for i in range(100)])
    registry = CollectorRegistry()
    publisher = UsagePublisher(
        RedisUsageStream(redis, name, "analytics"),
        spool,
        RouterMetrics(registry),
        flush_interval=1.0,
        max_batch=10,
        replay_every=0.0,
    )
    try:
        await publisher.flush()
        replayed = sample(registry, "gateway_usage_events_total", outcome="replayed")
        assert 0 < replayed < 100
        publisher.emit(make_event(tag, 100))
        while spool.has_events():
            await publisher.flush()
        ids = [orjson.loads(line)["request_id"] for line in await stream_events(redis, name)]
        assert sorted(ids) == sorted(f"{tag}-{i}" for i in range(101))
        assert ids.index(f"{tag}-100") == replayed  # right after the first slice
    finally:
        await redis.delete(name)


class CountingSpool(Spool):
    """A real spool that counts how often the publisher looks for events in it."""

    looks = 0

    def has_events(self) -> bool:
        self.looks += 1
        return super().has_events()


async def test_an_idle_publisher_looks_at_the_spool_once_per_replay_interval(redis, tmp_path):
    spool = CountingSpool(tmp_path / "spool")
    publisher = UsagePublisher(
        RedisUsageStream(redis, unique("test:usage"), "analytics"),
        spool,
        RouterMetrics(CollectorRegistry()),
        flush_interval=0.005,
        max_batch=8,
        replay_every=0.2,
    )
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.sleep(0.5)  # 100 flush intervals, 2.5 replay intervals
        # Before: once per flush interval after the first replay interval (about 60 here).
        assert 1 <= spool.looks <= 4
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_shutdown_that_lands_with_an_event_still_stops_the_publisher(redis, tmp_path):
    """The wake-up of an emit and the cancellation of shutdown in the same loop turn: the
    task ends (asyncio.wait_for on 3.11 returned the wake-up and dropped the cancellation,
    so the task ran on and the shutdown waited for it forever)."""
    name = unique("test:usage")
    publisher = UsagePublisher(
        RedisUsageStream(redis, name, "analytics"),
        Spool(tmp_path / "spool"),
        RouterMetrics(CollectorRegistry()),
        flush_interval=0.005,
        max_batch=1,
        replay_every=60.0,
    )
    try:
        for i in range(20):
            task = asyncio.create_task(publisher.run())
            await asyncio.sleep(0.01)  # idle, waiting for an event
            publisher.emit(make_event(name, i))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2.0)
            assert done, "the publisher ignored its cancellation"
            await publisher.flush(replay=False)
    finally:
        await redis.delete(name)
