"""The embedded gateway as a subprocess, in front of the provider mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import Gateway, _wait_ready, free_port
from tests.providers.mocks import AWS_KEY_ID, AWS_SECRET, KEY, ProviderMocks

MASTER_KEY = "sk-providers-master-0123456789"
PROVIDERS = ("anthropic", "gemini", "cohere", "bedrock", "azure")
FAULTS = (
    "error-500",
    "error-429",
    "slow-first-byte",
    "reset-mid-stream",
    "malformed-json",
    "wrong-content-type",
)
FIRST_BYTE_TIMEOUT_S = 0.5


def deployment(provider: str, model: str, base_url: str, **extra: object) -> str:
    lines = [f"      - provider: {provider}", f"        model: {model}"]
    if provider == "bedrock":
        lines += [
            f"        base_url: {base_url}",
            "        aws_region: us-east-1",
            "        access_key_id_env: MOCK_AWS_KEY_ID",
            "        secret_access_key_env: MOCK_AWS_SECRET",
        ]
    else:
        lines += [f"        base_url: {base_url}", "        api_key_env: MOCK_PROVIDER_KEY"]
    lines += [f"        {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def config_text(base: str) -> str:
    models = []
    for provider in PROVIDERS:
        models.append(
            f"  - name: p-{provider}\n    deployments:\n{deployment(provider, f'{provider}-mock', base)}"
        )
        for fault in FAULTS:
            extra = {"retries": 1, "first_byte_timeout_s": FIRST_BYTE_TIMEOUT_S}
            models.append(
                f"  - name: p-{provider}-{fault}\n    deployments:\n"
                + deployment(provider, fault, base, **extra)
            )
    for provider in ("gemini", "cohere", "azure"):
        models.append(
            f"  - name: p-{provider}-embed\n    deployments:\n{deployment(provider, 'embed-mock', base)}"
        )
    models.append(
        "  - name: p-failover\n    deployments:\n"
        + deployment("anthropic", "error-503", base, weight=1000000, retries=1)
        + "\n"
        + deployment("gemini", "gemini-mock", base, weight=0.000001)
    )
    models.append(
        "  - name: p-fallback\n    fallbacks: [p-cohere]\n    deployments:\n"
        + deployment("bedrock", "error-500", base, retries=0)
    )
    models.append(
        "  - name: p-small-context\n    context_fallbacks: [p-gemini]\n    deployments:\n"
        + deployment("anthropic", "error-400", base)
    )
    return "usage:\n  flush_interval_ms: 10\nmodels:\n" + "\n".join(models) + "\n"


def start(tmp: Path, mocks: ProviderMocks) -> Iterator[Gateway]:
    config = tmp / "gateway.yaml"
    config.write_text(config_text(mocks.base_url))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "MOCK_PROVIDER_KEY": KEY,
        "MOCK_AWS_KEY_ID": AWS_KEY_ID,
        "MOCK_AWS_SECRET": AWS_SECRET,
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
    gw = Gateway(f"http://127.0.0.1:{port}", None, log_path, config)  # type: ignore[arg-type]
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
