from services.kernel.stream import MemoryUsageStream, events_of


async def test_entries_stay_pending_until_acked():
    stream = MemoryUsageStream()
    for data in (b"a", b"b", b"c"):
        await stream.publish([data])
    first = await stream.read("c1", count=2, block_ms=10)
    assert [d for _, d in first] == [b"a", b"b"]
    assert [d for _, d in await stream.read("c1", count=10, block_ms=10, pending=True)] == [b"a", b"b"]
    await stream.ack([first[0][0]])
    assert [d for _, d in await stream.read("c1", count=10, block_ms=10, pending=True)] == [b"b"]
    assert [d for _, d in await stream.read("c1", count=10, block_ms=10)] == [b"c"]
    assert await stream.read("c1", count=10, block_ms=10) == []
    assert stream.backlog() == 2


async def test_a_batch_is_one_entry():
    stream = MemoryUsageStream()
    await stream.publish([b"x", b"y"])
    await stream.publish([])
    entries = await stream.read("c1", count=10, block_ms=10)
    assert [events_of(d) for _, d in entries] == [[b"x", b"y"]]
