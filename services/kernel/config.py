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
    stream: str = Field(default="gateway:usage", min_length=1)
    group: str = Field(default="analytics", min_length=1)
    flush_interval_ms: float = Field(default=20.0, gt=0, le=10_000)
    max_batch: int = Field(default=512, ge=1, le=100_000)


class ClassifierConfig(_Strict):
    """The classifier service (and the router's in-process rule fallback)."""

    rules_file: str | None = Field(default=None, min_length=1)  # default: services/classifier/rules.yaml
    heads_file: str | None = Field(default=None, min_length=1)  # default: services/classifier/heads.npz
    encoder_backend: Literal["auto", "onnx", "torch"] = "auto"  # auto: onnx when exported, else torch
    encoder_threads: int = Field(default=1, ge=1, le=64)
    max_batch: int = Field(default=64, ge=1, le=1024)  # texts per forward pass
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)


ModelList = Annotated[
    tuple[Annotated[str, Field(min_length=1, max_length=256, pattern=_MODEL_NAME)], ...], Field(min_length=1)
]
BANDS = ("easy", "medium", "hard")


def _models(value: object) -> object:
    return (value,) if isinstance(value, str) else value


class RouteRow(_Strict):
    """One category's models per difficulty band (each a model or an ordered list to try)."""

    easy: ModelList | None = None
    medium: ModelList | None = None
    hard: ModelList | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_model_for_all(cls, value: object) -> object:
        if isinstance(value, str | list | tuple):  # `code: gpt-4o` = that model in every band
            return dict.fromkeys(BANDS, _models(value))
        if isinstance(value, dict):
            return {k: _models(v) for k, v in value.items()}
        return value


class AutoAlias(_Strict):
    """A public name (`auto`, `auto-cheap`, ...) and where its difficulty bands start."""

    medium: float = Field(default=0.2, ge=0, le=1)  # difficulty ≥ medium → the medium band
    hard: float = Field(default=0.35, ge=0, le=1)  # difficulty ≥ hard → the hard band

    @model_validator(mode="after")
    def _ordered(self) -> AutoAlias:
        if self.medium > self.hard:
            raise ValueError("medium must not be above hard")
        return self


class RoutingConfig(_Strict):
    """Automatic routing: category x difficulty band → model, for the `aliases` names."""

    default: ModelList  # a category or band the table does not name goes here
    table: dict[str, RouteRow] = {}
    aliases: dict[Annotated[str, Field(min_length=1, max_length=256, pattern=_MODEL_NAME)], AutoAlias] = (
        Field(min_length=1)
    )
    classifier_timeout_ms: float = Field(default=50.0, gt=0, le=10_000)
    classifier_retry_s: float = Field(default=5.0, ge=0, le=3600)  # after a failure: rules only, this long

    @field_validator("default", mode="before")
    @classmethod
    def _default_list(cls, value: object) -> object:
        return _models(value)

    def targets(self) -> set[str]:
        """Every model name the routing table can choose."""
        names = set(self.default)
        for row in self.table.values():
            for band in BANDS:
                names.update(getattr(row, band) or ())
        return names


class GatewayConfig(_Strict):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    usage: UsageConfig = UsageConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    routing: RoutingConfig | None = None
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
        if self.routing is not None:
            for alias in self.routing.aliases:
                if alias in seen:
                    raise ValueError(f"routing alias {alias!r} is also a model name or alias")
            unknown = sorted(self.routing.targets() - seen)
            if unknown:
                raise ValueError(f"routing names models that are not configured: {unknown}")
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
