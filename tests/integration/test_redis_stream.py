import orjson

from services.kernel.stream import RedisUsageStream, events_of
from tests.conftest import unique


async def test_publish_read_ack_and_pending(redis):
    name = unique("test:usage")
    stream = RedisUsageStream(redis, name, "analytics")
    try:
        await stream.ensure_group()
        await stream.ensure_group()  # idempotent
        for i in range(5):
            await stream.publish([orjson.dumps({"i": i})])
        got = await stream.read("c1", count=3, block_ms=100)
        assert [orjson.loads(d)["i"] for _, d in got] == [0, 1, 2]
        # Not acked: a restart of the same consumer gets them back first.
        pending = await stream.read("c1", count=10, block_ms=0, pending=True)
        assert [eid for eid, _ in pending] == [eid for eid, _ in got]
        await stream.ack([eid for eid, _ in got])
        assert await stream.read("c1", count=10, block_ms=0, pending=True) == []
        rest = await stream.read("c1", count=10, block_ms=100)
        assert [orjson.loads(d)["i"] for _, d in rest] == [3, 4]
        await stream.ack([eid for eid, _ in rest])
        assert await redis.xlen(name) == 0  # acknowledged entries are deleted
        assert await stream.check() == "ok"
    finally:
        await redis.delete(name)


async def test_one_publish_is_one_entry_of_json_lines(redis):
    name = unique("test:usage")
    stream = RedisUsageStream(redis, name, "analytics")
    try:
        await stream.ensure_group()
        await stream.publish([b'{"a":1}', b'{"b":2}'])
        await stream.publish([])
        entries = await stream.read("c1", count=10, block_ms=100)
        assert len(entries) == 1
        assert events_of(entries[0][1]) == [b'{"a":1}', b'{"b":2}']
    finally:
        await redis.delete(name)


async def test_a_dead_consumers_entries_are_claimed(redis):
    name = unique("test:usage")
    stream = RedisUsageStream(redis, name, "analytics")
    try:
        await stream.ensure_group()
        await stream.publish([b"x"])
        await stream.publish([b"y"])
        taken = await stream.read("dead", count=10, block_ms=100)
        assert len(taken) == 2
        claimed = await stream.claim_stale("alive", min_idle_ms=0, count=10)
        assert [d for _, d in claimed] == [b"x", b"y"]
    finally:
        await redis.delete(name)
