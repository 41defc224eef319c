"""Two regional topologies as local processes (`python -m services.topology up --region R
--port-base B --redis-db N`, what `make up REGION=R PORT_BASE=B REDIS_DB=N` runs): each
region's five services, its own Redis database and upstream, one shared PostgreSQL.
Region preference, failover and residency through the official openai client."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import openai
import pytest
import redis as sync_redis
from openai import AsyncOpenAI

from services import topology
from tests.conftest import DATABASE_URL, MASTER_KEY, REDIS_URL
from tests.distributed.test_topology import free_port_base
from tests.regions.conftest import EU, REGIONS, UPSTREAM_KEY, UPSTREAM_KEY_ENV, US, config_text, served_by


def private_database(action: str, name: str) -> str:
    """Create or drop a database of this module's own on the machine's PostgreSQL; the
    DSN of the new one. Its own, so the schema is this branch's whatever the shared
    database holds, and dropping it at the end removes every row it got."""
    base = urlsplit(DATABASE_URL)

    async def run() -> None:
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            if action == "create":
                await conn.execute(f'CREATE DATABASE "{name}"')
            else:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())
    return urlunsplit(base._replace(path=f"/{name}"))


def two_port_bases() -> dict[str, int]:
    """Two bases whose ten ports each (five public, five metrics) do not overlap."""
    while True:
        eu, us = free_port_base(), free_port_base()
        if abs(eu - us) >= 5:
            return {EU: eu, US: us}


@pytest.fixture(scope="module")
def regions(tmp_path_factory, upstreams):
    tmp = tmp_path_factory.mktemp("regions")
    stream = f"test:usage:regions:{uuid.uuid4().hex[:8]}"
    config = tmp / "gateway.yaml"
    config.write_text(config_text(upstreams, f'{{stream: "{stream}", flush_interval_ms: 5}}'))
    # Each region its own Redis database (never 0, where most tests work), as each region's
    # cluster has its own Redis; the stream name is unique all the same.
    databases = dict(zip(REGIONS, random.sample(range(1, 16), 2), strict=True))
    bases = two_port_bases()
    usage_db = f"regions_{uuid.uuid4().hex[:12]}"
    dsn = private_database("create", usage_db)
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": dsn,  # one PostgreSQL for both regions
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
    }
    env.pop("GATEWAY_REGION", None)

    def command(action: str, region: str) -> list[str]:
        where = ["--region", region, "--port-base", str(bases[region]), "--redis-db", str(databases[region])]
        return [sys.executable, "-m", "services.topology", action, "--run-dir", str(tmp / region), *where]

    starting = {
        r: subprocess.Popen(command("up", r), env=env, stdout=subprocess.PIPE, text=True) for r in REGIONS
    }
    try:
        for region, proc in starting.items():
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{region}: {out}"
            assert f"router     ready at http://127.0.0.1:{bases[region]} in {region}" in out
        yield {"bases": bases, "databases": databases, "stream": stream, "tmp": tmp, "dsn": dsn}
    finally:
        for region in REGIONS:
            subprocess.run(command("down", region), env=env, capture_output=True, check=True)
            assert not list((tmp / region).glob("*.pid"))
            db = sync_redis.from_url(topology.with_database(REDIS_URL, databases[region]))
            db.delete(stream, f"{stream}:dead")
            db.close()
        private_database("drop", usage_db)


def client(regions, region: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"http://127.0.0.1:{regions['bases'][region]}/v1", api_key=MASTER_KEY, max_retries=0
    )


async def ask(regions, region: str, model: str, request_id: str):
    async with client(regions, region) as openai_client:
        raw = await openai_client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": f"hello from {region}"}],
            extra_headers={"x-request-id": request_id},
        )
        return raw.headers, raw.parse()


async def test_each_router_serves_from_its_own_region_whatever_the_weights(regions, upstreams):
    before = {m: served_by(upstreams, m) for m in ("chat-eu", "chat-us")}
    prefix = uuid.uuid4().hex[:8]
    for i in range(6):
        headers, reply = await ask(regions, EU, "chat", f"{prefix}-eu-{i}")
        assert reply.choices[0].message.content
        assert headers["x-gateway-attempts"].startswith("chat/0;status=200")
        headers, _ = await ask(regions, US, "chat", f"{prefix}-us-{i}")
        assert headers["x-gateway-attempts"].startswith("chat/1;status=200")
    # us-east's deployment weighs a millionth of eu-west's, and still took every us-east request
    # (eu-west's router keeps its requests at home by its residency rule anyway).
    assert served_by(upstreams, "chat-eu")[EU] - before["chat-eu"][EU] == 6
    assert served_by(upstreams, "chat-us")[US] - before["chat-us"][US] == 6
    assert served_by(upstreams, "chat-eu")[US] == served_by(upstreams, "chat-us")[EU] == 0


async def test_a_region_whose_own_deployment_fails_fails_over_to_the_other(regions, upstreams):
    headers, reply = await ask(regions, US, "us-down", uuid.uuid4().hex)
    assert reply.choices[0].message.content
    # us-east's own deployment (us-down/1) failed (its upstream said 503); eu-west's answered.
    assert re.fullmatch(
        r"us-down/1;status=5\d\d;ms=[\d.]+, us-down/0;status=200;ms=[\d.]+", headers["x-gateway-attempts"]
    )
    assert served_by(upstreams, "us-down-eu")[EU] >= 1
    async with httpx.AsyncClient() as http:
        metrics_port = topology.metrics_ports(regions["bases"][US])["router"]
        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    failovers = re.search(
        r'gateway_cross_region_requests_total\{deployment_region="eu-west",region="us-east"\} (\S+)', text
    ) or re.search(
        r'gateway_cross_region_requests_total\{region="us-east",deployment_region="eu-west"\} (\S+)', text
    )
    assert failovers, text
    assert float(failovers[1]) >= 1


async def test_a_request_kept_in_its_region_gets_a_clear_error_instead_of_failing_over(regions, upstreams):
    with pytest.raises(openai.InternalServerError) as err:
        await ask(regions, EU, "eu-down", uuid.uuid4().hex)
    assert err.value.status_code == 503
    body = err.value.response.json()["error"]
    assert body["code"] == "region_unavailable"
    assert "eu-west" in body["message"]
    assert err.value.response.headers["retry-after"]
    assert served_by(upstreams, "eu-down-us")[US] == 0  # us-east's deployment was never called
    # The same model from us-east is served at home: the rule is eu-west's, not the model's.
    _, reply = await ask(regions, US, "eu-down", uuid.uuid4().hex)
    assert reply.choices[0].message.content
    assert served_by(upstreams, "eu-down-us")[US] == 1


async def test_a_model_with_no_deployment_in_the_allowed_regions_is_refused(regions, upstreams):
    with pytest.raises(openai.PermissionDeniedError) as err:
        await ask(regions, EU, "us-only", uuid.uuid4().hex)
    assert err.value.response.json()["error"]["code"] == "region_not_allowed"
    assert served_by(upstreams, "us-only-us")[US] == 0


async def test_usage_from_both_regions_lands_in_the_one_database(regions):
    prefix = f"regions-{uuid.uuid4().hex[:10]}"
    for region in REGIONS:
        for i in range(3):
            await ask(regions, region, "chat", f"{prefix}-{region}-{i}")
    query = "SELECT count(*) FROM usage_events WHERE request_id LIKE $1"
    pg = await asyncpg.connect(regions["dsn"])
    try:
        deadline = time.monotonic() + 60
        counts = {}
        while time.monotonic() < deadline:
            counts = {r: await pg.fetchval(query, f"{prefix}-{r}-%") for r in REGIONS}
            if all(c == 3 for c in counts.values()):
                break
            await asyncio.sleep(0.1)
        assert counts == {EU: 3, US: 3}
    finally:
        await pg.close()
    # Each region's events went through its own Redis database, none through the default one.
    for region in REGIONS:
        db = sync_redis.from_url(topology.with_database(REDIS_URL, regions["databases"][region]))
        try:
            assert db.exists(regions["stream"]), region
        finally:
            db.close()
    default = sync_redis.from_url(topology.with_database(REDIS_URL, 0))
    try:
        assert not default.exists(regions["stream"])
    finally:
        default.close()


def test_each_regions_processes_get_its_region_data_folder_and_redis_database(regions):
    for region in REGIONS:
        for name in topology.ORDER:
            pid = int((regions["tmp"] / region / f"{name}.pid").read_text())
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
            assert env["GATEWAY_REGION"] == region, name
            # The router's usage spool lives in the data folder: one per region.
            assert env["GATEWAY_DATA_DIR"] == str(regions["tmp"] / "data" / region), name
            assert env["REDIS_URL"].endswith(f"/{regions['databases'][region]}"), name


def test_a_topology_takes_only_a_region_name_and_a_database_number(capsys):
    for wrong in (["--region", "EU West"], ["--redis-db", "16"]):
        with pytest.raises(SystemExit) as exit_info:
            topology.main(["up", *wrong])
        assert exit_info.value.code == 2
    assert "region name" in capsys.readouterr().err
    assert topology.with_database("redis://:pw@host:6380/0?x=1", 7) == "redis://:pw@host:6380/7?x=1"
    assert topology.with_database("redis://127.0.0.1:6379", 3) == "redis://127.0.0.1:6379/3"
