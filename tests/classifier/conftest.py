"""Processes for the classifier's tests: the classifier service alone, and the embedded
gateway with a routing table. Each starts once per session, over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY, free_port

READY_DEADLINE_S = 120.0  # a loaded 2-core machine can take a while to load the model

ROUTED_CONFIG = """
server:
  access_log: true                 # the usage event of each request, as a log line
usage:
  flush_interval_ms: 10
routing:
  default: [cheap]
  table:
    code: {easy: cheap, medium: strong, hard: strong}
    math: {easy: cheap, medium: strong, hard: strong}
    reasoning: strong
    general: {easy: cheap, medium: cheap, hard: strong}
    translation: cheap
  aliases:
    auto: {medium: 0.2, hard: 0.3}
    auto-best: {medium: 0.0, hard: 0.0}
  classifier_timeout_ms: 2000
models:
  - name: cheap
    deployments:
      - provider: mock
        model: cheap-v1
        price: {input: 0.15, output: 0.6}
  - name: strong
    deployments:
      - provider: mock
        model: strong-v1
        price: {input: 2.5, output: 10}
"""


@dataclass(frozen=True)
class Process:
    url: str
    log_path: Path
    config_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_service(
    tmp: Path, name: str, config: str, *, env: dict[str, str] | None = None, ready_path: str = "/readyz"
) -> Iterator[Process]:
    """`python -m services NAME` on a free port, until it answers `ready_path` with 200."""
    config_path = tmp / "gateway.yaml"
    config_path.write_text(config)
    drop = {"REDIS_URL", "DATABASE_URL", "CLASSIFIER_URL", "AUTH_URL", "CACHE_URL", "ANALYTICS_URL"}
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env |= {
        "GATEWAY_CONFIG": str(config_path),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    port = free_port()
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", name, "--port", str(port)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    process = Process(f"http://127.0.0.1:{port}", log_path, config_path)
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        with httpx.Client(base_url=process.url, timeout=5) as http:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{process.log_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(ready_path).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} was not ready within {READY_DEADLINE_S:g} s:\n{process.log_text()}")
                time.sleep(0.05)
        yield process
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def classifier_service(tmp_path_factory) -> Iterator[Process]:
    """The classifier service on its own, ready (its model loaded)."""
    with run_service(tmp_path_factory.mktemp("classifier"), "classifier", ROUTED_CONFIG) as process:
        yield process


@pytest.fixture(scope="session")
def routed_gateway(tmp_path_factory) -> Iterator[Process]:
    """The embedded gateway with the routing table above."""
    with run_service(tmp_path_factory.mktemp("routed-gateway"), "gateway", ROUTED_CONFIG) as process:
        yield process
