"""The distributed topology (`make up`: five processes) plus a second router process,
over real HTTP, Redis and PostgreSQL: limits that hold across routers, revocation
that reaches every router, and no plaintext secret anywhere.

The last test greps every log line, error body, database row and Redis value this
module produced for every key and password it created.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis as sync_redis

from services.auth.client import NANO, new_api_key, period_bounds
from tests.auth.conftest import PASSWORD, Made, purge, unique_name
from tests.conftest import DATABASE_URL, MASTER_KEY, REDIS_URL, free_port, with_search_path
from tests.distributed.test_topology import free_port_base

PRICE_IN, PRICE_OUT = 1000.0, 2000.0  # per million tokens: a request costs about a tenth of a cent
SECRETS: list[str] = []  # every plaintext key and password this module made


def config(prefix: str, stream: str) -> str:
    return f"""
server: {{access_log: true}}
usage: {{stream: "{stream}", flush_interval_ms: 5}}
auth:
  redis_prefix: "{prefix}"
  cache_ttl_s: 3600          # only an invalidation can make a router forget a key
  login: {{scrypt_n: 16384, scrypt_p: 1}}
  limits: {{redis_timeout_s: 10}}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
        price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
  - name: mock-slow
    deployments:
      - provider: mock
        model: mock-slow
        mock: {{latency_ms: 150}}
        price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
"""


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not ready: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("auth-cluster")
    prefix = f"test:auth:{uuid.uuid4().hex[:10]}"
    # Accounts and usage live in a schema of their own, dropped at the end.
    schema = f"auth_cluster_{uuid.uuid4().hex[:10]}"
    asyncio.run(_sql(DATABASE_URL, f"CREATE SCHEMA {schema}"))
    dsn = with_search_path(DATABASE_URL, schema)
    stream = f"test:usage:{uuid.uuid4().hex[:8]}"
    (tmp / "gateway.yaml").write_text(config(prefix, stream))
    base = free_port_base()
    run_dir = tmp / "run"
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": dsn,
        "LOG_LEVEL": "DEBUG",
    }
    command = [sys.executable, "-m", "services.topology"]
    where = ["--run-dir", str(run_dir), "--port-base", str(base)]
    second = None
    made = Made()
    try:
        started = subprocess.run([*command, "up", *where], env=env, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr + started.stdout
        port = free_port()
        urls = {name: f"http://127.0.0.1:{base + off}" for name, off in (("auth", 1), ("analytics", 4))}
        helpers = (("auth", 1), ("classifier", 2), ("cache", 3), ("analytics", 4))
        second_env = {**env, **{f"{n.upper()}_URL": f"http://127.0.0.1:{base + o}" for n, o in helpers}}
        log = run_dir / "router-2.log"
        with log.open("wb") as out:
            second = subprocess.Popen(
                [sys.executable, "-m", "services", "router", "--port", str(port)],
                env=second_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        routers = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{port}"]
        wait_ready(routers[1], second, log)
        yield {"routers": routers, "prefix": prefix, "run_dir": run_dir, "made": made, "dsn": dsn, **urls}
    finally:
        if second is not None:
            second.terminate()
            try:
                second.wait(timeout=20)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()
        subprocess.run([*command, "down", *where], env=env, capture_output=True, check=True)
        asyncio.run(purge(made, prefix, dsn))  # Redis entries; the schema's rows go with it
        asyncio.run(_sql(DATABASE_URL, f"DROP SCHEMA {schema} CASCADE"))
        with sync_redis.from_url(REDIS_URL) as r:
            r.delete(stream)


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def cluster_pg(cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the cluster's own schema."""
    conn = await asyncpg.connect(cluster["dsn"])
    yield conn
    await conn.close()


def read_value(r: sync_redis.Redis, name: bytes) -> object:
    """A Redis value as stored (DUMP would compress long strings and hide what they hold)."""
    kind = r.type(name)
    return r.hgetall(name) if kind == b"hash" else r.get(name) if kind == b"string" else r.dump(name)


def read_logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))


async def admin(cluster, method: str, path: str, json: Any = None, token: str = MASTER_KEY) -> Any:
    async with httpx.AsyncClient(base_url=cluster["auth"], timeout=30) as http:
        response = await http.request(method, path, json=json, headers={"authorization": f"Bearer {token}"})
    assert response.status_code in (200, 201), response.text
    data = response.json()
    cluster["made"].note(data)
    if isinstance(data.get("key"), str):
        SECRETS.append(data["key"])
    return data


def chat_body(i: int, model: str = "mock-small", max_tokens: int = 16) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": max_tokens}


async def test_rpm_is_exact_across_two_routers(cluster):
    team = await admin(cluster, "POST", "/v1/teams", {"name": unique_name("team")})
    key = await admin(cluster, "POST", "/v1/keys", {"team_id": team["id"], "rpm": 10})
    headers = {"authorization": f"Bearer {key['key']}"}
    routers = cluster["routers"]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"{routers[i % 2]}/v1/chat/completions", json=chat_body(i), headers=headers)
                for i in range(50)
            )
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 40, statuses
    by_router = {routers[i % 2] for i, r in enumerate(responses) if r.status_code == 200}
    refused = [r for r in responses if r.status_code == 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
    assert all(r.headers["x-ratelimit-limit-requests"] == "10" for r in refused)
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    ok = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(10))  # each admission saw every other one, whichever router
    assert by_router  # at least one router admitted (usually both)


async def test_concurrent_requests_never_overspend_a_budget_across_two_routers(cluster, cluster_pg):
    budget = 1.0  # a reservation is ~0.12 and a request really costs ~0.04: a few dozen fit
    team = await admin(cluster, "POST", "/v1/teams", {"name": unique_name("team")})
    key = await admin(cluster, "POST", "/v1/keys", {"team_id": team["id"], "budget": {"amount": budget}})
    headers = {"authorization": f"Bearer {key['key']}"}
    routers = cluster["routers"]
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
        for wave in range(6):
            responses = await asyncio.gather(
                *(
                    http.post(
                        f"{routers[i % 2]}/v1/chat/completions",
                        json=chat_body(wave * 100 + i, "mock-slow"),
                        headers=headers,
                    )
                    for i in range(20)
                )
            )
            statuses += [r.status_code for r in responses]
            for r in responses:
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "budget_exceeded"
                    assert r.json()["error"]["type"] == "insufficient_quota"
                else:
                    assert r.status_code == 200, r.text
    served = statuses.count(200)
    assert served > 0
    assert statuses.count(429) > 0  # the budget was reached
    # The spend counter after every settle, and the usage the analytics service recorded.
    counter = f"{cluster['prefix']}:spend:key:{key['id']}:{period_bounds(None, time.time())[0]}"
    deadline = time.monotonic() + 30
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await cluster_pg.fetch(
            "SELECT prompt_tokens, completion_tokens FROM usage_events WHERE key_id = $1 AND status = 200",
            key["id"],
        )
        if len(rows) >= served:
            break
        await asyncio.sleep(0.2)
    assert len(rows) == served
    recorded = (
        sum(row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT for row in rows) / 1e6
    )
    assert recorded <= budget
    # The last settles run in the background: wait until the counter holds the recorded cost.
    with sync_redis.from_url(REDIS_URL) as r:
        while True:
            spent = int(r.get(counter) or 0) / NANO
            assert spent <= budget
            if abs(spent - recorded) < 1e-6 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert abs(spent - recorded) < 1e-6  # every reservation was settled at the real cost
    shown = await admin(cluster, "GET", f"/v1/keys/{key['id']}")
    assert abs(shown["spend"]["amount"] - spent) < 1e-9


async def test_a_revoked_key_fails_within_a_second_on_every_router(cluster):
    key = await admin(cluster, "POST", "/v1/keys", {"name": "to-revoke"})
    headers = {"authorization": f"Bearer {key['key']}"}
    async with httpx.AsyncClient(timeout=30) as http:
        for router in cluster["routers"]:  # both routers now hold it in memory (TTL: an hour)
            for _ in range(2):
                response = await http.post(
                    f"{router}/v1/chat/completions", json=chat_body(0), headers=headers
                )
                assert response.status_code == 200, response.text
        await admin(cluster, "POST", f"/v1/keys/{key['id']}/revoke")
        revoked_at = time.monotonic()

        async def refused_after(router: str) -> float:
            deadline = revoked_at + 30  # generous: a failure here means the push did not arrive
            while time.monotonic() < deadline:
                response = await http.post(
                    f"{router}/v1/chat/completions", json=chat_body(0), headers=headers
                )
                if response.status_code == 401:
                    assert response.json()["error"]["message"] == "This API key has been revoked."
                    return time.monotonic() - revoked_at
                assert response.status_code == 200
            pytest.fail(f"{router} still accepts the revoked key")

        delays = await asyncio.gather(*(refused_after(r) for r in cluster["routers"]))
    print(f"revocation refused after {[round(d * 1000, 1) for d in delays]} ms")
    assert max(delays) < 1.0, delays


async def test_an_access_token_works_on_every_router(cluster):
    team = await admin(cluster, "POST", "/v1/teams", {"name": unique_name("team"), "models": ["mock-small"]})
    email = f"{unique_name('user')}@example.test"
    SECRETS.append(PASSWORD)
    await admin(cluster, "POST", "/v1/users", {"email": email, "team_id": team["id"], "password": PASSWORD})
    async with httpx.AsyncClient(timeout=30) as http:
        login = await http.post(
            f"{cluster['auth']}/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert login.status_code == 200
        token = login.json()["access_token"]
        SECRETS.append(token)
        wrong = await http.post(
            f"{cluster['auth']}/v1/auth/login", json={"email": email, "password": "nope" * 4}
        )
        assert wrong.status_code == 401
        assert "nope" not in wrong.text
        for router in cluster["routers"]:
            headers = {"authorization": f"Bearer {token}"}
            ok = await http.post(f"{router}/v1/chat/completions", json=chat_body(1), headers=headers)
            assert ok.status_code == 200, ok.text
            denied = await http.post(
                f"{router}/v1/chat/completions", json=chat_body(1, "mock-slow"), headers=headers
            )
            assert denied.status_code == 403
            assert token not in denied.text
            # A member reads the analytics API cut to its own usage, and nothing only admins may read.
            usage = await http.get(f"{cluster['analytics']}/v1/usage/summary", headers=headers)
            assert usage.status_code == 200, usage.text
            dead = await http.get(f"{cluster['analytics']}/v1/usage/dead-letters", headers=headers)
            assert dead.status_code == 403, dead.text
        # An admin's token is accepted there besides the master key.
        admin_email = f"{unique_name('admin')}@example.test"
        await admin(
            cluster, "POST", "/v1/users", {"email": admin_email, "role": "admin", "password": PASSWORD}
        )
        login = await http.post(
            f"{cluster['auth']}/v1/auth/login", json={"email": admin_email, "password": PASSWORD}
        )
        SECRETS.append(login.json()["access_token"])
        usage = await http.get(
            f"{cluster['analytics']}/v1/usage/summary",
            headers={"authorization": f"Bearer {login.json()['access_token']}"},
        )
        assert usage.status_code == 200, usage.text


async def test_wrong_keys_are_refused_without_echo(cluster):
    unknown = new_api_key()
    malformed = unknown[:-1] + ("A" if unknown[-1] != "A" else "B")
    SECRETS.extend([unknown, malformed])
    async with httpx.AsyncClient(timeout=30) as http:
        for router in cluster["routers"]:
            for token in (unknown, malformed, "sk-some-other-secret-value"):
                response = await http.post(
                    f"{router}/v1/chat/completions",
                    json=chat_body(2),
                    headers={"authorization": f"Bearer {token}"},
                )
                assert response.status_code == 401
                assert token not in response.text


async def test_no_plaintext_secret_reaches_a_log_the_database_or_redis(cluster, cluster_pg):
    assert len(SECRETS) >= 5
    await asyncio.sleep(0.5)  # let the last log lines reach the files
    logs = read_logs(cluster["run_dir"])
    assert '"msg": "request"' in logs or '"msg":"request"' in logs  # the access log is on: real lines
    rows = []
    for table in ("auth_keys", "auth_users", "auth_teams", "auth_audit", "auth_budgets", "auth_signing_keys"):
        rows += [str(dict(r)) for r in await cluster_pg.fetch(f"SELECT * FROM {table}")]
    database = "\n".join(rows)
    with sync_redis.from_url(REDIS_URL) as r:
        values = [
            name.decode() + str(read_value(r, name)) for name in r.scan_iter(match=f"{cluster['prefix']}:*")
        ]
    assert any(":k:" in v for v in values)  # key records are there, under their hashes
    assert any(":spend:" in v for v in values)
    stored = "\n".join(values)
    for secret in SECRETS:
        assert secret not in logs
        assert secret not in database
        assert secret not in stored
        if secret != PASSWORD:
            assert secret[10:40] not in logs  # not even a long part of it
    assert "scrypt$" in database  # the password is there, hashed
