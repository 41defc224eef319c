"""The distributed topology (`make up`): five processes over HTTP, Redis and PostgreSQL,
driven with the official openai client."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid

import asyncpg
import httpx
import pytest
import redis as sync_redis
from openai import AsyncOpenAI

from services import topology
from tests.conftest import DATABASE_URL, MASTER_KEY, REDIS_URL, run_sql, with_search_path
from tests.integration.streams import wait_settled


def free_port_base() -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 60000:
            continue
        ok = True
        for port in [
            *range(base, base + 5),
            *range(base + topology.METRICS_OFFSET, base + topology.METRICS_OFFSET + 5),
        ]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no five free consecutive ports (and five more for metrics)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("topology")
    stream = f"test:usage:{uuid.uuid4().hex[:8]}"
    schema = f"topology_{uuid.uuid4().hex[:8]}"  # its tables, away from the shared schema
    asyncio.run(run_sql(f"CREATE SCHEMA {schema}"))
    config = tmp / "gateway.yaml"
    config.write_text(
        f"""
usage: {{stream: "{stream}", flush_interval_ms: 5}}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
"""
    )
    env = {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": with_search_path(DATABASE_URL, schema),
    }
    base = free_port_base()
    run_dir = tmp / "run"
    command = [sys.executable, "-m", "services.topology"]
    where = ["--run-dir", str(run_dir), "--port-base", str(base)]
    env = {**os.environ, **env}
    try:
        started = subprocess.run([*command, "up", *where], env=env, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr + started.stdout
        yield {"base": base, "stream": stream, "run_dir": run_dir, "dsn": env["DATABASE_URL"]}
    finally:
        subprocess.run([*command, "down", *where], env=env, capture_output=True, check=True)
        assert not list(run_dir.glob("*.pid"))
        sync_redis.from_url(REDIS_URL).delete(stream, f"{stream}:dead")
        asyncio.run(run_sql(f"DROP SCHEMA {schema} CASCADE"))


def router_url(cluster) -> str:
    return f"http://127.0.0.1:{cluster['base']}"


async def test_every_service_is_up_with_probes_and_metrics(cluster):
    metrics_ports = topology.metrics_ports(cluster["base"])
    async with httpx.AsyncClient() as http:
        for name, port in topology.ports(cluster["base"]).items():
            for path in ("/healthz", "/readyz"):
                response = await http.get(f"http://127.0.0.1:{port}{path}")
                assert response.status_code == 200, (name, path, response.text)
            # Metrics are on the metrics port only.
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 404
            metrics = await http.get(f"http://127.0.0.1:{metrics_ports[name]}/metrics")
            assert metrics.status_code == 200
            assert "process_resident_memory_bytes" in metrics.text
            assert "gateway_server_connections" in metrics.text
        # The router probes its helpers over HTTP with their client classes.
        deadline = time.monotonic() + 20
        while True:
            text = (await http.get(f"http://127.0.0.1:{metrics_ports['router']}/metrics")).text
            up = [
                s
                for s in ("auth", "classifier", "cache", "analytics")
                if f'gateway_helper_ready{{service="{s}"}} 1.0' in text
            ]
            if len(up) == 4 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert len(up) == 4, text


async def test_n_requests_give_exactly_n_usage_rows(cluster, redis):
    prefix = f"dist-{uuid.uuid4().hex[:10]}"
    n = 30
    client = AsyncOpenAI(base_url=f"{router_url(cluster)}/v1", api_key=MASTER_KEY, max_retries=0)
    try:

        async def one(i: int) -> None:
            headers = {"x-request-id": f"{prefix}-{i}"}
            if i % 3 == 0:
                stream = await client.chat.completions.create(
                    model="mock-small",
                    messages=[{"role": "user", "content": f"hello {i}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                chunks = [c async for c in stream]
                assert chunks[-1].usage is not None
            else:
                reply = await client.chat.completions.create(
                    model="mock-small",
                    messages=[{"role": "user", "content": f"hello {i}"}],
                    extra_headers=headers,
                )
                assert reply.choices[0].message.content

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    query = "SELECT count(*) FROM usage_events WHERE request_id LIKE $1"
    pg = await asyncpg.connect(cluster["dsn"])
    try:
        deadline = time.monotonic() + 30
        while (rows := await pg.fetchval(query, f"{prefix}-%")) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert rows == n
        # Count again once every stream entry was read and acknowledged (a duplicate
        # delivery would have been stored by then), not after a guessed pause.
        await wait_settled(redis, cluster["stream"])
        assert await pg.fetchval(query, f"{prefix}-%") == n
        streamed = await pg.fetchval(
            "SELECT count(*) FROM usage_events WHERE request_id LIKE $1 AND stream AND ttft_ms IS NOT NULL",
            f"{prefix}-%",
        )
        assert streamed == len(range(0, n, 3))
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"http://127.0.0.1:{cluster['base'] + 4}/v1/usage/events",
                params={"request_id": f"{prefix}-1"},
                headers={"authorization": f"Bearer {MASTER_KEY}"},
            )
        assert response.status_code == 200
        assert response.json()["data"][0]["model"] == "mock-small"
    finally:
        await pg.close()


async def test_errors_keep_the_openai_shape(cluster):
    async with httpx.AsyncClient(base_url=router_url(cluster)) as http:
        response = await http.post("/v1/chat/completions", content=b"{")
        assert response.status_code == 401
        response = await http.post(
            "/v1/chat/completions", content=b"{", headers={"authorization": f"Bearer {MASTER_KEY}"}
        )
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_down_leaves_other_processes_alone(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / "auth.pid").write_text("999999")  # stale pid file: just removed
        assert topology.down(run_dir) == 0
        assert not list(run_dir.glob("*.pid"))
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


async def test_stored_completions_cross_the_network(cluster):
    """store: true through the router, kept by the analytics process over HTTP, read back
    through the router with the official client."""
    tag = uuid.uuid4().hex[:12]
    client = AsyncOpenAI(base_url=f"{router_url(cluster)}/v1", api_key=MASTER_KEY, max_retries=0)
    try:
        reply = await client.chat.completions.create(
            model="mock-small", messages=[{"role": "user", "content": tag}], store=True, metadata={"tag": tag}
        )
        deadline = time.monotonic() + 20
        while not (page := await client.chat.completions.list(metadata={"tag": tag})).data:
            assert time.monotonic() < deadline, "the completion was not stored"
            await asyncio.sleep(0.05)
        assert [c.id for c in page.data] == [reply.id]
        messages = await client.chat.completions.messages.list(reply.id)
        assert [m.content for m in messages.data] == [tag]
        assert (await client.chat.completions.delete(reply.id)).deleted
    finally:
        await client.close()


async def test_every_service_counts_its_http_requests(cluster):
    metrics_ports = topology.metrics_ports(cluster["base"])
    async with httpx.AsyncClient() as http:
        for offset, name in enumerate(("router", "auth", "classifier", "cache", "analytics")):
            url = f"http://127.0.0.1:{cluster['base'] + offset}"
            await http.get(f"{url}/healthz")
            page = (await http.get(f"http://127.0.0.1:{metrics_ports[name]}/metrics")).text
            assert (
                f'gateway_http_requests_total{{method="GET",route="/healthz",service="{name}",status="200"}}'
                in page
            )
            assert "gateway_http_request_duration_seconds_bucket" in page
