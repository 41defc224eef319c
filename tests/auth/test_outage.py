"""Redis away (and then the auth service too): the router keeps authenticating from its
in-process cache, counts limits locally, and says so in its metrics and logs."""

from __future__ import annotations

import logging

import httpx

from services.auth.app import create_app
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app
from tests.auth.conftest import AUTH_DSN, Made, auth_config, purge
from tests.auth.serving import serve
from tests.conftest import MASTER_KEY, REDIS_URL, make_settings
from tests.e2e.conftest import metric_value

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


async def test_redis_and_then_auth_away(tmp_path, made: Made, redis_prefix: str, caplog):
    extra = "  degraded_ttl_s: 0.05\n"  # trust the cache only briefly while deaf to invalidations
    text = auth_config(redis_prefix).replace("auth:\n", "auth:\n" + extra, 1)
    settings = make_settings(tmp_path, text, database_url=AUTH_DSN, redis_url=REDIS_URL)
    auth = create_app(settings, process_metrics=False)
    body = {"model": "mock-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    master = {"authorization": f"Bearer {MASTER_KEY}"}
    caplog.set_level(logging.WARNING, logger="gateway.router")
    try:
        async with serve(auth) as auth_url:
            # The router's Redis is unreachable; the auth service's is fine.
            router = router_app.create_app(
                settings.replace(auth_url=auth_url, redis_url=DEAD_REDIS), stream=MemoryUsageStream()
            )
            async with serve(router) as router_url, httpx.AsyncClient(timeout=30) as http:
                created = await http.post(f"{auth_url}/v1/keys", json={"rpm": 3}, headers=master)
                made.note(created.json())
                headers = {"authorization": f"Bearer {created.json()['key']}"}
                statuses = [
                    (
                        await http.post(f"{router_url}/v1/chat/completions", json=body, headers=headers)
                    ).status_code
                    for _ in range(4)
                ]
                assert statuses == [200, 200, 200, 429]  # the limit holds, counted in this process
                metrics = (await http.get(f"{router_url}/metrics")).text
                assert metric_value(metrics, "gateway_redis_degraded") == 1
                assert metric_value(metrics, "gateway_auth_invalidations_connected") == 0
                assert metric_value(metrics, "gateway_auth_lookups_total", source="service") >= 1
                assert (
                    metric_value(
                        metrics, "gateway_admission_decisions_total", outcome="admitted", counter="local"
                    )
                    == 3
                )
    finally:
        await purge(Made(), redis_prefix)
    assert any("redis unreachable" in r.getMessage() for r in caplog.records)


async def test_a_known_key_keeps_working_while_auth_and_redis_are_away(
    tmp_path, made: Made, redis_prefix: str
):
    extra = "  degraded_ttl_s: 0.05\n"
    text = auth_config(redis_prefix).replace("auth:\n", "auth:\n" + extra, 1)
    settings = make_settings(tmp_path, text, database_url=AUTH_DSN, redis_url=REDIS_URL)
    auth = create_app(settings, process_metrics=False)
    body = {"model": "mock-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    master = {"authorization": f"Bearer {MASTER_KEY}"}
    auth_server = serve(auth)
    auth_url = await auth_server.__aenter__()
    try:
        router = router_app.create_app(
            settings.replace(auth_url=auth_url, redis_url=DEAD_REDIS), stream=MemoryUsageStream()
        )
        async with serve(router) as router_url, httpx.AsyncClient(timeout=30) as http:
            created = (await http.post(f"{auth_url}/v1/keys", json={}, headers=master)).json()
            made.note(created)
            known = {"authorization": f"Bearer {created['key']}"}
            assert (
                await http.post(f"{router_url}/v1/chat/completions", json=body, headers=known)
            ).status_code == 200
            fresh = (await http.post(f"{auth_url}/v1/keys", json={}, headers=master)).json()
            made.note(fresh)
            await auth_server.__aexit__(None, None, None)  # the auth service goes away
            auth_server = None
            response = await http.post(f"{router_url}/v1/chat/completions", json=body, headers=known)
            assert response.status_code == 200, response.text
            unseen = {"authorization": f"Bearer {fresh['key']}"}
            response = await http.post(f"{router_url}/v1/chat/completions", json=body, headers=unseen)
            assert response.status_code == 503  # never seen: cannot be checked, not let in
            assert response.json()["error"]["code"] == "auth_unavailable"
            assert fresh["key"] not in response.text
            metrics = (await http.get(f"{router_url}/metrics")).text
            assert metric_value(metrics, "gateway_auth_lookups_total", source="stale") >= 1
            assert metric_value(metrics, "gateway_auth_lookups_total", source="failed") >= 1
    finally:
        if auth_server is not None:
            await auth_server.__aexit__(None, None, None)
        await purge(Made(), redis_prefix)
