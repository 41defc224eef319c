"""The analytics service as a real process over HTTP: killed mid-stream it loses nothing;
its dead-letter API lists and replays what the store refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.kernel.stream import RedisUsageStream
from services.router.metrics import RouterMetrics
from services.router.spool import Spool
from services.router.usage import UsagePublisher
from tests.conftest import MASTER_KEY, unique
from tests.integration.events import make_event
from tests.integration.servers import RedisServer, free_port
from tests.integration.streams import stream_settled, wait_for, wait_settled

ROOT = Path(__file__).resolve().parents[2]
STREAM = "gateway:usage"


class AnalyticsProcess:
    """`python -m services analytics` on a free port, started and killed at will."""

    def __init__(self, tmp_path: Path, redis_url: str, database_url: str) -> None:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f'usage: {{stream: "{STREAM}"}}\n'
            "models:\n  - name: mock-small\n    deployments:\n      - {provider: mock, model: mock-small}\n"
        )
        self.env = {
            **os.environ,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_MASTER_KEY": MASTER_KEY,
            "GATEWAY_DATA_DIR": str(tmp_path / "data"),
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "analytics.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services", "analytics", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        end = time.monotonic() + deadline
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < end, "analytics did not become ready"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
async def analytics(private_redis, private_pg, tmp_path):
    """A process of its own, on a Redis of its own: this one gets killed."""
    process = AnalyticsProcess(tmp_path, private_redis.url, private_pg.dsn)
    process.start()
    redis = aioredis.from_url(private_redis.url)
    conn = await asyncpg.connect(private_pg.dsn)
    try:
        yield process, redis, conn
    finally:
        process.close()
        await redis.aclose()
        await conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, private_pg):
    """One process for the API tests of this module (they tag what they look at)."""
    tmp = tmp_path_factory.mktemp("analytics")
    server = RedisServer(tmp / "redis")
    server.start()
    process = AnalyticsProcess(tmp, server.url, private_pg.dsn)
    try:
        process.start()
        yield process, server.url, private_pg.dsn
    finally:
        process.close()
        server.close()


@pytest.fixture
async def api(served):
    process, redis_url, dsn = served
    redis = aioredis.from_url(redis_url)
    conn = await asyncpg.connect(dsn)
    try:
        yield process, redis, conn
    finally:
        await redis.aclose()
        await conn.close()


async def count(conn: asyncpg.Connection, tag: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", tag)


async def test_analytics_killed_mid_stream_loses_and_repeats_nothing(analytics):
    process, redis, conn = analytics
    assert process.proc is not None
    # Background work: it runs only when the core has nothing else to do (analytics.cpu_policy).
    assert os.sched_getscheduler(process.proc.pid) == os.SCHED_IDLE
    stream = RedisUsageStream(redis, STREAM, "analytics")
    tag = unique("killed")
    published = 0

    async def publish(entries: int) -> None:
        nonlocal published
        for _ in range(entries):
            await stream.publish([orjson.dumps(make_event(tag, published + i)) for i in range(50)])
            published += 50

    await publish(200)  # a backlog: the consumer is busy for a while
    # Kill it while it holds entries it has read and not acknowledged: freeze it, look,
    # and let it run a little more if it holds none at that instant.
    assert process.proc is not None
    end = time.monotonic() + 30
    while True:
        process.proc.send_signal(signal.SIGSTOP)
        if (await redis.xpending(STREAM, "analytics"))["pending"] > 0:
            break
        process.proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < end, "the consumer never held an unacknowledged entry"
        await asyncio.sleep(0.005)
    stored_before, published_before = await count(conn, tag), published
    process.kill()
    await publish(20)
    process.start()
    await publish(20)
    await wait_for(lambda: _at_least(conn, tag, published), what=f"{published} rows", deadline=60)
    await wait_settled(redis, STREAM)
    assert await count(conn, tag) == published
    assert (
        await conn.fetchval("SELECT count(DISTINCT request_id) FROM usage_events WHERE key_id = $1", tag)
        == published
    )
    assert stored_before < published_before, "it was to die mid-stream"


async def _at_least(conn: asyncpg.Connection, tag: str, n: int) -> bool:
    return await count(conn, tag) >= n


async def test_dead_letter_api_lists_and_replays(api):
    process, redis, conn = api
    stream = RedisUsageStream(redis, STREAM, "analytics")
    tag = unique("dlapi")
    constraint = f"no_{tag.replace('-', '_')}"
    await conn.execute(
        f"ALTER TABLE usage_records ADD CONSTRAINT {constraint} CHECK (request_id <> '{tag}-1')"
    )
    events = [make_event(tag, i) for i in range(5)]  # the second is refused by the store
    events[3]["status"] = 999  # refused by decoding
    await stream.publish([orjson.dumps(e) for e in events])
    await wait_settled(redis, STREAM)
    assert await count(conn, tag) == 3

    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    async with httpx.AsyncClient(base_url=process.url, headers=auth) as http:
        listing = (await http.get("/v1/usage/dead-letters")).json()
        mine = [d for d in listing["data"] if orjson.loads(d["data"]).get("key_id") == tag]
        assert sorted((orjson.loads(d["data"])["request_id"], d["stage"]) for d in mine) == [
            (f"{tag}-1", "refused"),
            (f"{tag}-3", "invalid"),
        ]
        assert set(mine[0]) == {"id", "stage", "reason", "source", "at", "data"}
        refused = next(d for d in mine if d["stage"] == "refused")
        assert constraint in refused["reason"]
        assert listing["total"] >= 2

        await conn.execute(f"ALTER TABLE usage_records DROP CONSTRAINT {constraint}")
        replay = await http.post("/v1/usage/dead-letters/replay", json={"ids": [refused["id"]]})
        assert replay.status_code == 200, replay.text
        assert replay.json()["replayed"] == 1
        await wait_settled(redis, STREAM)
        assert await count(conn, tag) == 4

        # Replaying everything: the still-invalid event comes back to the dead letters.
        replay = await http.post("/v1/usage/dead-letters/replay", json={})
        assert replay.json()["replayed"] >= 1
        await wait_settled(redis, STREAM)
        left = (await http.get("/v1/usage/dead-letters", params={"limit": 1000})).json()["data"]
        assert [orjson.loads(d["data"])["request_id"] for d in left if tag in d["data"]] == [f"{tag}-3"]
        metrics = (await http.get("/metrics")).text
        assert 'gateway_analytics_events_dead_lettered_total{stage="refused"} 1.0' in metrics
        assert 'gateway_analytics_events_dead_lettered_total{stage="invalid"}' in metrics
        assert "gateway_analytics_dead_letters " in metrics


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "param"),
    [
        ("GET", "/v1/usage/dead-letters", {"params": {"limit": "0"}}, 400, "limit"),
        ("GET", "/v1/usage/dead-letters", {"params": {"limit": "many"}}, 400, "limit"),
        ("GET", "/v1/usage/dead-letters", {"params": {"limit": "1001"}}, 400, "limit"),
        ("GET", "/v1/usage/dead-letters", {"params": {"after": "yesterday"}}, 400, "after"),
        ("POST", "/v1/usage/dead-letters/replay", {"content": b"{"}, 400, None),
        ("POST", "/v1/usage/dead-letters/replay", {"json": []}, 400, None),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"ids": "1-0"}}, 400, "ids"),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"ids": ["x"]}}, 400, "ids"),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"ids": ["1-0"] * 1001}}, 400, "ids"),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"limit": 0}}, 400, "limit"),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"ids": ["1-0"], "limit": 3}}, 400, None),
        ("POST", "/v1/usage/dead-letters/replay", {"json": {"every": True}}, 400, "every"),
        ("POST", "/v1/usage/dead-letters/replay", {"content": b" " * 70_000}, 413, None),
        ("DELETE", "/v1/usage/dead-letters", {}, 405, None),
        ("GET", "/v1/usage/dead-letters/replay", {}, 405, None),
    ],
)
async def test_dead_letter_api_refuses_bad_input_cleanly(served, method, path, kwargs, status, param):
    process = served[0]
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    async with httpx.AsyncClient(base_url=process.url, headers=auth) as http:
        response = await http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param


async def test_dead_letter_api_needs_the_key(served):
    process = served[0]
    async with httpx.AsyncClient(base_url=process.url) as http:
        assert (await http.get("/v1/usage/dead-letters")).status_code == 401
        bad = {"authorization": "Bearer wrong-key"}
        assert (await http.post("/v1/usage/dead-letters/replay", json={}, headers=bad)).status_code == 401


async def test_redis_and_analytics_killed_during_a_burst_leave_one_row_per_request(
    private_redis, private_pg, tmp_path
):
    """A router publishing a burst; Redis is killed and restarted, and so is the analytics
    process (SIGKILL) while Redis is down; every request still has exactly one row, and
    the roll-ups count each exactly once."""
    process = AnalyticsProcess(tmp_path, private_redis.url, private_pg.dsn)
    process.start()
    router_redis = aioredis.from_url(
        private_redis.url, socket_timeout=2.0, socket_connect_timeout=1.0, retry=None
    )
    spool = Spool(tmp_path / "spool")
    publisher = UsagePublisher(
        RedisUsageStream(router_redis, STREAM, "analytics"),
        spool,
        RouterMetrics(CollectorRegistry()),
        flush_interval=0.005,
        max_batch=16,
        replay_every=0.2,
    )
    task = asyncio.create_task(publisher.run())
    conn = await asyncpg.connect(private_pg.dsn)
    tag = unique("burst")
    emitted = 0

    async def burst(n: int) -> None:
        nonlocal emitted
        for _ in range(n):
            publisher.emit(make_event(tag, emitted, cost=0.001))
            emitted += 1
            if emitted % 10 == 0:
                await asyncio.sleep(0.002)

    try:
        await burst(300)
        private_redis.kill()
        await burst(200)  # spooled by the router
        process.kill()  # with whatever it had read and not acknowledged
        await burst(100)
        private_redis.start()
        await burst(100)
        process.start()
        await burst(100)
        await wait_for(lambda: _at_least(conn, tag, emitted), what=f"{emitted} rows", deadline=90)

        async def settled() -> bool:
            if publisher._buffer or spool.has_events():
                return False
            check = aioredis.from_url(private_redis.url)
            try:
                return await stream_settled(check, STREAM)
            finally:
                await check.aclose()

        await wait_for(settled, what="the router, the spool and the stream to be empty", deadline=60)
        assert await count(conn, tag) == emitted
        distinct = "SELECT count(DISTINCT request_id) FROM usage_events WHERE key_id = $1"
        assert await conn.fetchval(distinct, tag) == emitted
        for layer in ("minute", "hour", "day"):
            rolled = await conn.fetchval(
                f"SELECT sum(r.requests) FROM usage_{layer} r JOIN usage_callers c ON c.id = r.caller"
                " WHERE c.key_id = $1",
                tag,
            )
            assert rolled == emitted, layer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
        await router_redis.aclose()
        await conn.close()
        process.close()
