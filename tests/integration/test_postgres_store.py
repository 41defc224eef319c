import pytest

from services.analytics.store import PostgresUsageStore, SqliteUsageStore, migrations
from tests.conftest import DATABASE_URL, unique
from tests.integration.events import make_event


@pytest.fixture
async def store(pg):
    store = await PostgresUsageStore.open(DATABASE_URL)
    yield store
    await store.close()


async def test_migrations_are_idempotent(store, pg):
    await store.migrate()
    await store.migrate()
    versions = await pg.fetch(
        "SELECT version FROM schema_migrations WHERE service = 'analytics' ORDER BY version"
    )
    assert [r["version"] for r in versions] == [v for v, _ in migrations("postgres")]


async def test_insert_is_idempotent_on_event_id(store, pg):
    tag = unique("pgstore")
    events = [make_event(tag, i) for i in range(25)]
    try:
        assert await store.insert(events) == 25
        assert await store.insert(events) == 0
        assert await store.insert([*events[:5], make_event(tag, 99)]) == 1
        assert await pg.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag) == 26
        summary = await store.summary(None, tag)
        assert summary[0]["requests"] == 26
        assert summary[0]["prompt_tokens"] == sum(10 + i for i in range(25)) + 109
        rows = await store.events(f"{tag}-3", 10)
        assert rows[0]["prompt_tokens"] == 13
        assert rows[0]["created_at"] == pytest.approx(events[3]["created_at"], abs=1e-3)
        assert await store.check() == "ok"
    finally:
        await pg.execute("DELETE FROM usage_events WHERE key_id = $1", tag)


async def test_sqlite_store_has_the_same_contract(tmp_path):
    store = await SqliteUsageStore.open(tmp_path / "gateway.db")
    tag = unique("sqlite")
    try:
        events = [make_event(tag, i, ttft_ms=2.5, stream=True) for i in range(10)]
        assert await store.insert(events) == 10
        assert await store.insert(events) == 0
        summary = await store.summary(None, tag)
        assert summary[0]["requests"] == 10
        assert (await store.events(f"{tag}-0", 5))[0]["stream"] is True
    finally:
        await store.close()
    reopened = await SqliteUsageStore.open(tmp_path / "gateway.db")  # migrations skip, data stays
    assert (await reopened.summary(None, tag))[0]["requests"] == 10
    await reopened.close()
