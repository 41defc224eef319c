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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

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
# A region name as operators write them (`eu-west`, `us-east-1`): lower-case letters, digits
# and dashes; it becomes a metric label value and a response header, so it is kept short.
REGION_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
RegionName = Annotated[str, Field(pattern=REGION_NAME)]
_MODEL_NAME = r"^[!-~]+$"  # printable ASCII, no spaces: it is sent back in response headers


class Breaker(_Strict):
    """When a deployment is taken out of rotation, and for how long."""

    failures: int = Field(default=5, ge=1, le=1000)  # consecutive failures that open the circuit
    cooldown_s: float = Field(default=30.0, gt=0, le=3600)  # out of rotation, then one probe


class _DeploymentBase(_Strict):
    """What every deployment has, whatever its provider."""

    # Secrets are fields named `<name>_env` holding an environment-variable name; their
    # values are resolved once at start into `Deployment.secrets[<name>]`. A secret that
    # is referenced must be set, or the deployment is left out.

    model: str = Field(min_length=1, max_length=256)
    weight: float = Field(default=1.0, gt=0)
    # Timeouts: connecting; the answer's headers (time to first byte); the whole answer,
    # streams included; the longest silence between two pieces of a stream.
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    first_byte_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    timeout_s: float = Field(default=600.0, gt=0, le=3600)
    stream_idle_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    retries: int = Field(default=2, ge=0, le=10)  # further tries on this deployment before the next
    rpm: int | None = Field(default=None, ge=1)  # requests per minute this deployment may take
    tpm: int | None = Field(default=None, ge=1)  # tokens per minute (prompt estimate + completion)
    breaker: Breaker = Breaker()
    price: Price | None = None  # unknown prices are recorded as unknown, never as zero
    # Where the deployment processes requests (docs/deployment.md): routers prefer their own
    # region's deployments, and a request restricted to regions goes only to deployments in
    # them. None: not placed in any region (never used for a region-restricted request).
    region: RegionName | None = None

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


class _HttpDeployment(_DeploymentBase):
    """A deployment reached over HTTP(S) at `base_url` (the provider's public endpoint
    when the provider has one and the field is left out)."""

    default_base_url: ClassVar[str | None] = None
    base_url: str = Field(default="", max_length=2048, validate_default=True)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            if cls.default_base_url is None:
                raise PydanticCustomError("missing", "Field required")
            return cls.default_base_url
        return _check_base_url(value)


class OpenAIDeployment(_HttpDeployment):
    """OpenAI or any OpenAI-compatible host (Groq, Mistral, Together, vLLM, Ollama, ...)."""

    provider: Literal["openai"]
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)


class AzureDeployment(_HttpDeployment):
    """Azure OpenAI: `base_url` is the resource endpoint (`https://NAME.openai.azure.com`),
    `model` the Azure deployment name; the key goes in the `api-key` header."""

    provider: Literal["azure"]
    api_version: str = Field(default="2024-10-21", pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$")
    api_key_env: str = Field(pattern=_ENV_NAME)


class AnthropicDeployment(_HttpDeployment):
    """Anthropic's Messages API."""

    default_base_url = "https://api.anthropic.com"
    provider: Literal["anthropic"]
    api_key_env: str = Field(pattern=_ENV_NAME)
    anthropic_version: str = Field(default="2023-06-01", pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    # Anthropic requires max_tokens; this is sent when the client gives none.
    default_max_tokens: int = Field(default=4096, ge=1, le=1_000_000)


class GeminiDeployment(_HttpDeployment):
    """Google Gemini (the Generative Language API): `generateContent`, `streamGenerateContent`,
    `batchEmbedContents`; the key goes in the `x-goog-api-key` header."""

    default_base_url = "https://generativelanguage.googleapis.com"
    provider: Literal["gemini"]
    api_version: str = Field(default="v1beta", pattern=r"^v[0-9]+(alpha|beta)?[0-9]*$")
    api_key_env: str = Field(pattern=_ENV_NAME)


class CohereDeployment(_HttpDeployment):
    """Cohere's v2 API: `/v2/chat` and `/v2/embed`."""

    default_base_url = "https://api.cohere.com"
    provider: Literal["cohere"]
    api_key_env: str = Field(pattern=_ENV_NAME)
    # Cohere embeddings need the purpose of the text; OpenAI's request has no such field.
    embedding_input_type: Literal["search_document", "search_query", "classification", "clustering"] = (
        "search_document"
    )


class BedrockDeployment(_DeploymentBase):
    """AWS Bedrock's Converse API, signed with SigV4. `model` is the model or inference
    profile id; `aws_region` the AWS region whose endpoint serves it."""

    provider: Literal["bedrock"]
    aws_region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
    base_url: str | None = Field(default=None, max_length=2048)  # default: the region's endpoint
    access_key_id_env: str = Field(pattern=_ENV_NAME)
    secret_access_key_env: str = Field(pattern=_ENV_NAME)
    session_token_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_base_url(value)

    @property
    def endpoint(self) -> str:
        return self.base_url or f"https://bedrock-runtime.{self.aws_region}.amazonaws.com"


class MockDeployment(_DeploymentBase):
    """The built-in mock: answers in-process, no key, no network."""

    provider: Literal["mock"]
    mock: MockParams = MockParams()


AnyDeployment = (
    OpenAIDeployment
    | AzureDeployment
    | AnthropicDeployment
    | GeminiDeployment
    | CohereDeployment
    | BedrockDeployment
    | MockDeployment
)
DeploymentConfig = Annotated[AnyDeployment, Field(discriminator="provider")]
PROVIDERS = ("openai", "azure", "anthropic", "gemini", "cohere", "bedrock", "mock")


class ModelConfig(_Strict):
    """A public model name and the deployments that serve it."""

    name: str = Field(min_length=1, max_length=256, pattern=_MODEL_NAME)
    aliases: tuple[Annotated[str, Field(min_length=1, max_length=256, pattern=_MODEL_NAME)], ...] = ()
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)
    # How a deployment is picked among this model's healthy ones with capacity.
    balancing: Literal["weighted", "least_busy", "lowest_latency"] = "weighted"
    # Models tried, in order, when every deployment of this one failed.
    fallbacks: tuple[Annotated[str, Field(pattern=_MODEL_NAME)], ...] = ()
    # Models tried when the prompt is too long for this one (the provider says
    # context_length_exceeded, or the prompt estimate exceeds `context_window`).
    context_fallbacks: tuple[Annotated[str, Field(pattern=_MODEL_NAME)], ...] = ()
    context_window: int | None = Field(default=None, ge=1)  # prompt tokens this model takes


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


class JwtConfig(_Strict):
    """Access tokens issued by the auth service's login and verified by every router."""

    algorithm: Literal["EdDSA", "RS256"] = "EdDSA"  # pinned: nothing else is ever accepted
    issuer: str = Field(default="llm-gateway", min_length=1, max_length=256)
    audience: str = Field(default="llm-gateway", min_length=1, max_length=256)
    access_token_ttl_s: int = Field(default=900, ge=60, le=86_400)
    clock_skew_s: int = Field(default=30, ge=0, le=300)
    rotate_after_days: float = Field(default=30, ge=0, le=3650)  # 0 = only through the admin API
    # Passphrase that encrypts the signing keys' private halves at rest; default: the master key.
    key_secret_env: str | None = Field(default=None, pattern=_ENV_NAME)
    jwks_refresh_s: float = Field(default=300, ge=1, le=86_400)


class LoginConfig(_Strict):
    password_min_length: int = Field(default=12, ge=8, le=128)
    max_failures: int = Field(default=10, ge=1, le=10_000)  # per account, then 429 until the window ends
    failure_window_s: int = Field(default=900, ge=1, le=86_400)
    # scrypt cost: N (a power of two) and p; r is 8. The default is one of OWASP's settings.
    scrypt_n: int = Field(default=2**15, ge=2**14, le=2**20)
    scrypt_p: int = Field(default=3, ge=1, le=16)

    @field_validator("scrypt_n")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value


class LimitsConfig(_Strict):
    """How the router's admission prices and counts a request."""

    # Output tokens reserved for a request that names neither max_tokens nor max_completion_tokens.
    default_max_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    # Refuse (400) a request without max_tokens from a caller with a budget or a TPM limit,
    # so that no answer can cost more than was reserved for it.
    require_max_tokens: bool = False
    image_tokens: int = Field(default=2000, ge=0, le=1_000_000)  # reserved per image/audio/file part
    on_redis_down: Literal["local", "deny"] = "local"
    redis_timeout_s: float = Field(default=1.0, gt=0, le=10)  # then: Redis counts as away
    retry_redis_after_s: float = Field(default=1.0, gt=0, le=300)


class AuthConfig(_Strict):
    """Virtual keys, users, JWT and limits (`docs/auth.md`)."""

    master_key_env: str = Field(default="GATEWAY_MASTER_KEY", pattern=_ENV_NAME)
    redis_prefix: str = Field(default="gateway:auth", min_length=1, max_length=64, pattern=r"^[!-~]+$")
    cache_ttl_s: float = Field(default=60, gt=0, le=3600)  # in-process cache of a key's record
    redis_ttl_s: int = Field(default=300, ge=1, le=86_400)  # shared cache of key records
    negative_ttl_s: float = Field(default=2, ge=0, le=60)  # an unknown key, remembered briefly
    degraded_ttl_s: float = Field(default=5, gt=0, le=3600)  # cache age while invalidations are not heard
    stale_ttl_s: float = Field(default=900, ge=0, le=86_400)  # serve a known key this long when auth is down
    lookup_timeout_s: float = Field(default=1.0, gt=0, le=30)
    cache_max_entries: int = Field(default=100_000, ge=100, le=10_000_000)
    jwt: JwtConfig = JwtConfig()
    login: LoginConfig = LoginConfig()
    limits: LimitsConfig = LimitsConfig()


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
    # Analytics: once caught up, how long to let entries gather before the next read (0: at
    # once). Off by default: a 100 ms linger cut the consumer's CPU per event but put tens of
    # milliseconds into the router's 1-connection p99 (docs/usage-pipeline.md).
    consumer_linger_ms: float = Field(default=0.0, ge=0, le=10_000)


class ResilienceConfig(_Strict):
    """Retries and fallbacks of a model request (the per-deployment part is on each deployment)."""

    deadline_s: float = Field(default=600.0, gt=0, le=3600)  # no new try starts after this
    backoff_base_s: float = Field(default=0.1, ge=0, le=60)  # first retry waits up to this (jittered)
    backoff_max_s: float = Field(default=5.0, ge=0, le=600)
    max_retry_after_s: float = Field(default=5.0, ge=0, le=3600)  # a longer Retry-After is not waited out
    max_attempts: int = Field(default=10, ge=1, le=100)  # tries of one request, all deployments together


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
    # How the analytics process yields a core it shares with the router (docs/analytics.md):
    # it stores usage in the background, so its batches should wait for requests, not the
    # other way round. "idle": SCHED_IDLE, set aside the moment a process of normal
    # priority on its core wakes; "nice": os.nice by `nice`, a smaller share of the core,
    # but a batch may run on for a time slice (a millisecond or more) while a request
    # waits; "normal": left alone.
    cpu_policy: Literal["idle", "nice", "normal"] = "idle"
    nice: int = Field(default=10, ge=0, le=19)  # "nice", and "idle" where there is no SCHED_IDLE


class TracingConfig(_Strict):
    """OpenTelemetry traces (off by default; docs/analytics.md#traces)."""

    enabled: bool = False
    otlp_endpoint: str | None = Field(default=None, min_length=1, max_length=2048)  # .../v1/traces
    service_name: str = Field(default="llm-gateway", min_length=1, max_length=256)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


_DAY = 86_400.0


class CacheRule(_Strict):
    """An override of the cache for one model, team or key; unset fields inherit."""

    enabled: bool | None = None
    semantic: bool | None = None
    ttl_s: float | None = Field(default=None, gt=0, le=365 * _DAY)
    max_temperature: float | None = Field(default=None, ge=0, le=2)


class CacheConfig(_Strict):
    """The response cache (docs/cache.md). Off unless `enabled`."""

    enabled: bool = False
    tenant: Literal["team", "key"] = "team"  # whose answers share a namespace (a key without a team: its own)
    semantic: bool = True  # answer paraphrases too, not only identical requests
    ttl_s: float = Field(default=3600.0, gt=0, le=365 * _DAY)
    max_ttl_s: float = Field(default=7 * _DAY, gt=0, le=365 * _DAY)  # cap of the per-request TTL header
    max_temperature: float = Field(
        default=1.0, ge=0, le=2
    )  # no caching above it (an unset temperature caches)
    # The second look at semantic candidates: "model" = rules then the learned check (calibrated),
    # "rules" = rules then a cosine threshold, "off" = the cosine threshold alone.
    verifier: Literal["model", "rules", "off"] = "model"
    threshold: float | None = Field(default=None, ge=0, le=1)  # None: the calibrated default of the mode
    similarity_floor: float | None = Field(default=None, ge=0, le=1)  # cosine below it is never a candidate
    candidates: int = Field(default=4, ge=1, le=64)  # nearest entries checked per lookup
    semantic_max_chars: int = Field(default=1000, ge=1, le=100_000)  # longer prompts: exact layer only
    max_entries_per_namespace: int = Field(default=10_000, ge=1, le=10_000_000)
    max_entries: int = Field(default=1_000_000, ge=1, le=100_000_000)
    max_entry_bytes: int = Field(default=256 * 1024, ge=1024, le=64 << 20)  # larger answers are not stored
    lookup_timeout_ms: float = Field(default=250.0, gt=0, le=60_000)  # past it the router treats it as a miss
    store_timeout_ms: float = Field(default=2000.0, gt=0, le=60_000)
    redis_prefix: str = Field(default="gwcache", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9:_.-]+$")
    sync_maxlen: int = Field(default=10_000, ge=100, le=10_000_000)  # changes kept for replicas catching up
    sweep_interval_s: float = Field(default=30.0, gt=0, le=3600)
    models: dict[str, CacheRule] = {}
    teams: dict[str, CacheRule] = {}
    keys: dict[str, CacheRule] = {}  # by key id ("master" for the master key)


class RegionConfig(_Strict):
    """Multi-region routing (docs/deployment.md). One file serves every region; what
    differs per region is the router's `name`, set per process by `GATEWAY_REGION`."""

    # This router's region (`GATEWAY_REGION` wins). None: one region, no preference.
    name: RegionName | None = None
    # The regions in use. When given, every deployment's `region`, the router's and those
    # in `residency` must be one of them, so a misspelt name stops the start.
    names: tuple[RegionName, ...] = ()
    # Requests served by a router in region R go only to deployments in `residency[R]`,
    # whoever sends them (on top of any restriction of the key or team). A region not
    # listed has no such restriction.
    residency: dict[RegionName, tuple[RegionName, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> RegionConfig:
        if self.names:
            named = [self.name] if self.name else []
            for region, allowed in self.residency.items():
                named += [region, *allowed]
            for region in named:
                if region not in self.names:
                    raise ValueError(f"region {region!r} is not in region.names {list(self.names)}")
        for region, allowed in self.residency.items():
            if not allowed:
                raise ValueError(f"residency of {region!r} names no region: no request could be served")
        return self


class ClassifierConfig(_Strict):
    """The classifier service (and the router's in-process rule fallback)."""

    rules_file: str | None = Field(default=None, min_length=1)  # default: services/classifier/rules.yaml
    heads_file: str | None = Field(default=None, min_length=1)  # default: services/classifier/heads.npz
    # auto: the static int8 model when exported (docs/classifier.md), else onnx, else torch.
    # The semantic cache always embeds with the float model (onnx, else torch).
    encoder_backend: Literal["auto", "onnx", "onnx-int8", "torch"] = "auto"
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
    resilience: ResilienceConfig = ResilienceConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    tracing: TracingConfig = TracingConfig()
    region: RegionConfig = RegionConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    routing: RoutingConfig | None = None
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    cache: CacheConfig = CacheConfig()

    @model_validator(mode="after")
    def _deployment_regions(self) -> GatewayConfig:
        known = self.region.names
        if known:
            for model in self.models:
                for index, dep in enumerate(model.deployments):
                    if dep.region is not None and dep.region not in known:
                        raise ValueError(
                            f"model {model.name!r}, deployment {index}: region {dep.region!r}"
                            f" is not in region.names {list(known)}"
                        )
        return self

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
        for model in self.models:
            for field in ("fallbacks", "context_fallbacks"):
                for name in getattr(model, field):
                    if name not in seen:
                        raise ValueError(
                            f"model {model.name!r}: {field} names {name!r}, which is not a model"
                        )
                    if name == model.name or name in model.aliases:
                        raise ValueError(f"model {model.name!r}: {field} names the model itself")
        if self.routing is not None:
            for alias in self.routing.aliases:
                if alias in seen:
                    raise ValueError(f"routing alias {alias!r} is also a model name or alias")
            unknown = sorted(self.routing.targets() - seen)
            if unknown:
                raise ValueError(f"routing names models that are not configured: {unknown}")
        return self

    @model_validator(mode="after")
    def _cache_models_exist(self) -> GatewayConfig:
        names = {name for model in self.models for name in (model.name, *model.aliases)}
        unknown = sorted(set(self.cache.models) - names)
        if unknown:
            raise ValueError(f"cache.models names unknown models: {', '.join(unknown)}")
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class Deployment:
    """A configured deployment with its secrets resolved: what the router routes to.

    The provider's own fields live in `config` (defined once, in the configuration
    model); this object adds only what start-up resolves.
    """

    public_model: str
    index: int  # position among the model's deployments, a stable id for metrics and logs
    config: AnyDeployment
    secrets: Mapping[str, str] = dataclasses.field(repr=False)
    # `<public model>/<index>`: names the deployment without its URL or secrets. Derived
    # once here because the request path reads it several times per request, as it does
    # the provider and the upstream model (`config.provider`, `config.model`).
    name: str = dataclasses.field(init=False, compare=False)
    provider: str = dataclasses.field(init=False, compare=False)
    model: str = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.public_model}/{self.index}")
        object.__setattr__(self, "provider", self.config.provider)
        object.__setattr__(self, "model", self.config.model)


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    """Public model name → usable deployments (those whose required secrets are present)."""

    models: Mapping[str, tuple[Deployment, ...]]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # alias → public name
    configs: Mapping[str, ModelConfig] = dataclasses.field(default_factory=dict)  # public name → config

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
    configs = {m.name: m for m in config.models if m.name in models}
    return Catalog(models=models, aliases=aliases, configs=configs)
