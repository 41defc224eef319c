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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class Price(_Strict):
    """What a deployment costs, in currency units (USD by convention) per million tokens."""

    input: float = Field(ge=0, le=1_000_000)
    output: float = Field(ge=0, le=1_000_000)
    cached_input: float | None = Field(default=None, ge=0, le=1_000_000)  # default: the input price


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_MODEL_NAME = r"^[!-~]+$"  # printable ASCII, no spaces: it is sent back in response headers


class _DeploymentBase(_Strict):
    """What every deployment has, whatever its provider."""

    # Secrets are fields named `<name>_env` holding an environment-variable name; their
    # values are resolved once at start into `Deployment.secrets[<name>]`. A secret that
    # is referenced must be set, or the deployment is left out.

    model: str = Field(min_length=1, max_length=256)
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    price: Price | None = None  # unknown prices are recorded as unknown, never as zero

    def secret_refs(self) -> dict[str, str]:
        """`{secret name: env var}` for every secret field that is set."""
        return {
            name[: -len("_env")]: value
            for name, value in self
            if name.endswith("_env") and isinstance(value, str)
        }


def _check_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("base_url must start with http:// or https://")
    return url.rstrip("/")


class OpenAIDeployment(_DeploymentBase):
    """OpenAI or any OpenAI-compatible host (Groq, Mistral, Together, vLLM, Ollama, ...)."""

    provider: Literal["openai"]
    base_url: str = Field(min_length=1, max_length=2048)
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_base_url(value)


class MockDeployment(_DeploymentBase):
    """The built-in mock: answers in-process, no key, no network."""

    provider: Literal["mock"]
    mock: MockParams = MockParams()


DeploymentConfig = Annotated[OpenAIDeployment | MockDeployment, Field(discriminator="provider")]
PROVIDERS = ("openai", "mock")


class ModelConfig(_Strict):
    """A public model name and the deployments that serve it."""

    name: str = Field(min_length=1, max_length=256, pattern=_MODEL_NAME)
    aliases: tuple[Annotated[str, Field(min_length=1, max_length=256, pattern=_MODEL_NAME)], ...] = ()
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)


class ServerConfig(_Strict):
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    access_log: bool = False


class AuthConfig(_Strict):
    master_key_env: str = Field(default="GATEWAY_MASTER_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class UsageConfig(_Strict):
    """The usage pipeline (docs/usage-pipeline.md)."""

    stream: str = Field(default="gateway:usage", min_length=1)
    group: str = Field(default="analytics", min_length=1)
    flush_interval_ms: float = Field(default=20.0, gt=0, le=10_000)
    max_batch: int = Field(default=512, ge=1, le=100_000)
    # Router: events held in memory while neither Redis nor the spool disk takes them;
    # past it, new events are dropped (counted, logged).
    max_buffered_events: int = Field(default=100_000, ge=1, le=10_000_000)
    # Analytics: where events it cannot store go (default "<stream>:dead"), and how
    # many are kept (the oldest go first).
    dead_letter_stream: str | None = Field(default=None, min_length=1)
    dead_letter_max: int = Field(default=100_000, ge=1, le=10_000_000)


class RetentionConfig(_Strict):
    """How long analytics keeps what it stores (docs/analytics.md). Whole partitions
    are dropped when they pass the horizon: no bulk DELETE."""

    events_months: int = Field(default=13, ge=1, le=1200)  # usage events and stored completions
    minute_rollup_days: int = Field(default=3, ge=1, le=3650)  # recent charts; older edges use hours
    hour_rollup_months: int = Field(default=25, ge=1, le=1200)
    # Day roll-ups are a few rows per route and caller per day: kept.


class TargetsConfig(_Strict):
    """Service targets shown on the dashboard and in the summary (and in deploy/prometheus)."""

    availability: float = Field(default=0.999, gt=0, lt=1)  # share of requests without a 5xx
    latency_p99_ms: float = Field(default=500.0, gt=0)
    cache_hit_rate: float = Field(default=0.30, ge=0, le=1)


class AnalyticsConfig(_Strict):
    """The analytics service: retention, service targets, stored completions."""

    retention: RetentionConfig = RetentionConfig()
    targets: TargetsConfig = TargetsConfig()
    dashboard_refresh_s: int = Field(default=30, ge=5, le=3600)
    # `store: true` on a chat completion keeps the request and the answer (retention:
    # `retention.events_months`); off, the field is accepted and nothing is stored.
    store_completions: bool = True
    max_stored_bytes: int = Field(default=4 << 20, ge=1024, le=64 << 20)  # request + answer


class TracingConfig(_Strict):
    """OpenTelemetry traces (off by default; docs/analytics.md#traces)."""

    enabled: bool = False
    otlp_endpoint: str | None = Field(default=None, min_length=1, max_length=2048)  # .../v1/traces
    service_name: str = Field(default="llm-gateway", min_length=1, max_length=256)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class GatewayConfig(_Strict):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    usage: UsageConfig = UsageConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    tracing: TracingConfig = TracingConfig()
    models: tuple[ModelConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(
                        f"model name {name!r} appears twice (names and aliases are one namespace)"
                    )
                seen.add(name)
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class Deployment:
    """A configured deployment with its secrets resolved: what the router routes to.

    The provider's own fields live in `config` (defined once, in the configuration
    model); this object adds only what start-up resolves.
    """

    public_model: str
    index: int  # position among the model's deployments, a stable id for metrics and logs
    config: OpenAIDeployment | MockDeployment
    secrets: Mapping[str, str] = dataclasses.field(repr=False)

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def name(self) -> str:
        """`<public model>/<index>`: names the deployment without its URL or secrets."""
        return f"{self.public_model}/{self.index}"


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    """Public model name → usable deployments (those whose required secrets are present)."""

    models: Mapping[str, tuple[Deployment, ...]]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # alias → public name

    def secrets(self) -> list[str]:
        """Every resolved secret value, for redaction."""
        return [v for deps in self.models.values() for d in deps for v in d.secrets.values()]


ENV_PREFIX = "GATEWAY__"


def _set_path(raw: dict[str, Any], path: list[str], value: Any, var: str) -> None:
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{var}: {'.'.join(path[:i])} has no item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{var}: {'.'.join(path[:i])} is not a mapping or a list")


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply `GATEWAY__SECTION__FIELD=value` variables to the parsed file, in place.

    Path segments are lower-cased; a number indexes a list (`GATEWAY__MODELS__0__...`).
    Values are YAML scalars (`true`, `12`, `[a, b]`). Returns {dotted path: variable}
    so validation errors can name the variable rather than the file.
    """
    applied: dict[str, str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{var}: empty path segment")
        try:
            value = yaml.safe_load(env[var])
        except yaml.YAMLError:
            raise ConfigError(f"{var}: not a valid YAML value") from None
        _set_path(raw, path, value, var)
        applied[".".join(path)] = var
    return applied


def _format_errors(path: Path, exc: ValidationError, overrides: Mapping[str, str]) -> str:
    lines = []
    errors = exc.errors()
    for err in errors:
        # The tag of a provider union is part of pydantic's path, not of the file's.
        loc_parts = err["loc"]
        parts = [
            p for i, p in enumerate(loc_parts) if not (p in PROVIDERS and isinstance(loc_parts[i - 1], int))
        ]
        loc = ".".join(str(p) for p in parts) or "(top level)"
        msg = err["msg"]
        if err["type"] == "too_short" and any(len(e["loc"]) > len(err["loc"]) for e in errors):
            continue  # a list emptied by its failing items: the items' own errors say why
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            loc += ".provider"
            msg = f"unknown provider (one of: {', '.join(PROVIDERS)})"
        source = next((var for dotted, var in overrides.items() if loc.startswith(dotted)), None)
        lines.append(f"  {loc}: {msg}" + (f" (set by {source})" if source else ""))
    return f"{path}: invalid configuration:\n" + "\n".join(lines)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate the YAML file and the `GATEWAY__*` overrides in `env`;
    raise ConfigError naming the bad field (and the variable that set it)."""
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
    overrides = apply_env_overrides(raw, env or {})
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc, overrides)) from None


def build_catalog(config: GatewayConfig, env: Mapping[str, str]) -> Catalog:
    """Resolve secret references; deployments missing a required one are left out (logged)."""
    models: dict[str, tuple[Deployment, ...]] = {}
    aliases: dict[str, str] = {}
    for model in config.models:
        usable = []
        for index, dep in enumerate(model.deployments):
            secrets = {name: env.get(var, "") for name, var in dep.secret_refs().items()}
            missing = [dep.secret_refs()[n] for n, v in secrets.items() if not v]
            if missing:
                log.info("deployment skipped: secret not set", extra={"model": model.name, "env": missing})
                continue
            usable.append(Deployment(model.name, index, dep, secrets))
        if usable:
            models[model.name] = tuple(usable)
            aliases.update(dict.fromkeys(model.aliases, model.name))
    return Catalog(models=models, aliases=aliases)
