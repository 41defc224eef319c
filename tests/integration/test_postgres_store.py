"""The PostgreSQL store on the real server, in a schema of its own: compact rows,
partitions, roll-ups kept exactly once, retention by dropping partitions."""

import time
from datetime import UTC, datetime

import asyncpg
import pytest

from services.analytics.postgres import PostgresUsageStore
from services.analytics.query import Filters, Grouping
from services.analytics.sqlite import SqliteUsageStore
from services.analytics.store import migrations, month_start
from services.kernel.config import RetentionConfig
from tests.conftest import unique
from tests.integration.events import make_event


@pytest.fixture
async def store(pg_schema):
    store = await PostgresUsageStore.open(pg_schema)
    yield store
    await store.close()


def whole_range(events) -> Filters:
    start = int(min(e["created_at"] for e in events)) // 60 * 60
    return Filters(start=start - 86400 * 40, end=int(time.time()) // 60 * 60 + 120)


async def test_migrations_are_idempotent(store):
    await store.migrate()
    await store.migrate()
    versions = await store.pool.fetch(
        "SELECT version FROM schema_migrations WHERE service = 'analytics' ORDER BY version"
    )
    assert [r["version"] for r in versions] == [v for v, _ in migrations("postgres")]


async def test_insert_is_idempotent_and_rollups_count_each_event_once(store):
    tag = unique("pgstore")
    events = [make_event(tag, i, cost=0.001, ttft_ms=40.0, stream=True) for i in range(25)]
    assert await store.insert(events) == 25
    assert await store.insert(events) == 0  # redelivered: nothing added, not even to roll-ups
    assert await store.insert([*events[:5], make_event(tag, 99, cost=None)]) == 1
    assert await store.pool.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag) == 26
    for layer in ("minute", "hour", "day"):
        total = await store.pool.fetchval(f"SELECT sum(requests) FROM usage_{layer} WHERE caller = 0")
        keyed = await store.pool.fetchval(f"SELECT sum(requests) FROM usage_{layer} WHERE caller <> 0")
        assert (total, keyed) == (26, 26), layer
    [row] = await store.usage(whole_range(events), Grouping())
    assert row["requests"] == 26
    assert row["prompt_tokens"] == sum(10 + i for i in range(25)) + 109
    assert row["cost"] == pytest.approx(0.025)
    assert row["unpriced_requests"] == 1
    assert row["ttft_ms"]["p50"] is not None
    rows = await store.events(f"{tag}-3", 10)
    assert rows[0]["prompt_tokens"] == 13
    assert rows[0]["stream"] is True
    assert rows[0]["created_at"] == pytest.approx(events[3]["created_at"], abs=1e-3)
    assert await store.check() == "ok"


async def test_rows_are_narrow(store):
    """The heap row of a typical event, measured by PostgreSQL itself."""
    tag = unique("narrow")
    await store.insert([make_event(tag, i, cost=0.00042) for i in range(100)])
    size = await store.pool.fetchval(
        "SELECT avg(pg_column_size(r.*)) FROM usage_records r JOIN usage_callers c ON c.id = r.caller"
        " WHERE c.key_id = $1",
        tag,
    )
    assert size < 120, size


async def test_grouping_and_filters(store):
    tag = unique("group")
    events = [
        make_event(tag, 0, model="m-a", team_id="t1"),
        make_event(tag, 1, model="m-a", team_id="t1", status=500, error_code="upstream_error"),
        make_event(tag + "-other", 2, model="m-b", team_id="t2", cached=True, cache="exact", saved_cost=0.5),
    ]
    await store.insert(events)
    span = whole_range(events)
    by_model = await store.usage(span, Grouping(dimensions=("model",)))
    assert {(r["model"], r["requests"], r["server_errors"]) for r in by_model} == {
        ("m-a", 2, 1),
        ("m-b", 1, 0),
    }
    team = Filters(start=span.start, end=span.end, team_id="t1")
    [row] = await store.usage(team, Grouping())
    assert (row["requests"], row["availability"]) == (2, 0.5)
    by_key = await store.usage(span, Grouping(dimensions=("key",)))
    assert {r["key"] for r in by_key} == {tag, tag + "-other"}
    hits = Filters(start=span.start, end=span.end, model="m-b")
    [row] = await store.usage(hits, Grouping())
    assert (row["cache_hits"], row["saved_cost"], row["cache_hit_rate"]) == (1, 0.5, 1.0)
    per_minute = await store.usage(span, Grouping(time="minute"))
    assert sum(r["requests"] for r in per_minute) == 3
    errors = Filters(start=span.start, end=span.end, status="5xx")
    [row] = await store.usage(errors, Grouping())
    assert row["requests"] == 1


async def test_old_months_are_partitions_and_retention_drops_them(pg_schema):
    """Events of three months ago land in their own partition; with a retention of two
    months it is dropped whole, and events that old are no longer stored."""
    now = time.time()
    old = month_start(now, 3) + 3600
    store = await PostgresUsageStore.open(pg_schema, RetentionConfig(events_months=12))
    tag = unique("retention")
    try:
        assert await store.insert([make_event(tag, 0, created_at=old), make_event(tag, 1)]) == 2
        name = f"usage_records_p{datetime.fromtimestamp(old, UTC):%Y%m}"
        assert await store.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    finally:
        await store.close()
    expired = []
    store = await PostgresUsageStore.open(pg_schema, RetentionConfig(events_months=2), expired.append)
    try:
        dropped = await store.maintain(now)
        assert dropped["usage_records"] >= 1
        assert not await store.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
        assert await store.pool.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag) == 1
        # The day roll-ups keep the history the events no longer have.
        assert await store.pool.fetchval("SELECT sum(requests) FROM usage_day WHERE caller = 0") == 2
        assert await store.insert([make_event(tag, 2, created_at=old)]) == 0
        assert expired == [1]
        months = await store.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_records'::regclass"
        )
        assert (
            f"usage_records_p{datetime.fromtimestamp(month_start(month_start(now) + 32 * 86400), UTC):%Y%m}"
            in {r["relname"] for r in months}
        )  # next month's is created ahead
    finally:
        await store.close()


async def test_the_version_1_table_is_kept_and_copied_into_the_new_layout(pg_schema):
    """An installation of version 1 upgrades: its table is renamed (never dropped) and its
    rows are copied, resumably and idempotently, into the compact tables and roll-ups."""
    conn = await asyncpg.connect(pg_schema)
    tag = unique("legacy")
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (service TEXT, version INTEGER,"
            " applied_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (service, version))"
        )
        for version, sql in migrations("postgres")[:2]:
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (service, version) VALUES ('analytics', $1)", version
            )
        now = time.time()
        for i in range(7):
            await conn.execute(
                "INSERT INTO usage_events (event_id, request_id, key_id, team_id, endpoint, model, provider,"
                " upstream_model, prompt_tokens, completion_tokens, latency_ms, ttft_ms, status, error_code,"
                " cached, stream, created_at, estimated) VALUES ($1, $2, $3, 'team', 'chat.completions',"
                " 'm', 'mock', 'm', $4, 5, 12.5, NULL, 200, NULL, false, false, $5, false)",
                f"e-{i}",
                f"{tag}-{i}",
                tag,
                10 + i,
                datetime.fromtimestamp(now - i, UTC),
            )
        store = await PostgresUsageStore.open(pg_schema)
        try:
            assert await conn.fetchval("SELECT count(*) FROM usage_events_v1") == 7
            assert [await store.import_legacy(batch=3) for _ in range(4)] == [3, 3, 1, 0]
            assert await store.import_legacy() == 0
            rows = await conn.fetch("SELECT prompt_tokens, team_id FROM usage_events WHERE key_id = $1", tag)
            assert sorted(r["prompt_tokens"] for r in rows) == list(range(10, 17))
            assert {r["team_id"] for r in rows} == {"team"}
            assert await conn.fetchval("SELECT sum(requests) FROM usage_day WHERE caller = 0") == 7
        finally:
            await store.close()
    finally:
        await conn.close()


async def test_sqlite_store_has_the_same_contract(tmp_path):
    store = await SqliteUsageStore.open(tmp_path / "gateway.db")
    tag = unique("sqlite")
    events = [make_event(tag, i, ttft_ms=2.5, stream=True, team_id="t1") for i in range(10)]
    try:
        assert await store.insert(events) == 10
        assert await store.insert(events) == 0
        [row] = await store.usage(whole_range(events), Grouping())
        assert row["requests"] == 10
        assert row["ttft_ms"]["p50"] is not None
        [by_team] = await store.usage(whole_range(events), Grouping(dimensions=("team",)))
        assert (by_team["team"], by_team["requests"]) == ("t1", 10)
        assert (await store.events(f"{tag}-0", 5))[0]["stream"] is True
    finally:
        await store.close()
    reopened = await SqliteUsageStore.open(tmp_path / "gateway.db")  # migrations skip, data stays
    [row] = await reopened.usage(whole_range(events), Grouping())
    assert row["requests"] == 10
    await reopened.close()


async def test_stored_completions_in_postgres(store):
    from services.analytics.store import CompletionQuery, StoredCompletion

    tag = unique("stored")
    now = time.time()

    def completion(i: int, team: str | None) -> StoredCompletion:
        return StoredCompletion(
            id=f"{tag}-{i}",
            created_at=now + i / 1000,
            key_id=f"key-{i % 2}",
            team_id=team,
            model="mock-small",
            metadata={"tag": tag, "i": str(i)},
            request={"model": "mock-small", "messages": [{"role": "user", "content": str(i)}]},
            response={"id": f"{tag}-{i}", "object": "chat.completion", "choices": []},
        )

    for i in range(4):
        assert await store.put_completion(completion(i, "t1" if i < 3 else "t2"))
    assert not await store.put_completion(completion(0, "t1"))  # once per id
    items, more = await store.list_completions(CompletionQuery(metadata=(("tag", tag),), limit=2))
    assert ([c.id for c in items], more) == ([f"{tag}-0", f"{tag}-1"], True)
    page, more = await store.list_completions(CompletionQuery(metadata=(("tag", tag),), after=f"{tag}-1"))
    assert ([c.id for c in page], more) == ([f"{tag}-2", f"{tag}-3"], False)
    team, _ = await store.list_completions(CompletionQuery(team_id="t2", metadata=(("tag", tag),)))
    assert [c.id for c in team] == [f"{tag}-3"]
    desc, _ = await store.list_completions(CompletionQuery(key_id="key-1", order="desc"))
    assert [c.id for c in desc] == [f"{tag}-3", f"{tag}-1"]
    assert await store.update_completion(f"{tag}-1", {"x": "y"})
    assert (await store.get_completion(f"{tag}-1")).metadata == {"x": "y"}
    assert await store.delete_completion(f"{tag}-1")
    assert await store.get_completion(f"{tag}-1") is None
    assert not await store.delete_completion(f"{tag}-1")
