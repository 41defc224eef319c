"""`python -m services gateway` with the cache on: one process, the in-process stand-in for
Redis, the shared embedding model; the official client, the usage record and the admin
API mounted under /cache."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import free_port

KEY = "sk-embedded-cache-" + secrets.token_hex(6)
CONFIG = """
usage: {flush_interval_ms: 10}
cache:
  enabled: true
  lookup_timeout_ms: 30000     # a busy test machine must not turn hits into misses
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
        price: {input: 1000, output: 2000}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("embedded-cache")
    (tmp / "gateway.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "GATEWAY_CONFIG": str(tmp / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": KEY,
        "GATEWAY_DATA_DIR": str(tmp),
    }
    port = free_port()
    log = tmp / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "gateway", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}) as http:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    stats = http.get("/cache/v1/cache/stats")
                    if stats.status_code == 200 and stats.json()["model_ready"]:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (
                    "the gateway's embedding model did not load:\n" + log.read_text()
                )
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(client: OpenAI, prompt: str, **kwargs):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-small", messages=[{"role": "user", "content": prompt}], **kwargs
    )
    return raw.headers, raw.parse()


def until_hit(client: OpenAI, prompt: str, deadline_s: float = 20.0):
    end = time.monotonic() + deadline_s
    while True:
        headers, answer = ask(client, prompt)
        if headers["x-gateway-cache"] == "hit" or time.monotonic() > end:
            return headers, answer
        time.sleep(0.05)


def test_exact_semantic_and_streamed_hits_with_the_usage_record(gateway):
    with (
        OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0) as client,
        httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {KEY}"}) as http,
    ):
        headers, first = ask(client, "How do I reset my router?")
        assert headers["x-gateway-cache"] == "miss"
        headers, again = until_hit(client, "How do I reset my router?")
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "exact")
        assert again.choices[0].message.content == first.choices[0].message.content
        headers, _ = ask(client, "How can I reset my router?")
        assert (headers["x-gateway-cache"], headers["x-gateway-cache-kind"]) == ("hit", "semantic")
        stream = client.chat.completions.create(
            model="mock-small",
            messages=[{"role": "user", "content": "How do I reset my router?"}],
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == first.choices[0].message.content

        request_id = headers["x-request-id"]
        end = time.monotonic() + 20
        while True:
            rows = http.get("/analytics/v1/usage/events", params={"request_id": request_id}).json()["data"]
            if rows or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert rows, "the usage event of a cache hit never arrived"
        assert rows[0]["cached"] is True  # cost and saved cost: tests/cache/test_gateway.py reads the event

        stats = http.get("/cache/v1/cache/stats").json()
        assert stats["replica"]["lookups_exact"] >= 2
        assert stats["replica"]["lookups_semantic"] >= 1
        spaces = http.get("/cache/v1/cache/namespaces").json()["data"]
        assert [(s["tenant"], s["model"]) for s in spaces] == [("key:master", "mock-small")]
        assert httpx.get(f"{gateway}/cache/v1/cache/stats").status_code == 401
