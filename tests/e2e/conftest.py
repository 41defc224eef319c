"""The real embedded gateway as a subprocess, with a local OpenAI-format upstream.

Both start once for the whole folder. The configuration gives each upstream
behaviour its own public model (see tests/upstream.py for the behaviours).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from tests.conftest import free_port
from tests.upstream import MockUpstream, run_upstream

MASTER_KEY = "sk-e2e-master-" + secrets.token_hex(8)
UPSTREAM_KEY = "sk-upstream-e2e-" + secrets.token_hex(8)
UPSTREAM_KEY_ENV = "E2E_UPSTREAM_KEY"
UNSET_KEY_ENV = "E2E_UNSET_UPSTREAM_KEY"
MAX_BODY_BYTES = 2048
SLOW_TIMEOUT_S = 0.5
READY_DEADLINE_S = 30.0

# public model → upstream model; every one served by the mock upstream with the key.
UPSTREAM_MODELS = {
    "up-chat": "upstream-chat-v1",
    "up-embed": "upstream-embed-v1",
    "up-gated": "gated",
    "up-usage-inline": "usage-inline",
    "up-break": "break-stream",
    "up-non-json": "non-json",
    "up-error-400": "error-400",
    "up-error-401": "error-401",
    "up-error-429": "error-429",
    "up-error-500": "error-500",
    "up-error-503": "error-503",
    "up-no-usage": "no-usage",
    "up-echo-400": "echo-key-400",
    "up-echo-429": "echo-key-429",
    "up-echo-500": "echo-key-500",
    "up-redirect": "redirect",
    "up-error-event": "error-event",
    "up-error-event-gated": "error-event-gated",
}


@dataclasses.dataclass(frozen=True)
class Gateway:
    """A running gateway: where it listens and what it was started with."""

    url: str
    upstream: MockUpstream
    log_path: Path
    config_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def config_text(upstream_url: str, closed_url: str) -> str:
    """The gateway.yaml for the whole folder."""
    up = [
        f"""
  - name: {public}
    deployments:
      - provider: openai
        model: {model}
        base_url: {upstream_url}
        api_key_env: {UPSTREAM_KEY_ENV}"""
        for public, model in UPSTREAM_MODELS.items()
    ]
    return f"""
server:
  max_body_bytes: {MAX_BODY_BYTES}
usage:
  flush_interval_ms: 10
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
  - name: mock-usage               # only the analytics test calls it, so its counts are exact
    deployments:
      - provider: mock
        model: mock-usage
{"".join(up)}
  - name: up-keyless               # a local host that needs no key
    deployments:
      - provider: openai
        model: keyless-v1
        base_url: {upstream_url}
  - name: up-slow
    deployments:
      - provider: openai
        model: slow
        base_url: {upstream_url}
        api_key_env: {UPSTREAM_KEY_ENV}
        timeout_s: {SLOW_TIMEOUT_S}
  - name: up-closed
    deployments:
      - provider: openai
        model: closed-v1
        base_url: {closed_url}
        api_key_env: {UPSTREAM_KEY_ENV}
  - name: up-fallback              # the dead deployment is (almost surely) tried first
    deployments:
      - provider: openai
        model: closed-v1
        base_url: {closed_url}
        api_key_env: {UPSTREAM_KEY_ENV}
        weight: 1000000
      - provider: openai
        model: fallback-v1
        base_url: {upstream_url}
        api_key_env: {UPSTREAM_KEY_ENV}
        weight: 0.000001
  - name: up-no-key                # its key variable is unset: the model must not exist
    deployments:
      - provider: openai
        model: no-key-v1
        base_url: {upstream_url}
        api_key_env: {UNSET_KEY_ENV}
"""


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    with run_upstream() as server:
        yield server


@pytest.fixture(scope="session")
def closed_url() -> Iterator[str]:
    """A port that is bound but never listens: connecting is refused, and nobody else takes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream, closed_url) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("e2e-gateway")
    config = tmp / "gateway.yaml"
    config.write_text(config_text(upstream.base_url, closed_url))
    drop = {"REDIS_URL", "DATABASE_URL", UNSET_KEY_ENV}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    log_path = tmp / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "gateway", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(f"http://127.0.0.1:{port}", upstream, log_path, config)
    try:
        _wait_ready(gw, proc)
        yield gw
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(gw: Gateway, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(base_url=gw.url, timeout=5) as http:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the gateway exited with {proc.returncode}:\n{gw.log_text()}")
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway was not ready within {READY_DEADLINE_S:g} s:\n{gw.log_text()}")
            time.sleep(0.05)


@pytest.fixture
async def http(gateway) -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP to the gateway with the master key."""
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def client(gateway) -> AsyncIterator[AsyncOpenAI]:
    """The official client, pointed at the gateway; no retries so every call is one request."""
    openai = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)
    try:
        yield openai
    finally:
        await openai.close()


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def assert_openai_error(
    response: httpx.Response,
    status: int,
    *,
    code: str | None = None,
    type_: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """Check the status and OpenAI's error shape; return the inner `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if code is not None:
        assert error["code"] == code, error
    if type_ is not None:
        assert error["type"] == type_, error
    if param is not None:
        assert error["param"] == param, error
    return error


def sse_data(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final `[DONE]`."""
    out: list[Any] = []
    for event in re.split(r"\r?\n\r?\n", text):
        lines = [line[5:].removeprefix(" ") for line in event.splitlines() if line.startswith("data:")]
        if not lines:
            continue
        data = "\n".join(lines)
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def usage_events(
    http: httpx.AsyncClient, request_id: str, count: int = 1, deadline_s: float = 20.0
) -> list[dict[str, Any]]:
    """The stored usage events of one request, once `count` of them have arrived."""
    deadline = time.monotonic() + deadline_s
    while True:
        response = await http.get("/analytics/v1/usage/events", params={"request_id": request_id})
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.02)
