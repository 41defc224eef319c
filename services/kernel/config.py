"""`gateway.yaml`: loaded once at start into frozen, validated objects.

Unknown keys are errors that name the key and the file. Provider keys are only
referenced by environment-variable name; their values are resolved here, once,
and kept out of every repr.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("gateway.config")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MockParams(_Strict):
    """Behaviour of the built-in mock provider."""

    ttft_ms: float = Field(default=0.0, ge=0, le=600_000)
    tokens_per_second: float = Field(default=0.0, ge=0)  # 0 = all at once
    latency_ms: float = Field(default=0.0, ge=0, le=600_000)
    max_tokens: int = Field(default=32, ge=1, le=100_000)


class DeploymentConfig(_Strict):
    """One place a public model is served from."""

    provider: Literal["openai", "mock"]
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    mock: MockParams | None = None

    @model_validator(mode="after")
    def _check_provider_fields(self) -> DeploymentConfig:
        if self.provider == "mock":
            if self.base_url is not None:
                raise ValueError("base_url is not used by the mock provider")
        else:
            if not self.base_url:
                raise ValueError(f"base_url is required for provider {self.provider!r}")
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("base_url must start with http:// or https://")
            if self.mock is not None:
                raise ValueError("mock settings are only for the mock provider")
        return self


class ModelConfig(_Strict):
    """A public model name and the deployments that serve it."""

    name: str = Field(min_length=1, max_length=256)
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)


class ServerConfig(_Strict):
    """How the process server treats clients, metrics and shutdown (docs/operations.md).

    Limits hold per process: with `--workers N`, each worker has its own connection cap.
    """

    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    access_log: bool = False
    # Request line plus headers; larger gets 431 and the connection is closed.
    max_header_bytes: int = Field(default=32 << 10, ge=1024, le=1 << 20)
    # From a request's first byte to the end of its headers, then to the end of its body; 408 after.
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # A connection with no request under way (new, or between keep-alive requests) is closed after this.
    idle_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    # Open client connections per process; also capped at half the open-file limit. Past it: 503, closed.
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    # /metrics on its own port (the public port then answers 404 there); `--metrics-port` overrides.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Without a metrics port, the public /metrics needs `Bearer <value of this variable>`
    # (unset: the master key).
    metrics_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # On SIGTERM: streams get drain_s to finish, then are interrupted; the whole shutdown
    # (drain, then open connections) gets shutdown_timeout_s before the lifespan closes.
    drain_s: float = Field(default=10.0, ge=0, le=3600)
    shutdown_timeout_s: float = Field(default=15.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _drain_within_shutdown(self) -> ServerConfig:
        if self.drain_s >= self.shutdown_timeout_s:
            raise ValueError(
                f"drain_s ({self.drain_s:g}) must be below shutdown_timeout_s ({self.shutdown_timeout_s:g})"
            )
        return self


class AuthConfig(_Strict):
    master_key_env: str = Field(default="GATEWAY_MASTER_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class UsageConfig(_Strict):
    stream: str = Field(default="gateway:usage", min_length=1)
    group: str = Field(default="analytics", min_length=1)
    flush_interval_ms: float = Field(default=20.0, gt=0, le=10_000)
    max_batch: int = Field(default=512, ge=1, le=100_000)


class GatewayConfig(_Strict):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    usage: UsageConfig = UsageConfig()
    models: tuple[ModelConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment with its secret resolved; what the router routes to."""

    public_model: str
    provider: str
    model: str
    base_url: str | None
    api_key: str | None = dataclasses.field(repr=False)
    api_key_env: str | None
    weight: float
    timeout_s: float
    connect_timeout_s: float
    mock: MockParams


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    """Public model name → usable deployments (those whose key is present)."""

    models: Mapping[str, tuple[Deployment, ...]]


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return f"{path}: invalid configuration:\n" + "\n".join(lines)


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the YAML file; raise ConfigError naming the bad field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None


def build_catalog(config: GatewayConfig, env: Mapping[str, str]) -> Catalog:
    """Resolve key references; deployments whose key is absent are left out (logged)."""
    models: dict[str, tuple[Deployment, ...]] = {}
    for model in config.models:
        usable = []
        for dep in model.deployments:
            api_key = None
            if dep.api_key_env is not None:
                api_key = env.get(dep.api_key_env) or None
                if api_key is None:
                    log.info(
                        "deployment skipped: key not set",
                        extra={"model": model.name, "env": dep.api_key_env},
                    )
                    continue
            usable.append(
                Deployment(
                    public_model=model.name,
                    provider=dep.provider,
                    model=dep.model,
                    base_url=dep.base_url.rstrip("/") if dep.base_url else None,
                    api_key=api_key,
                    api_key_env=dep.api_key_env,
                    weight=dep.weight,
                    timeout_s=dep.timeout_s,
                    connect_timeout_s=dep.connect_timeout_s,
                    mock=dep.mock or MockParams(),
                )
            )
        if usable:
            models[model.name] = tuple(usable)
    return Catalog(models=models)
