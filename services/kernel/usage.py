"""The usage event: one per request, written by the router, stored by analytics."""

from __future__ import annotations

from typing import Any, TypedDict

import orjson


class UsageEvent(TypedDict):
    event_id: str  # idempotency key: unique per event, even when request ids repeat
    request_id: str
    key_id: str  # who called (never the key itself)
    team_id: str | None
    endpoint: str
    model: str
    provider: str
    upstream_model: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool  # counted by the gateway: the provider's own count never arrived
    latency_ms: float
    ttft_ms: float | None
    status: int
    error_code: str | None
    cached: bool
    stream: bool
    created_at: float  # unix seconds
    # Added after the first release; optional when decoding (see _DEFAULTS).
    cached_tokens: int  # prompt tokens the provider served from its own prompt cache
    reasoning_tokens: int
    cost: float | None  # from the deployment's configured price; None = price unknown
    saved_cost: float | None  # a cache hit: what the answer would have cost
    cache: str | None  # "exact" or "semantic" on a cache hit
    deployment: str  # "<public model>/<index>" that answered, or was tried last
    attempts: int  # tries (of one deployment or several)
    attempt_log: list[dict[str, Any]]  # each try: deployment, status, code, ms
    route_reason: str | None  # why this model (an alias, automatic routing)
    region: str | None  # the region of the router that served the request


_FIELDS: dict[str, tuple[type, ...]] = {
    "event_id": (str,),
    "request_id": (str,),
    "key_id": (str,),
    "endpoint": (str,),
    "model": (str,),
    "provider": (str,),
    "upstream_model": (str,),
    "prompt_tokens": (int,),
    "completion_tokens": (int,),
    "latency_ms": (int, float),
    "ttft_ms": (int, float, type(None)),
    "status": (int,),
    "error_code": (str, type(None)),
    "cached": (bool,),
    "stream": (bool,),
    "created_at": (int, float),
}


# Fields added after the first release: events without them (an old spool file) still decode.
_OPTIONAL: dict[str, tuple[object, tuple[type, ...]]] = {
    "team_id": (None, (str, type(None))),
    "estimated": (False, (bool,)),
    "cached_tokens": (0, (int,)),
    "reasoning_tokens": (0, (int,)),
    "cost": (None, (int, float, type(None))),
    "saved_cost": (None, (int, float, type(None))),
    "cache": (None, (str, type(None))),
    "deployment": ("", (str,)),
    "attempts": (0, (int,)),
    "attempt_log": ([], (list,)),
    "route_reason": (None, (str, type(None))),
    "region": (None, (str, type(None))),
}
_DEFAULTS = {name: default for name, (default, _) in _OPTIONAL.items()}
_FIELDS.update({name: types for name, (_, types) in _OPTIONAL.items()})


class BadEvent(ValueError):
    """A stream entry that is not a usage event."""


def decode_event(raw: bytes) -> UsageEvent:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent("not an object")
    for name, default in _DEFAULTS.items():
        data.setdefault(name, list(default) if isinstance(default, list) else default)
    for name, types in _FIELDS.items():
        if name not in data:
            raise BadEvent(f"missing field {name}")
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadEvent(f"field {name} has the wrong type")
    return data  # type: ignore[return-value]
