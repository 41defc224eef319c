"""The embedded gateway (one process, SQLite, no Redis) as a user runs it: the admin API
under /auth, virtual keys with the official openai client, revocation, limits and a
budget that survives a restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import free_port

MASTER = "sk-embedded-master-key-for-tests"
PASSWORD = "embedded password 123"
CONFIG = """
auth:
  login: {scrypt_n: 16384, scrypt_p: 1}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
        price: {input: 1000, output: 2000}
"""


class Gateway:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env |= {
            "GATEWAY_CONFIG": str(self.tmp / "gateway.yaml"),
            "GATEWAY_MASTER_KEY": MASTER,
            "GATEWAY_DATA_DIR": str(self.tmp / "data"),
            "LOG_LEVEL": "DEBUG",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services", "gateway", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(self.log.read_text())
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(self.log.read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def gateway(tmp_path) -> Iterator[Gateway]:
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    gw = Gateway(tmp_path)
    gw.start()
    try:
        yield gw
    finally:
        if gw.proc is not None:
            gw.proc.kill()
            gw.proc.wait()


def admin(gw: Gateway, method: str, path: str, json: object = None, token: str = MASTER) -> dict:
    response = httpx.request(
        method, f"{gw.url}/auth{path}", json=json, headers={"authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_keys_limits_and_budgets_in_the_embedded_gateway(gateway: Gateway):
    with contextlib.ExitStack() as clients:
        _keys_limits_and_budgets(gateway, clients)


def _keys_limits_and_budgets(gateway: Gateway, clients: contextlib.ExitStack) -> None:
    def openai_client(api_key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0)
        return clients.enter_context(client)

    team = admin(gateway, "POST", "/v1/teams", {"name": "research", "rpm": 100})
    user = admin(
        gateway,
        "POST",
        "/v1/users",
        {"email": "ada@example.test", "team_id": team["id"], "password": PASSWORD},
    )
    login = httpx.post(
        f"{gateway.url}/auth/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
    )
    token = login.json()["access_token"]
    created = admin(gateway, "POST", "/v1/keys", {"name": "laptop"}, token=token)
    secret = created["key"]
    assert secret.startswith("sk-gw-")
    assert "key" not in admin(gateway, "GET", f"/v1/keys/{created['id']}")

    client = openai_client(secret)
    reply = client.chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["mock-small"]
    token_client = openai_client(token)
    assert token_client.chat.completions.create(
        model="mock-small", messages=[{"role": "user", "content": "hi"}]
    ).choices

    limited = admin(gateway, "POST", "/v1/keys", {"user_id": user["id"], "rpm": 2, "budget": {"amount": 1.0}})
    limited_client = openai_client(limited["key"])
    raw = limited_client.chat.completions.with_raw_response.create(
        model="mock-small", messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    limited_client.chat.completions.create(
        model="mock-small", messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    with pytest.raises(openai.RateLimitError) as err:
        limited_client.chat.completions.create(
            model="mock-small", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.response.headers["retry-after"]
    spent = admin(gateway, "GET", f"/v1/keys/{limited['id']}")["spend"]["amount"]
    assert 0 < spent < 1.0

    admin(gateway, "POST", f"/v1/keys/{created['id']}/revoke", token=token)
    with pytest.raises(openai.AuthenticationError) as denied:
        client.chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "hi"}])
    assert "revoked" in str(denied.value)

    # The spend survives a restart of the embedded gateway.
    gateway.stop()
    gateway.start()
    assert admin(gateway, "GET", f"/v1/keys/{limited['id']}")["spend"]["amount"] == pytest.approx(spent)

    gateway.stop()
    logs = gateway.log.read_text()
    database = b"".join(p.read_bytes() for p in (gateway.tmp / "data").glob("auth.db*"))
    for plaintext in (secret, limited["key"], PASSWORD, token):
        assert plaintext not in logs
        assert plaintext.encode() not in database
