"""The storage contract, on real Redis and on the embedded stand-in alike: TTL, LRU caps
per namespace and overall, flush, statistics, and the changes the index follows."""

import numpy as np
import pytest

from services.cache.entries import Limits, NewEntry

ROOMY = Limits(max_entries_per_namespace=100, max_entries=1000)


def entry(ns, entry_id, *, ttl=60.0, vector=True, text="question"):
    v = np.full(384, 1 / np.sqrt(384), dtype=np.float32) if vector else None
    return NewEntry(ns, entry_id, b'{"id":"' + entry_id.encode() + b'"}', text, v, ttl, "team:t", "m")


async def test_put_get_and_the_add_change(entries):
    changes = await entries.put(entry("ns1", "e1"), 1000.0, ROOMY)
    assert [(c.op, c.entry_id) for c in changes] == [("add", "e1")]
    assert changes[0].expires == 1060.0
    got = await entries.get("ns1", "e1", 1001.0)
    assert got is not None
    assert got.response == b'{"id":"e1"}'
    assert got.text == "question"
    assert await entries.get("ns2", "e1", 1001.0) is None  # other namespace
    assert await entries.get("ns1", "e2", 1001.0) is None


async def test_exact_only_entries_emit_no_vector(entries):
    changes = await entries.put(entry("ns1", "e1", vector=False), 1000.0, ROOMY)
    assert changes == []
    _, snapshot = await entries.snapshot()
    assert snapshot == []
    assert await entries.get("ns1", "e1", 1001.0) is not None


async def test_ttl_expires_entries(entries):
    await entries.put(entry("ns1", "old", ttl=10), 1000.0, ROOMY)
    await entries.put(entry("ns1", "new", ttl=100), 1000.0, ROOMY)
    assert await entries.get("ns1", "old", 1011.0) is None
    assert (await entries.get_many("ns1", ["old", "new"], 1011.0))[0] is None
    removed = await entries.sweep(1011.0)
    assert [(c.op, c.entry_id) for c in removed] == [("del", "old")]
    assert [i.entry_id for i in await entries.entries("ns1", 10)] == ["new"]


async def test_namespace_cap_evicts_the_least_recently_used(entries):
    limits = Limits(max_entries_per_namespace=3, max_entries=1000)
    for i, t in enumerate((1000.0, 1001.0, 1002.0)):
        await entries.put(entry("ns1", f"e{i}"), t, limits)
    assert await entries.get("ns1", "e0", 1003.0) is not None  # e0 used: e1 is now the oldest
    await entries.touch("ns1", "e2", 1004.0)
    changes = await entries.put(entry("ns1", "e3"), 1005.0, limits)
    assert [(c.op, c.entry_id) for c in changes] == [("add", "e3"), ("del", "e1")]
    assert {i.entry_id for i in await entries.entries("ns1", 10)} == {"e0", "e2", "e3"}
    other = await entries.put(entry("ns2", "x"), 1006.0, limits)  # other namespaces have their own cap
    assert [c.op for c in other] == ["add"]


async def test_overall_cap_evicts_across_namespaces(entries):
    limits = Limits(max_entries_per_namespace=10, max_entries=2)
    await entries.put(entry("ns1", "a"), 1000.0, limits)
    await entries.put(entry("ns2", "b"), 1001.0, limits)
    changes = await entries.put(entry("ns3", "c"), 1002.0, limits)
    assert [(c.op, c.namespace, c.entry_id) for c in changes] == [("add", "ns3", "c"), ("del", "ns1", "a")]
    assert [n.namespace for n in await entries.namespaces()] == ["ns2", "ns3"] or await entries.get(
        "ns1", "a", 1003.0
    ) is None


async def test_namespaces_flush_and_hits(entries):
    await entries.put(entry("ns1", "a"), 1000.0, ROOMY)
    await entries.put(entry("ns1", "b"), 1000.0, ROOMY)
    await entries.put(NewEntry("ns2", "c", b"{}", "", None, 60, "team:other", "m2"), 1000.0, ROOMY)
    await entries.get("ns1", "a", 1001.0)
    await entries.touch("ns1", "b", 1001.0)
    spaces = {n.namespace: n for n in await entries.namespaces()}
    assert spaces["ns1"].entries == 2
    assert spaces["ns1"].hits == 2
    assert spaces["ns1"].tenant == "team:t"
    assert [n.namespace for n in await entries.namespaces("team:other")] == ["ns2"]
    assert await entries.flush("ns1") == 2
    assert await entries.get("ns1", "a", 1002.0) is None
    assert [n.namespace for n in await entries.namespaces()] == ["ns2"]


async def test_namespaces_show_and_filter_by_their_region(entries):
    def placed(ns: str, tenant: str, region: str | None) -> NewEntry:
        return NewEntry(ns, "e", b"{}", "", None, 60, tenant, "m", region)

    await entries.put(placed("ns-eu", "team:t", "eu-west"), 1000.0, ROOMY)
    await entries.put(placed("ns-us", "team:t", "us-east"), 1000.0, ROOMY)
    await entries.put(placed("ns-none", "team:t", None), 1000.0, ROOMY)
    await entries.put(placed("ns-eu-other", "team:o", "eu-west"), 1000.0, ROOMY)
    assert {n.namespace: n.region for n in await entries.namespaces()} == {
        "ns-eu": "eu-west",
        "ns-us": "us-east",
        "ns-none": None,
        "ns-eu-other": "eu-west",
    }
    assert [n.namespace for n in await entries.namespaces(region="eu-west")] == ["ns-eu", "ns-eu-other"]
    assert [n.namespace for n in await entries.namespaces("team:t", "eu-west")] == ["ns-eu"]
    assert [n.namespace for n in await entries.namespaces(region="ap-south")] == []


async def test_replacing_an_entry_keeps_one(entries):
    await entries.put(entry("ns1", "a", text="first"), 1000.0, ROOMY)
    await entries.put(entry("ns1", "a", text="second"), 1001.0, ROOMY)
    rows = await entries.entries("ns1", 10)
    assert [(r.entry_id, r.text) for r in rows] == [("a", "second")]


async def test_counts_add_up(entries):
    await entries.add_counts({"lookups_exact": 2, "lookups_miss": 1})
    await entries.add_counts({"lookups_exact": 3})
    counts = await entries.counts()
    assert counts["lookups_exact"] == 5
    assert counts["lookups_miss"] == 1


@pytest.mark.redis
async def test_changes_reach_a_follower_in_order(redis_entries):
    cursor, snapshot = await redis_entries.snapshot()
    assert snapshot == []
    limits = Limits(max_entries_per_namespace=1, max_entries=100)
    await redis_entries.put(entry("ns1", "a"), 1000.0, limits)
    await redis_entries.put(entry("ns1", "b"), 1001.0, limits)
    await redis_entries.flush("ns1")
    result = await redis_entries.changes(cursor, 100)
    assert result is not None
    _, changes = result
    assert [(c.op, c.entry_id) for c in changes] == [("add", "a"), ("add", "b"), ("del", "a"), ("flush", "")]
    assert changes[0].vector is not None
    assert changes[0].vector.shape == (384,)


@pytest.mark.redis
async def test_a_follower_that_fell_behind_the_trimmed_stream_is_told_to_rebuild(redis, prefix):
    import redis.asyncio as aioredis

    from services.cache.store import RedisEntries
    from tests.conftest import REDIS_URL

    store = RedisEntries(aioredis.from_url(REDIS_URL), prefix, sync_maxlen=100)
    try:
        cursor, _ = await store.snapshot()
        for i in range(400):
            await store.put(entry("ns1", f"e{i}", ttl=1e6), 1000.0 + i, ROOMY)
        # MAXLEN ~ trims whole nodes: after 400 adds and their evictions, early ones are gone.
        assert await store.changes(cursor, 100) is None
        fresh, snapshot = await store.snapshot()
        assert len(snapshot) == 100
        result = await store.changes(fresh, 10)
        assert result is not None
    finally:
        from tests.conftest import delete_prefix

        await delete_prefix(redis, prefix)
        await store.aclose()
