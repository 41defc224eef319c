"""The cache service over real Redis and the real embedding model: exact and semantic
hits, tenant isolation, replicas sharing entries and rebuilding, admin API, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from services.cache import app as cache_app
from services.cache.client import CacheClient, CacheUnavailable
from services.kernel.encoder import Encoder
from tests.conftest import MASTER_KEY, REDIS_URL, delete_prefix, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = """
cache:
  enabled: true
  redis_prefix: "{prefix}"
  max_entries_per_namespace: {cap}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
"""


def chat(prompt: str, **params) -> dict:
    return {"model": "mock-small", "messages": [{"role": "user", "content": prompt}], **params}


def answer(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "mock-small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


@contextlib.asynccontextmanager
async def replica(
    tmp_path, prefix: str, encoder, *, cap: int = 100, redis: bool = True
) -> AsyncIterator[CacheClient]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = make_settings(tmp_path, CONFIG.format(prefix=prefix, cap=cap))
    if redis:
        settings = settings.replace(redis_url=REDIS_URL)
    app = cache_app.create_app(settings, encoder=encoder, process_metrics=False)
    async with app.router.lifespan_context(app):
        client = CacheClient.in_process(app)
        assert isinstance(client, CacheClient)
        client.authorize(MASTER_KEY)
        try:
            yield client
        finally:
            await client.aclose()


async def until(predicate, deadline_s: float = 15.0, every: float = 0.02):
    """Await `predicate()` until it is truthy or the deadline passes; returns its last value."""
    end = time.monotonic() + deadline_s
    while True:
        value = await predicate()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(every)


@pytest.fixture
async def cleanup(redis, prefix):
    yield prefix
    await delete_prefix(redis, prefix)


async def test_exact_semantic_and_miss(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        kind = await cache.store(
            "team:a", "mock-small", chat("How do I reset my password?"), answer("Click reset."), wait_s=10
        )
        assert kind == "semantic"
        exact = await cache.lookup("team:a", "mock-small", chat("How do I reset my password?"), wait_s=10)
        assert (exact.hit, exact.kind, exact.similarity) == (True, "exact", 1.0)
        assert exact.completion["choices"][0]["message"]["content"] == "Click reset."
        close = await cache.lookup("team:a", "mock-small", chat("How can I reset my password?"), wait_s=10)
        assert (close.hit, close.kind) == (True, "semantic")
        assert 0.8 < close.similarity < 1.0
        other = await cache.lookup("team:a", "mock-small", chat("How do I delete my account?"), wait_s=10)
        assert not other.hit
        off = await cache.lookup(
            "team:a", "mock-small", chat("How can I reset my password?"), wait_s=10, semantic=False
        )
        assert not off.hit


async def test_tenants_models_and_parameters_never_share_an_entry(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        await cache.store(
            "team:a", "mock-small", chat("What is the capital of Peru?"), answer("Lima"), wait_s=10
        )
        for tenant, model, request in (
            ("team:b", "mock-small", chat("What is the capital of Peru?")),
            ("key:a", "mock-small", chat("What is the capital of Peru?")),
            ("team:a", "other-model", chat("What is the capital of Peru?")),
            ("team:a", "mock-small", chat("What is the capital of Peru?", temperature=0.2)),
            ("team:b", "mock-small", chat("Which city is the capital of Peru?")),
        ):
            found = await cache.lookup(tenant, model, request, wait_s=10)
            assert not found.hit, (tenant, model, request)
        assert (
            await cache.lookup("team:a", "mock-small", chat("What is the capital of Peru?"), wait_s=10)
        ).hit


async def test_a_region_is_part_of_the_namespace_exact_and_semantic(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        question, paraphrase = (
            chat("How do I change my email address?"),
            chat("How can I change my email address?"),
        )
        kind = await cache.store(
            "team:a", "mock-small", question, answer("Open the settings."), wait_s=10, region="eu-west"
        )
        assert kind == "semantic"
        for region in ("us-east", None):  # another region, and a router with none
            for request in (question, paraphrase):
                found = await cache.lookup("team:a", "mock-small", request, wait_s=10, region=region)
                assert not found.hit, (region, request)
        exact = await cache.lookup("team:a", "mock-small", question, wait_s=10, region="eu-west")
        assert (exact.hit, exact.kind) == (True, "exact")
        close = await cache.lookup("team:a", "mock-small", paraphrase, wait_s=10, region="eu-west")
        assert (close.hit, close.kind) == (True, "semantic")

        await cache.store(
            "team:a", "mock-small", question, answer("Open the settings (us)."), wait_s=10, region="us-east"
        )
        spaces = (await cache.http.get("/v1/cache/namespaces", params={"tenant": "team:a"})).json()["data"]
        assert sorted((s["region"], s["entries"]) for s in spaces) == [("eu-west", 1), ("us-east", 1)]
        only = (await cache.http.get("/v1/cache/namespaces", params={"region": "us-east"})).json()["data"]
        assert [s["region"] for s in only] == ["us-east"]
        bad = await cache.http.get("/v1/cache/namespaces", params={"region": "EU West"})
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "region")

        flushed = await cache.http.post("/v1/cache/flush", json={"tenant": "team:a", "region": "us-east"})
        assert flushed.json() == {"flushed": 1, "namespaces": 1}
        assert not (await cache.lookup("team:a", "mock-small", question, wait_s=10, region="us-east")).hit
        kept = await cache.lookup("team:a", "mock-small", question, wait_s=10, region="eu-west")
        assert kept.completion is not None
        assert kept.completion["choices"][0]["message"]["content"] == "Open the settings."


async def test_a_cache_that_ignores_the_region_is_never_trusted_with_one():
    """A cache service that predates regions answers without repeating the region: the
    client takes that as a failure (a miss), never as a hit from a shared namespace."""

    def old_service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/cache/lookup":
            return httpx.Response(200, json={"hit": True, "kind": "exact", "response": answer("x")})
        return httpx.Response(200, json={"stored": True, "kind": "semantic"})

    client = CacheClient(
        httpx.AsyncClient(transport=httpx.MockTransport(old_service), base_url="http://cache")
    )
    async with client.http:
        assert (await client.lookup("team:a", "m", chat("hi"), wait_s=1)).hit  # no region: as before
        with pytest.raises(CacheUnavailable):
            await client.lookup("team:a", "m", chat("hi"), wait_s=1, region="eu-west")
        with pytest.raises(CacheUnavailable):
            await client.store("team:a", "m", chat("hi"), answer("x"), wait_s=1, region="eu-west")


async def test_the_verifier_turns_down_close_questions_that_ask_something_else(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        await cache.store(
            "team:a", "mock-small", chat("How do I delete a git branch?"), answer("git branch -d"), wait_s=10
        )
        await cache.store(
            "team:a", "mock-small", chat("Convert 5 miles to kilometers."), answer("8.05 km"), wait_s=10
        )
        for prompt in ("How do I create a git branch?", "Convert 7 miles to kilometers."):
            assert not (await cache.lookup("team:a", "mock-small", chat(prompt), wait_s=10)).hit, prompt


async def test_two_replicas_share_entries_and_a_new_one_rebuilds(tmp_path, encoder, cleanup):
    async with (
        replica(tmp_path / "a", cleanup, encoder) as one,
        replica(tmp_path / "b", cleanup, encoder) as two,
    ):
        await one.store(
            "team:a", "mock-small", chat("What is the boiling point of water?"), answer("100 C"), wait_s=10
        )
        assert (
            await two.lookup("team:a", "mock-small", chat("What is the boiling point of water?"), wait_s=10)
        ).hit

        async def indexed_on_two():
            return (await two.http.get("/v1/cache/stats")).json()["index"]["entries"] == 1

        assert await until(indexed_on_two), (
            "the entry stored through one replica never reached the other's index"
        )
        found = await two.lookup(
            "team:a", "mock-small", chat("What's the boiling point of water?"), wait_s=10
        )
        assert (found.hit, found.kind) == (True, "semantic")
        async with replica(tmp_path / "c", cleanup, encoder) as three:

            async def semantic_on_three():
                found = await three.lookup(
                    "team:a", "mock-small", chat("What's the boiling point of water?"), wait_s=10
                )
                return found.hit

            assert await until(semantic_on_three), "a new replica did not rebuild its index from Redis"
            flushed = await one.http.post("/v1/cache/flush", json={"tenant": "team:a"})
            assert flushed.json()["flushed"] == 1

            async def gone_from_three():
                stats = (await three.http.get("/v1/cache/stats")).json()
                return stats["index"]["entries"] == 0

            assert await until(gone_from_three)


async def test_cap_evicts_least_recently_used_and_the_index_follows(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder, cap=2) as cache:
        for prompt in ("What is Redis?", "What is PostgreSQL?"):
            await cache.store("team:a", "mock-small", chat(prompt), answer(prompt), wait_s=10)
        assert (await cache.lookup("team:a", "mock-small", chat("What is Redis?"), wait_s=10)).hit
        await cache.store("team:a", "mock-small", chat("What is SQLite?"), answer("db"), wait_s=10)
        assert not (await cache.lookup("team:a", "mock-small", chat("What is PostgreSQL?"), wait_s=10)).hit
        assert (await cache.lookup("team:a", "mock-small", chat("What is Redis?"), wait_s=10)).hit
        stats = (await cache.http.get("/v1/cache/stats")).json()
        assert stats["index"]["entries"] == 2


async def test_per_entry_ttl(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        await cache.store("team:a", "mock-small", chat("Short lived?"), answer("yes"), wait_s=10, ttl_s=0.3)
        assert (await cache.lookup("team:a", "mock-small", chat("Short lived?"), wait_s=10)).hit

        async def expired():
            return not (await cache.lookup("team:a", "mock-small", chat("Short lived?"), wait_s=10)).hit

        assert await until(expired)


async def test_while_the_model_loads_lookups_are_exact_only(tmp_path, cleanup):
    loading = Encoder()  # never started: not ready
    async with replica(tmp_path, cleanup, loading, redis=False) as cache:
        assert (
            await cache.store("team:a", "mock-small", chat("Hello there"), answer("Hi"), wait_s=10)
            == "exact_only"
        )
        assert (await cache.lookup("team:a", "mock-small", chat("Hello there"), wait_s=10)).hit
        missed = await cache.lookup("team:a", "mock-small", chat("Hello there!"), wait_s=10)
        assert (missed.hit, missed.reason) == (False, "model_loading")
        stats = (await cache.http.get("/v1/cache/stats")).json()
        assert stats["replica"]["semantic_skipped_model_loading"] == 1
        assert stats["model_ready"] is False
        metrics = (await cache.http.get("/metrics")).text
        assert 'gateway_cache_semantic_skipped_total{reason="model_loading"} 1.0' in metrics


async def test_admin_api(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        await cache.store("team:a", "mock-small", chat("Name a prime number."), answer("7"), wait_s=10)
        await cache.lookup("team:a", "mock-small", chat("Name a prime number."), wait_s=10)
        await cache.lookup("team:a", "mock-small", chat("Name a composite number."), wait_s=10)
        spaces = (await cache.http.get("/v1/cache/namespaces", params={"tenant": "team:a"})).json()["data"]
        assert [(s["tenant"], s["model"], s["entries"], s["hits"]) for s in spaces] == [
            ("team:a", "mock-small", 1, 1)
        ]
        ns = spaces[0]["namespace"]
        entries = (await cache.http.get(f"/v1/cache/namespaces/{ns}")).json()["data"]
        assert [(e["prompt"], e["hits"], e["semantic"]) for e in entries] == [
            ("Name a prime number.", 1, True)
        ]

        async def published():
            stats = (await cache.http.get("/v1/cache/stats")).json()
            return stats if stats["all_replicas"].get("lookups_miss") else None

        stats = await until(published, deadline_s=10)
        assert stats["all_replicas"]["lookups_exact"] == 1
        assert stats["hit_rate"] == 0.5
        assert (await cache.http.delete(f"/v1/cache/namespaces/{ns}")).json() == {"flushed": 1}
        assert (await cache.http.get(f"/v1/cache/namespaces/{ns}")).status_code == 404
        assert (await cache.http.get("/v1/cache/namespaces/not-a-namespace")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/cache/lookup", b"not json", 400, None),
        ("/v1/cache/lookup", b"[]", 400, None),
        (
            "/v1/cache/lookup",
            b'{"model": "m", "request": {"messages": [{"role": "user", "content": "x"}]}}',
            400,
            "tenant",
        ),
        ("/v1/cache/lookup", b'{"tenant": "t", "model": "m", "request": {"messages": []}}', 400, "request"),
        (
            "/v1/cache/lookup",
            b'{"tenant": "t", "model": "m", "request": {"messages": [{"role": "user"}]}, "max_age_s": -1}',
            400,
            "max_age_s",
        ),
        (
            "/v1/cache/store",
            b'{"tenant": "t", "model": "m", "request": {"messages": [{"role": "user"}]}, "response": 1}',
            400,
            "response",
        ),
        (
            "/v1/cache/store",
            b'{"tenant": "t", "model": "m", "request": {"messages": [{"role": "user"}]}, '
            b'"response": {"choices": []}, "ttl_s": "x"}',
            400,
            "ttl_s",
        ),
        ("/v1/cache/flush", b"{}", 400, "tenant"),
        ("/v1/cache/flush", b'{"region": "Not A Region"}', 400, "region"),
        (
            "/v1/cache/lookup",
            b'{"tenant": "t", "model": "m", "request": {"messages": [{"role": "user"}]}, "region": 7}',
            400,
            "region",
        ),
    ],
)
async def test_bad_input_gets_a_clear_error(tmp_path, cleanup, path, body, status, param):
    async with replica(tmp_path, cleanup, None, redis=False) as cache:
        response = await cache.http.post(path, content=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"]
        assert error["param"] == param


async def test_every_endpoint_needs_the_master_key(tmp_path, cleanup):
    async with replica(tmp_path, cleanup, None, redis=False) as cache:
        anonymous = httpx.AsyncClient(transport=cache.http._transport, base_url="http://cache")
        async with anonymous:
            for method, path in (
                ("POST", "/v1/cache/lookup"),
                ("POST", "/v1/cache/store"),
                ("GET", "/v1/cache/stats"),
                ("GET", "/v1/cache/namespaces"),
                ("POST", "/v1/cache/flush"),
            ):
                response = await anonymous.request(method, path, json={})
                assert response.status_code == 401, path
            wrong = await anonymous.get(
                "/v1/cache/stats", headers={"authorization": "Bearer sk-wrong-key-123"}
            )
            assert wrong.status_code == 401
            assert "sk-wrong" not in wrong.text


async def test_oversized_bodies_are_refused(tmp_path, cleanup):
    async with replica(tmp_path, cleanup, None, redis=False) as cache:
        huge = {"tenant": "t", "model": "m", "request": chat("x" * 4_000_000)}
        response = await cache.http.post("/v1/cache/lookup", json=huge)
        assert response.status_code == 413


async def test_one_embedding_per_miss_and_none_for_an_empty_namespace(tmp_path, encoder, cleanup):
    async with replica(tmp_path, cleanup, encoder) as cache:
        before = encoder.encoded
        missed = await cache.lookup("team:cold", "mock-small", chat("What is a monad?"), wait_s=10)
        assert (missed.hit, encoder.encoded) == (False, before)  # nothing stored there: no embedding
        await cache.store("team:cold", "mock-small", chat("What is a monad?"), answer("..."), wait_s=10)
        assert encoder.encoded == before + 1
        missed = await cache.lookup("team:cold", "mock-small", chat("What is a functor?"), wait_s=10)
        assert not missed.hit
        await cache.store("team:cold", "mock-small", chat("What is a functor?"), answer("..."), wait_s=10)
        assert encoder.encoded == before + 2  # the lookup's embedding served the store
