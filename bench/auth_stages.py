"""What the authenticate and admit stages add to a request (`.venv/bin/python bench/auth_stages.py`).

The router app is driven in-process through ASGI (no sockets, so the figures are the
stages' own cost, not the network's) with a non-streaming chat request to the
built-in mock model, in rounds that interleave the variants:

- master key: the bootstrap administrator, no lookup, no limits (the baseline);
- virtual key: `sk-gw-...` from the in-process cache (warm), no limits;
- access token: a JWT, verified once and then from the verified-token cache;
- virtual key + RPM/TPM: one Lua script on Redis per request (admit) and one after
  it (settle, in the background);
- virtual key + RPM/TPM/budget: the same with a budget reserved and settled.

Target: the virtual key adds at most 0.1 ms at p50 over the master key. Needs Redis
and PostgreSQL (REDIS_URL, DATABASE_URL) for the limited variants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.auth import app as auth_app
from services.auth.client import AuthClient
from services.kernel.config import build_catalog, load_config
from services.kernel.settings import Settings
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app

MASTER = "sk-bench-master-key"
CONFIG = """
auth:
  redis_prefix: "bench:auth:{tag}"
  login: {{scrypt_n: 16384, scrypt_p: 1}}
usage: {{flush_interval_ms: 50}}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
        mock: {{max_tokens: 8}}
        price: {{input: 0.15, output: 0.6}}
"""
BODY = orjson.dumps({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})


async def call(app: Any, state: dict[str, Any], token: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": dict(state),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50": ordered[n // 2] * 1000,
        "p90": ordered[int(n * 0.9)] * 1000,
        "p99": ordered[int(n * 0.99)] * 1000,
        "mean": statistics.fmean(ordered) * 1000,
    }


async def run(requests: int, rounds: int) -> dict[str, dict[str, float]]:
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    path = tmp / "gateway.yaml"
    path.write_text(CONFIG.format(tag=tag))
    config = load_config(path)
    settings = Settings(
        config=config,
        catalog=build_catalog(config, {}),
        master_key=MASTER,
        data_dir=tmp / "data",
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        database_url=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    auth = auth_app.create_app(settings, process_metrics=False)
    client = AuthClient.in_process(auth)
    router = router_app.create_app(
        settings,
        stream=MemoryUsageStream(),
        helpers=router_app.Helpers(auth=client),
        sub_apps=[auth],
    )
    created: list[str] = []
    async with router.router.lifespan_context(router) as state:
        master = {"authorization": f"Bearer {MASTER}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=auth), base_url="http://auth"
        ) as admin:

            async def key(**fields: Any) -> str:
                data = (await admin.post("/v1/keys", json=fields, headers=master)).json()
                created.append(data["id"])
                return str(data["key"])

            team = (await admin.post("/v1/teams", json={"name": f"bench-{tag}"}, headers=master)).json()
            password = "bench password 123"
            user = (
                await admin.post(
                    "/v1/users",
                    json={"email": f"bench-{tag}@example.test", "team_id": team["id"], "password": password},
                    headers=master,
                )
            ).json()
            token = (
                await admin.post("/v1/auth/login", json={"email": user["email"], "password": password})
            ).json()["access_token"]
            big = 10**9
            variants = {
                "master key": MASTER,
                "virtual key": await key(),
                "access token (JWT)": token,
                "virtual key + RPM/TPM (Redis)": await key(rpm=big, tpm=big),
                "virtual key + RPM/TPM/budget (Redis)": await key(rpm=big, tpm=big, budget={"amount": 1e6}),
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for name, credential in variants.items():  # warm-up: caches, connections, scripts
                for _ in range(200):
                    assert await call(router, state, credential) == 200, name
            for _ in range(rounds):
                for name, credential in variants.items():
                    batch = samples[name]
                    for _ in range(requests // rounds):
                        started = time.perf_counter()
                        await call(router, state, credential)
                        batch.append(time.perf_counter() - started)
            figures = {name: percentiles(values) for name, values in samples.items()}
            with contextlib.suppress(Exception):
                await cleanup(settings, created, team["id"], user["id"], tag)
    return figures


async def cleanup(settings: Settings, keys: list[str], team_id: str, user_id: str, tag: str) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL auth.audit_purge = 'on'")
            ids = [*keys, team_id, user_id]
            await conn.execute(
                "DELETE FROM auth_audit WHERE target_id = ANY($1) OR actor = $2", ids, f"user:{user_id}"
            )
            await conn.execute("DELETE FROM auth_budgets WHERE owner_id = ANY($1)", ids)
            await conn.execute("DELETE FROM auth_keys WHERE id = ANY($1)", keys)
            await conn.execute("DELETE FROM auth_users WHERE id = $1", user_id)
            await conn.execute("DELETE FROM auth_teams WHERE id = $1", team_id)
    finally:
        await conn.close()
    redis = aioredis.from_url(settings.redis_url or "")
    names = [n async for n in redis.scan_iter(match=f"bench:auth:{tag}:*")]
    if names:
        await redis.delete(*names)
    await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per variant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    figures = asyncio.run(run(args.requests, args.rounds))
    base = figures["master key"]
    print(f"{'variant':<40}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'+p50 ms':>10}")
    for name, f in figures.items():
        print(f"{name:<40}{f['p50']:>9.3f}{f['p90']:>9.3f}{f['p99']:>9.3f}{f['p50'] - base['p50']:>+10.3f}")
    added = figures["virtual key"]["p50"] - base["p50"]
    verdict = "met" if added <= 0.1 else "NOT met"
    print(f"\nvirtual key (warm cache) adds {added * 1000:.0f} µs at p50: target <= 100 µs {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
