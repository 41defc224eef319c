"""Fixtures of the cache tests: storage on the real Redis under a unique prefix, cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import uvicorn
from openai import AsyncOpenAI

from services.cache.memory import MemoryEntries
from services.cache.store import RedisEntries
from services.kernel.bearer import bearer_token
from services.kernel.encoder import Encoder
from services.kernel.errors import Unauthorized
from services.kernel.principal import Principal
from tests.conftest import REDIS_URL, delete_prefix


@pytest.fixture
def prefix() -> str:
    return f"test-cache-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_entries(redis, prefix) -> AsyncIterator[RedisEntries]:
    store = RedisEntries(aioredis.from_url(REDIS_URL), prefix, sync_maxlen=1000)
    yield store
    await delete_prefix(redis, prefix)
    await store.aclose()


@pytest.fixture(params=["redis", "memory"])
async def entries(request, prefix):
    """Both implementations of the storage contract, to run the same test on each."""
    if request.param == "memory":
        yield MemoryEntries()
        return
    store = RedisEntries(aioredis.from_url(REDIS_URL), prefix, sync_maxlen=1000)
    try:
        await store.redis.ping()
    except (OSError, aioredis.RedisError) as exc:
        await store.aclose()
        pytest.fail(f"Redis is not answering at {REDIS_URL} ({exc})")
    yield store
    await delete_prefix(store.redis, prefix)
    await store.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def encoder() -> AsyncIterator[Encoder]:
    """The real embedding model, loaded once for the whole run (tests that use it run on the
    session's event loop: `pytestmark = pytest.mark.asyncio(loop_scope="session")`)."""
    model = Encoder()
    await model.start()
    await model.wait_ready()
    yield model
    await model.aclose()


@pytest.fixture
async def cleanup(redis, prefix):
    yield prefix
    await delete_prefix(redis, prefix)


@pytest.fixture
async def openai():
    """Makes official clients for a gateway URL and key; closes them after the test."""
    made: list[AsyncOpenAI] = []

    def make(url: str, key: str = "sk-anywhere-000000") -> AsyncOpenAI:
        made.append(AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30))
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def ask(client: AsyncOpenAI, prompt: str, **kwargs: Any):
    raw = await client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "mock-small"), messages=[{"role": "user", "content": prompt}], **kwargs
    )
    return raw.headers, raw.parse()


async def until_hit(client: AsyncOpenAI, prompt: str, deadline_s: float = 15.0, **kwargs: Any):
    """Ask until the answer comes from the cache (the store after a miss runs in the background)."""
    end = time.monotonic() + deadline_s
    while True:
        headers, answer = await ask(client, prompt, **kwargs)
        if headers.get("x-gateway-cache") == "hit" or time.monotonic() > end:
            return headers, answer
        await asyncio.sleep(0.05)


class FixedKeys:
    """An authenticator of a fixed set of test keys (the auth service is not under test)."""

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        self.keys = keys

    async def authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        principal = self.keys.get(bearer_token(headers))
        if principal is None:
            raise Unauthorized("Invalid API key.")
        return principal


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` served over HTTP on a free port, in this event loop; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
