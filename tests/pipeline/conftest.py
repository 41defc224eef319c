"""The router in-process (same event loop as the test), served by uvicorn on a free port,
with stages passed in through `Stages`, in front of the local OpenAI-format upstream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from services.kernel.lifecycle import Lifecycle
from services.kernel.stream import MemoryUsageStream, events_of
from services.router import app as router_app
from tests.conftest import MASTER_KEY, make_settings
from tests.upstream import MockUpstream, run_upstream

UPSTREAM_KEY = "sk-pipeline-upstream-0123456789"


def config_text(upstream_url: str) -> str:
    models = {
        "up-chat": "upstream-chat-v1",
        "up-gated": "gated",
        "up-gated-start": "gated-start",
        "up-slow": "slow",
        "up-error-500": "error-500",
    }
    blocks = "".join(
        f"""
  - name: {public}
    deployments:
      - provider: openai
        model: {model}
        base_url: {upstream_url}
        api_key_env: PIPELINE_UPSTREAM_KEY
        price: {{input: 1.0, output: 2.0}}"""
        for public, model in models.items()
    )
    return f"""
usage: {{flush_interval_ms: 5}}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
{blocks}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with run_upstream() as server:
        yield server


class Usage:
    """Reads the usage events the router published to the in-process stream."""

    def __init__(self, stream: MemoryUsageStream) -> None:
        self.stream = stream
        self.events: list[dict[str, Any]] = []

    async def collect(self) -> None:
        for _, data in await self.stream.read("tests", count=1000, block_ms=1):
            self.events += [orjson.loads(e) for e in events_of(data)]

    async def of(self, request_id: str, *, settle_s: float = 10.0) -> list[dict[str, Any]]:
        """The events of one request, once at least one has arrived (then a flush more)."""
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            await self.collect()
            found = [e for e in self.events if e["request_id"] == request_id]
            if found:
                await asyncio.sleep(0.05)  # a duplicate would be in the next flush, 5 ms later
                await self.collect()
                return [e for e in self.events if e["request_id"] == request_id]
            await asyncio.sleep(0.01)
        return []


class Router:
    def __init__(self, url: str, usage: Usage, lifecycle: Lifecycle, server: uvicorn.Server) -> None:
        self.url = url
        self.usage = usage
        self.lifecycle = lifecycle
        self.server = server

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30, **kw
        )


@contextlib.asynccontextmanager
async def serve_router(
    tmp_path: Path,
    upstream: MockUpstream,
    *,
    stages: router_app.Stages | None = None,
    lifecycle: Lifecycle | None = None,
    graceful_s: float = 5.0,
) -> AsyncIterator[Router]:
    config = config_text(upstream.base_url)
    settings = make_settings(tmp_path, config)
    from services.kernel.config import build_catalog

    settings = settings.replace(
        catalog=build_catalog(settings.config, {"PIPELINE_UPSTREAM_KEY": UPSTREAM_KEY})
    )
    stream = MemoryUsageStream()
    lifecycle = lifecycle or Lifecycle(drain_s=5.0)
    app = router_app.create_app(
        settings, stream=stream, helpers=router_app.Helpers(), stages=stages, lifecycle=lifecycle
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="none",
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=graceful_s,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the router did not start")
        await asyncio.sleep(0.01)
    try:
        yield Router(f"http://127.0.0.1:{port}", Usage(stream), lifecycle, server)
    finally:
        upstream.release_all()
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
        upstream.closing.clear()
