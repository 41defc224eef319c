"""Residency from the auth service: regions set on keys and teams through the admin API
(PostgreSQL, in a schema of this module's own; Redis) reach the us-east router through its
key cache and the invalidation channel, and decide where the official openai client's
requests are served."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from services.auth.app import create_app as create_auth
from services.kernel.config import build_catalog
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app
from tests.auth.serving import serve
from tests.conftest import (
    DATABASE_URL,
    MASTER_KEY,
    REDIS_URL,
    make_settings,
    purge_redis_prefix,
    run_sql,
    with_search_path,
)
from tests.regions.conftest import EU, UPSTREAM_KEY, UPSTREAM_KEY_ENV, US, config_text, served_by

pytestmark = pytest.mark.asyncio(loop_scope="module")
PASSWORD = "correct horse battery staple"
MESSAGES = [{"role": "user", "content": "where am I served?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory, upstreams) -> AsyncIterator[dict[str, Any]]:
    """The auth service and a us-east router, each over real HTTP."""
    tmp = tmp_path_factory.mktemp("auth-residency")
    schema = f"auth_residency_{uuid.uuid4().hex[:12]}"
    prefix = f"test:auth-residency:{uuid.uuid4().hex[:10]}"
    await run_sql(f"CREATE SCHEMA {schema}")
    text = f'auth:\n  redis_prefix: "{prefix}"\n  login: {{scrypt_n: 16384, scrypt_p: 1}}\n' + config_text(
        upstreams, "{flush_interval_ms: 5}"
    )
    settings = make_settings(
        tmp, text, database_url=with_search_path(DATABASE_URL, schema), redis_url=REDIS_URL
    )
    settings = settings.replace(catalog=build_catalog(settings.config, {UPSTREAM_KEY_ENV: UPSTREAM_KEY}))
    try:
        async with serve(create_auth(settings, process_metrics=False)) as auth_url:
            router = router_app.create_app(
                settings.replace(auth_url=auth_url, region=US), stream=MemoryUsageStream()
            )
            async with serve(router) as router_url, httpx.AsyncClient(base_url=auth_url, timeout=30) as http:
                yield {"auth": http, "router": f"{router_url}/v1"}
    finally:
        await run_sql(f"DROP SCHEMA {schema} CASCADE")
        await purge_redis_prefix(prefix)


async def admin(gateway, method: str, path: str, body: Any = None, token: str = MASTER_KEY) -> Any:
    response = await gateway["auth"].request(
        method, path, json=body, headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


async def team(gateway, **fields: Any) -> dict[str, Any]:
    return dict(await admin(gateway, "POST", "/v1/teams", {"name": f"t-{uuid.uuid4().hex[:10]}", **fields}))


@contextlib.asynccontextmanager
async def client_for(gateway, secret: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway["router"], api_key=secret, max_retries=0) as client:
        yield client


async def answered(client: AsyncOpenAI, model: str = "chat") -> str:
    reply = await client.chat.completions.create(model=model, messages=MESSAGES)
    return reply.choices[0].message.content or ""


async def test_a_key_restricted_to_eu_west_is_served_there_by_the_us_east_router(gateway, upstreams):
    open_key = await admin(gateway, "POST", "/v1/keys", {})
    eu_key = await admin(gateway, "POST", "/v1/keys", {"regions": [EU]})
    eu_before, us_before = served_by(upstreams, "chat-eu")[EU], served_by(upstreams, "chat-us")[US]
    async with client_for(gateway, open_key["key"]) as client:
        assert await answered(client)  # unrestricted: the router's own region
    assert served_by(upstreams, "chat-us")[US] == us_before + 1
    async with client_for(gateway, eu_key["key"]) as client:
        assert await answered(client)
        stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert served_by(upstreams, "chat-eu")[EU] == eu_before + 2
    assert served_by(upstreams, "chat-us")[US] == us_before + 1  # nothing more went to us-east


async def test_a_key_whose_region_cannot_answer_gets_a_clear_error_not_another_region(gateway, upstreams):
    eu_key = await admin(gateway, "POST", "/v1/keys", {"regions": [EU]})
    elsewhere = served_by(upstreams, "eu-down-us")[US]
    async with client_for(gateway, eu_key["key"]) as client:
        with pytest.raises(openai.InternalServerError) as down:
            await answered(client, "eu-down")  # eu-west's deployment fails; us-east's would answer
        with pytest.raises(openai.PermissionDeniedError) as nowhere:
            await answered(client, "us-only")  # no deployment in eu-west at all
    assert down.value.status_code == 503
    assert down.value.response.json()["error"]["code"] == "region_unavailable"
    assert "eu-west" in down.value.message
    assert nowhere.value.response.json()["error"]["code"] == "region_not_allowed"
    assert served_by(upstreams, "eu-down-us")[US] == elsewhere  # never a call outside eu-west
    assert served_by(upstreams, "us-only-us")[US] == 0


async def test_the_team_narrows_the_key_and_an_empty_intersection_is_refused(gateway, upstreams):
    eu_team = await team(gateway, regions=[EU])
    both = await admin(gateway, "POST", "/v1/keys", {"team_id": eu_team["id"], "regions": [EU, US]})
    us_team = await team(gateway, regions=[US])
    crossed = await admin(gateway, "POST", "/v1/keys", {"team_id": us_team["id"], "regions": [EU]})
    eu_before, us_before = served_by(upstreams, "chat-eu")[EU], served_by(upstreams, "chat-us")[US]
    async with client_for(gateway, both["key"]) as client:
        assert await answered(client)  # key: eu-west or us-east; team: eu-west only
    assert served_by(upstreams, "chat-eu")[EU] == eu_before + 1
    async with client_for(gateway, crossed["key"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as err:
            await answered(client)
    error = err.value.response.json()["error"]
    assert error["code"] == "region_not_allowed"
    assert "none in common" in error["message"]
    assert served_by(upstreams, "chat-us")[US] == us_before


async def test_a_users_access_token_carries_the_teams_restriction(gateway, upstreams):
    eu_team = await team(gateway, regions=[EU])
    user = await admin(
        gateway,
        "POST",
        "/v1/users",
        {"email": f"u-{uuid.uuid4().hex[:10]}@example.test", "team_id": eu_team["id"], "password": PASSWORD},
    )
    login = await admin(gateway, "POST", "/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    eu_before, us_before = served_by(upstreams, "chat-eu")[EU], served_by(upstreams, "chat-us")[US]
    async with client_for(gateway, login["access_token"]) as client:
        assert await answered(client)
    assert served_by(upstreams, "chat-eu")[EU] == eu_before + 1
    assert served_by(upstreams, "chat-us")[US] == us_before


async def until(check, what: str) -> None:
    """Poll `check` (an invalidation travels through Redis pub/sub) for a generous while."""
    deadline = time.monotonic() + 30
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"the router never saw {what}")
        await asyncio.sleep(0.02)


async def test_changing_a_keys_or_teams_regions_reaches_the_router(gateway, upstreams):
    own_team = await team(gateway)
    key = await admin(gateway, "POST", "/v1/keys", {"team_id": own_team["id"]})
    async with client_for(gateway, key["key"]) as client:
        before = served_by(upstreams, "chat-us")[US]
        assert await answered(client)  # now cached by the router (memory and Redis)
        assert served_by(upstreams, "chat-us")[US] == before + 1
        await admin(gateway, "PATCH", f"/v1/keys/{key['id']}", {"regions": [EU]})

        async def served_in_eu() -> bool:
            eu_before, us_before = served_by(upstreams, "chat-eu")[EU], served_by(upstreams, "chat-us")[US]
            await answered(client)
            if served_by(upstreams, "chat-eu")[EU] == eu_before + 1:
                return True
            assert served_by(upstreams, "chat-us")[US] == us_before + 1
            return False

        await until(served_in_eu, "the key's new regions")
        eu_now = served_by(upstreams, "chat-eu")[EU]
        us_now = served_by(upstreams, "chat-us")[US]
        await admin(gateway, "PATCH", f"/v1/teams/{own_team['id']}", {"regions": [US]})

        async def refused() -> bool:
            try:
                await answered(client)
            except openai.PermissionDeniedError as exc:
                return bool(exc.response.json()["error"]["code"] == "region_not_allowed")
            return False

        await until(refused, "the team's new regions")
        # Before the refusal the key was still eu-west's; us-east never served it.
        assert served_by(upstreams, "chat-us")[US] == us_now
        assert served_by(upstreams, "chat-eu")[EU] >= eu_now
