"""Deployments for unit tests, built the way the gateway builds them: from configuration."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from services.kernel.config import Deployment, DeploymentConfig

_ADAPTER: TypeAdapter[Any] = TypeAdapter(DeploymentConfig)


def deployment(
    public: str = "public", index: int = 0, secrets: dict[str, str] | None = None, **fields: Any
) -> Deployment:
    """A validated deployment; `fields` are its configuration (provider, model, base_url, ...)."""
    config = _ADAPTER.validate_python(fields)
    return Deployment(public, index, config, secrets or {})


OPENAI = deployment(
    provider="openai",
    model="gpt-4o-mini-2024-07-18",
    base_url="https://upstream.test/v1/",
    api_key_env="TEST_PROVIDER_KEY",
    secrets={"api_key": "sk-provider-secret"},
)
MOCK = deployment("mock-small", provider="mock", model="mock-upstream", mock={"max_tokens": 32})
