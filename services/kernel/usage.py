"""The usage event: one per request, written by the router, stored by analytics."""

from __future__ import annotations

from typing import TypedDict

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
_DEFAULTS: dict[str, object] = {"team_id": None, "estimated": False}
_FIELDS["team_id"] = (str, type(None))
_FIELDS["estimated"] = (bool,)


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
        data.setdefault(name, default)
    for name, types in _FIELDS.items():
        if name not in data:
            raise BadEvent(f"missing field {name}")
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadEvent(f"field {name} has the wrong type")
    return data  # type: ignore[return-value]
