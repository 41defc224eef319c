"""The embedded SQLite store's insert: batches of any size in fixed-size statements, each
event stored once and counted once in the roll-ups, NULLs kept apart from zeros."""

import random
import sqlite3

import pytest

from services.analytics.sqlite import _CHUNKS, SqliteUsageStore
from services.analytics.store import RefusedEvents
from tests.conftest import unique
from tests.integration.events import make_event


def rollup_requests(path, layer: str) -> tuple[int, int]:
    """(requests in the all-callers rows, requests in the per-caller rows) of a layer."""
    with sqlite3.connect(path) as db:
        return db.execute(
            f"SELECT sum(requests) FILTER (WHERE caller = 0), sum(requests) FILTER (WHERE caller <> 0)"
            f" FROM usage_{layer}"
        ).fetchone()


def stored(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM usage_records").fetchone()[0]


async def test_a_batch_of_several_chunks_with_redelivered_and_repeated_events(tmp_path):
    path = tmp_path / "gateway.db"
    store = await SqliteUsageStore.open(path)
    tag = unique("chunks")
    size = 2 * _CHUNKS[0] + _CHUNKS[1] + 3  # two full chunks, a smaller one, three single rows
    try:
        earlier = [make_event(tag, i) for i in range(20)]
        assert await store.insert(earlier) == 20
        new = [make_event(tag, i, prompt_tokens=1000 + i) for i in range(20, size)]
        new[-1]["key_id"] = f"{tag}-other"  # a caller first seen in the batch that is written twice
        # The old events are spread over the chunks, one new event comes twice.
        batch = [*new, *earlier, new[5]]
        random.Random(7).shuffle(batch)
        assert await store.insert(batch) == len(new)
        assert stored(path) == size
        for layer in ("minute", "hour", "day"):
            assert rollup_requests(path, layer) == (size, size), layer
        # Whole again: nothing new, nothing added anywhere.
        assert await store.insert(batch) == 0
        assert stored(path) == size
        assert rollup_requests(path, "minute") == (size, size)
        [row] = await store.events(f"{tag}-{size - 1}", 5)
        assert (row["prompt_tokens"], row["key_id"]) == (1000 + size - 1, f"{tag}-other")
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM usage_callers").fetchone()[0] == 2
    finally:
        await store.close()


async def test_nulls_are_stored_as_null_and_zeros_and_empty_strings_as_themselves(tmp_path):
    path = tmp_path / "gateway.db"
    store = await SqliteUsageStore.open(path)
    tag = unique("nulls")
    nothing = {"ttft_ms": None, "cost": None, "saved_cost": None, "error_code": None}
    zeros = {"ttft_ms": 0.0, "cost": 0.0, "saved_cost": 0, "error_code": ""}
    values = {"ttft_ms": 2.5, "cost": 0.125, "saved_cost": 1, "error_code": "0"}
    counts = {"cached_tokens": 7, "reasoning_tokens": 3}
    try:
        events = [
            make_event(tag, 0, **nothing),
            make_event(tag, 1, **zeros),
            make_event(tag, 2, **values, **counts),
        ]
        assert await store.insert(events) == 3
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT ttft_ms, cost, saved_cost, error_code, cached_tokens, reasoning_tokens"
                " FROM usage_records ORDER BY request_id"
            ).fetchall()
        assert rows == [
            (None, None, None, None, None, None),  # zero counts are stored as NULL
            (0.0, 0.0, 0.0, "", None, None),
            (2.5, 0.125, 1.0, "0", 7, 3),
        ]
        assert isinstance(rows[2][2], float)  # a REAL column, whatever the event's number was
    finally:
        await store.close()


async def test_a_value_sqlite_cannot_hold_is_refused_and_nothing_of_the_batch_is_kept(tmp_path):
    path = tmp_path / "gateway.db"
    store = await SqliteUsageStore.open(path)
    tag = unique("refused")
    try:
        with pytest.raises(RefusedEvents):
            await store.insert([make_event(tag, i, prompt_tokens=2**64 if i == 70 else 1) for i in range(80)])
        assert stored(path) == 0
        assert rollup_requests(path, "day") == (None, None)
        assert await store.insert([make_event(tag, 1)]) == 1  # the store is still usable
    finally:
        await store.close()
