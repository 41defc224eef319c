"""The cache across regions, through the whole gateway over real HTTP and the official
openai client: two routers, one in eu-west and one in us-east, share one cache service
and one Redis (as a test can; in production each region has its own). An answer stored
through one region is never found through the other, exactly or by meaning; a caller
kept in regions that do not include the router's skips the cache; a router with no
region keeps the namespace of before regions existed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from services.cache import app as cache_app
from services.cache.client import CacheClient
from services.cache.keys import request_key
from services.kernel.principal import Principal
from services.kernel.stream import MemoryUsageStream
from services.router import app as router_app
from tests.cache.conftest import FixedKeys, ask, serving, until_hit
from tests.conftest import MASTER_KEY, REDIS_URL, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

EU, US = "eu-west", "us-east"
KEYS = {
    "sk-anywhere-000000": Principal("key-any", "member", team_id="a"),
    "sk-eu-only-0000000": Principal("key-eu", "member", team_id="a", regions=frozenset({EU})),
}
CONFIG = """
region:
  names: [eu-west, us-east]
cache:
  enabled: true
  redis_prefix: "{prefix}"
  lookup_timeout_ms: 10000
  store_timeout_ms: 10000
models:
  - name: mock-small
    deployments:
      - {{provider: mock, model: mock-small, region: eu-west}}
      - {{provider: mock, model: mock-small, region: us-east}}
"""


@contextlib.asynccontextmanager
async def topology(tmp_path, prefix: str, encoder, regions: tuple[str | None, ...]) -> AsyncIterator[dict]:
    """One cache service on the shared Redis, and a router per region given, each over HTTP."""
    settings = make_settings(tmp_path, CONFIG.format(prefix=prefix))
    cache = cache_app.create_app(
        settings.replace(redis_url=REDIS_URL), encoder=encoder, process_metrics=False
    )
    async with contextlib.AsyncExitStack() as stack:
        cache_url = await stack.enter_async_context(serving(cache))
        urls: dict[str | None, str] = {}
        for region in regions:
            router = router_app.create_app(
                settings.replace(region=region, data_dir=tmp_path / f"router-{region or 'none'}"),
                stream=MemoryUsageStream(),
                helpers=router_app.Helpers(cache=CacheClient.over_http(cache_url, timeout=10.0)),
                stages=router_app.Stages(authenticator=FixedKeys(KEYS)),
            )
            urls[region] = await stack.enter_async_context(serving(router))
        admin = await stack.enter_async_context(
            httpx.AsyncClient(base_url=cache_url, headers={"authorization": f"Bearer {MASTER_KEY}"})
        )
        yield {"routers": urls, "admin": admin}


async def until(predicate, deadline_s: float = 15.0):
    end = time.monotonic() + deadline_s
    while True:
        value = await predicate()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(0.05)


NO_STORE = {"extra_headers": {"cache-control": "no-store"}}


async def test_an_answer_stored_in_one_region_is_a_miss_in_the_other(tmp_path, encoder, cleanup, openai):
    async with topology(tmp_path, cleanup, encoder, (EU, US)) as net:
        eu, us = openai(net["routers"][EU]), openai(net["routers"][US])
        question, paraphrase = "How do I change my email address?", "How can I change my email address?"
        headers, first = await ask(eu, question)
        assert headers["x-gateway-cache"] == "miss"
        headers, again = await until_hit(eu, question)
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "exact")
        assert again.choices[0].message.content == first.choices[0].message.content
        headers, close = await ask(eu, paraphrase, **NO_STORE)
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "semantic")
        assert close.choices[0].message.content == first.choices[0].message.content

        # The same team, the same prompts, the same Redis: but us-east's namespace.
        for prompt in (question, paraphrase, question):
            headers, answer = await ask(us, prompt, **NO_STORE)
            assert headers["x-gateway-cache"] == "miss", prompt
            assert answer.choices[0].message.content

        # us-east keeps its own answer, found there and only there.
        await ask(us, question)
        headers, _ = await until_hit(us, question)
        assert headers["x-gateway-cache"] == "hit"
        spaces = (await net["admin"].get("/v1/cache/namespaces", params={"tenant": "team:a"})).json()["data"]
        assert sorted(s["region"] for s in spaces) == [EU, US]
        eu_only = (await net["admin"].get("/v1/cache/namespaces", params={"region": EU})).json()["data"]
        assert [s["region"] for s in eu_only] == [EU]


async def test_a_caller_kept_out_of_the_routers_region_skips_the_cache(tmp_path, encoder, cleanup, openai):
    async with topology(tmp_path, cleanup, encoder, (EU, US)) as net:
        us_url = net["routers"][US]
        eu, anywhere_us = openai(net["routers"][EU]), openai(us_url)
        restricted_us = openai(us_url, "sk-eu-only-0000000")
        question = "Name the longest river in Europe."
        # An entry for this team and prompt in each region: neither may answer the
        # restricted caller at the us-east router.
        for client in (eu, anywhere_us):
            await ask(client, question)
            headers, _ = await until_hit(client, question)
            assert headers["x-gateway-cache"] == "hit"
        for _ in range(2):
            headers, answer = await ask(restricted_us, question)
            assert (headers["x-gateway-cache"], headers["x-gateway-cache-bypass"]) == ("bypass", "region")
            assert answer.choices[0].message.content
        headers, _ = await ask(restricted_us, "A question only a restricted caller asked.")
        assert headers["x-gateway-cache-bypass"] == "region"

        async def counted():
            async with httpx.AsyncClient(base_url=us_url) as http:
                text = (await http.get("/metrics")).text
            lookups = 'gateway_stage_outcomes_total{outcome="outside_region",stage="cache_lookup"} 3.0'
            stores = 'gateway_stage_outcomes_total{outcome="outside_region",stage="cache_store"} 3.0'
            return text if lookups in text and stores in text else None

        assert await until(counted), "lookups and stores left out for residency are counted"
        spaces = (await net["admin"].get("/v1/cache/namespaces")).json()["data"]
        assert sorted((s["region"], s["entries"]) for s in spaces) == [(EU, 1), (US, 1)]  # nothing stored

        # In its own region the restricted caller uses the cache as any other (the team's entry).
        headers, _ = await ask(openai(net["routers"][EU], "sk-eu-only-0000000"), question)
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "exact")


async def test_a_router_with_no_region_keeps_todays_namespace(tmp_path, encoder, cleanup, openai):
    async with topology(tmp_path, cleanup, encoder, (None, EU)) as net:
        plain, eu = openai(net["routers"][None]), openai(net["routers"][EU])
        question = "What is the boiling point of water at sea level?"
        await ask(plain, question)
        headers, _ = await until_hit(plain, question)
        assert headers["x-gateway-cache"] == "hit"
        body = {"model": "mock-small", "messages": [{"role": "user", "content": question}]}
        key = request_key("team:a", "mock-small", body, semantic_max_chars=10_000)
        spaces = (await net["admin"].get("/v1/cache/namespaces")).json()["data"]
        assert [(s["namespace"], s["region"]) for s in spaces] == [(key.namespace, None)]
        redis = aioredis.from_url(REDIS_URL)
        try:  # the entry's own key, as the store has always named it
            assert await redis.exists(f"{cleanup}:{{{key.namespace}}}:e:{key.exact}")
        finally:
            await redis.aclose()
        # A router with a region does not read the entries of one without.
        headers, _ = await ask(eu, question, **NO_STORE)
        assert headers["x-gateway-cache"] == "miss"
        # An unrestricted caller at a region-less router: nothing bypassed for residency.
        headers, _ = await ask(plain, question)
        assert headers["x-gateway-cache"] == "hit"
        # A restricted caller at a router that cannot name its region: no cache.
        headers, _ = await ask(openai(net["routers"][None], "sk-eu-only-0000000"), question)
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-bypass"]) == ("bypass", "region")
