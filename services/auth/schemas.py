"""The admin API's JSON: request bodies (validated, unknown fields refused) and the
objects it answers with. The OpenAPI document is built from these (`openapi.py`).

In an update, a field that is absent is left alone and a field set to `null`
is cleared (`model_fields_set` tells the two apart).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.kernel.config import REGION_NAME

Role = Literal["admin", "team_admin", "member"]
PeriodName = Literal["hour", "day", "week", "month"]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
# A region name as in the configuration (`eu-west`); checked against `region.names` when set.
RegionName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=REGION_NAME)]
MAX_REGIONS = 64
MAX_METADATA_BYTES = 16_384
MAX_LIMIT = 1_000_000_000
MAX_BUDGET = 1_000_000.0  # per period; spend counters are integers of 1e-9 currency


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


class Budget(_Body):
    """A spending limit in currency units (the unit of the configured prices) per period
    (UTC hour, day, ISO week or calendar month; null: one limit for the lifetime)."""

    amount: float = Field(ge=0, le=MAX_BUDGET)
    period: PeriodName | None = None


class _Limits(_Body):
    models: list[ModelName] | None = Field(default=None, max_length=1000)
    # Data residency: only deployments in these regions may serve the key or team; null =
    # unrestricted. A key's restriction is narrowed by its team's.
    regions: list[RegionName] | None = Field(default=None, min_length=1, max_length=MAX_REGIONS)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    budget: Budget | None = None
    metadata: dict[str, Any] | None = None

    _metadata = field_validator("metadata")(_check_metadata)


class TeamCreate(_Limits):
    name: Name


class TeamUpdate(_Limits):
    name: Name | None = None


def _email(value: str) -> str:
    value = value.strip().lower()
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value):
        raise ValueError("must be an email address")
    return value


class UserCreate(_Body):
    email: Annotated[str, StringConstraints(min_length=3, max_length=254)]
    name: Name | None = None
    role: Role = "member"
    team_id: Id | None = None
    password: Annotated[str, StringConstraints(max_length=1024)] | None = None

    _email = field_validator("email")(_email)


class UserUpdate(_Body):
    name: Name | None = None
    role: Role | None = None
    team_id: Id | None = None
    disabled: bool | None = None
    password: Annotated[str, StringConstraints(max_length=1024)] | None = None
    current_password: Annotated[str, StringConstraints(max_length=1024)] | None = None


class KeyCreate(_Limits):
    name: Name | None = None
    user_id: Id | None = None
    team_id: Id | None = None
    expires_at: float | None = Field(default=None, gt=0, le=32503680000)  # unix seconds, before year 3000


class KeyUpdate(_Limits):
    name: Name | None = None
    expires_at: float | None = Field(default=None, gt=0, le=32503680000)


class KeyRotate(_Body):
    overlap_s: float = Field(default=3600, ge=0, le=30 * 86400)  # the old secret keeps working this long


class Login(_Body):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Empty(_Body):
    """No fields (a body may be omitted)."""


# --- what the API answers ---------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Team(_Out):
    object: Literal["team"]
    id: str
    name: str
    models: list[str] | None
    regions: list[str] | None  # data residency; null = unrestricted
    rpm: int | None
    tpm: int | None
    budget: Budget | None
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    spend: Spend | None = None


class Spend(_Out):
    """What was spent (and is reserved by requests in flight) in the current period."""

    amount: float | None  # null: not known (the counters are unreachable)
    period_start: float
    period_end: float | None


class User(_Out):
    object: Literal["user"]
    id: str
    email: str
    name: str | None
    role: Role
    team_id: str | None
    disabled: bool
    has_password: bool
    created_at: float
    updated_at: float


class ApiKey(_Out):
    object: Literal["api_key"]
    id: str
    prefix: str  # the first characters of the key, to recognise it; never the key
    name: str | None
    user_id: str | None
    team_id: str | None
    models: list[str] | None
    regions: list[str] | None  # the key's own restriction (its team's applies too); null = unrestricted
    rpm: int | None
    tpm: int | None
    budget: Budget | None
    expires_at: float | None
    metadata: dict[str, Any]
    status: Literal["active", "revoked", "expired"]
    previous_key_expires_at: float | None  # after a rotation: until when the old secret works
    created_by: str
    created_at: float
    updated_at: float
    revoked_at: float | None
    spend: Spend | None = None


class NewApiKey(ApiKey):
    key: str  # the secret itself: shown in this answer only, never again


class AuditEntry(_Out):
    object: Literal["audit_entry"]
    id: int
    at: float
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    address: str | None
    request_id: str | None


class SigningKey(_Out):
    kid: str
    algorithm: str
    created_at: float
    retired_at: float | None
    active: bool
    published: bool


class Token(_Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int


class Me(_Out):
    object: Literal["principal"]
    key_id: str
    role: Role
    user_id: str | None
    team_id: str | None
    models: list[str] | None
    regions: list[str] | None  # where the caller's requests may be served (key ∩ team); null = anywhere


def list_of(item: type[BaseModel]) -> type[BaseModel]:
    """The schema of a page of `item`s."""
    return type(
        f"{item.__name__}List",
        (_Out,),
        {
            "__annotations__": {"object": Literal["list"], "data": list[item], "has_more": bool},  # type: ignore[valid-type]
        },
    )


Team.model_rebuild()
