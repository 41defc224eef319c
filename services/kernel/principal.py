"""Who is calling: what the authenticate stage returns and every later stage reads."""

from __future__ import annotations

import dataclasses
from typing import Literal

Role = Literal["admin", "team_admin", "member"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-key (or per-team) limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None  # currency units per budget period
    budget_period: str | None = None  # "hour", "day", "week" or "month" (UTC); None = lifetime


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `key_id` names the credential, never holds it."""

    key_id: str
    role: Role
    team_id: str | None = None
    user_id: str | None = None
    models: frozenset[str] | None = None  # public model names allowed; None = all
    limits: Limits = Limits()
    team_limits: Limits = Limits()
    # Data residency: the regions whose deployments may serve this caller (the key's
    # restriction narrowed by its team's); None = unrestricted. The router enforces it.
    regions: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ADMIN = Principal(key_id="master", role="admin")
"""The bootstrap administrator: whoever presents the master key."""
