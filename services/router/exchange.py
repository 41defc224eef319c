"""One model request on its way through the router: what each stage reads and adds.

The `Exchange` is created when a model request arrives and settled exactly once
when it ends, however it ends; every stage writes what it learned into it, and the
settle stage turns it into the usage event, the metrics and the access log line.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

from services.kernel.config import Deployment
from services.kernel.principal import Principal
from services.router.providers.base import Usage

Endpoint = Literal["chat.completions", "embeddings", "messages", "messages.count_tokens"]


@dataclasses.dataclass(slots=True)
class Attempt:
    """One try of one deployment."""

    deployment: Deployment
    started: float
    status: int = 0  # 0 while running
    error_code: str | None = None
    seconds: float = 0.0


@dataclasses.dataclass(slots=True)
class Route:
    """What the resolve stage decided: the public model and the deployments to try, in order."""

    model: str
    deployments: tuple[Deployment, ...]
    reason: str = ""  # why this model (aliases now; `auto` routing later), for x-route-reason


@dataclasses.dataclass(slots=True)
class Exchange:
    """The state of one model request. Stages fill it in; `settle` reads it once."""

    request_id: str
    endpoint: Endpoint
    started: float = dataclasses.field(default_factory=time.perf_counter)
    created_at: float = dataclasses.field(default_factory=time.time)
    headers: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # the few the stages read
    principal: Principal | None = None
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    requested_model: str = ""  # as the client sent it (bounded), for logs only
    stream: bool = False
    include_usage: bool = False
    route: Route | None = None
    reservation: Any = None  # the admit stage's handle, given back to it at settle
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    lease: Deployment | None = None  # the deployment answering, held until the call stage's `finish`
    # outcome
    status: int = 200
    error_code: str | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    first_byte_at: float | None = None
    cache: str | None = None  # "exact" / "semantic" on a hit
    region: str | None = None  # the router's region
    completion: dict[str, Any] | None = None  # the whole answer, for the cache (success only)
    response_headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    responded: bool = False  # the response has started: errors now go in-band, if at all
    settled: bool = False

    @property
    def deployment(self) -> Deployment | None:
        """The deployment that answered (or was tried last)."""
        return self.attempts[-1].deployment if self.attempts else None

    def attempt_log(self) -> list[dict[str, Any]]:
        """The tries, oldest first: deployment, status (0 = never ended), error code, milliseconds."""
        return [
            {
                "deployment": a.deployment.name,
                "status": a.status,
                "code": a.error_code,
                "ms": round(a.seconds * 1000, 3),
            }
            for a in self.attempts
        ]

    def fail(self, status: int, code: str | None) -> None:
        self.status, self.error_code = status, code
