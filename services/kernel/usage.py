"""The usage event: one per request, written by the router, stored by analytics.

`decode_event` is where analytics decides what it will try to store: the shape, and
the ranges every store can hold (PostgreSQL's `integer` and `smallint`, text without
NUL, a timestamp any store and Python agree on). An event outside them would make
its whole batch fail in the store, so it is refused here, by name of the field.

Decoding is table-driven (`FIELDS`): a field added later is one line with a
`default`, so events written before it (old spool files) still decode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
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
    # Added after the first release; optional when decoding (see FIELDS).
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


class BadEvent(ValueError):
    """A stream entry that is not a usage event."""


MAX_EVENT_BYTES = 64 * 1024  # one event's JSON; real ones are well under 1 KiB
INT32_MAX = 2**31 - 1  # PostgreSQL `integer`
EARLIEST = 946_684_800.0  # 2000-01-01: before it, a clock was not set
LATEST = 4_102_444_800.0  # 2100-01-01: fixed, so a decode gives the same answer on replay

Check = Callable[[Any], str | None]
"""Returns why the value is refused, or None when it is acceptable."""

_REQUIRED = object()
_NUMBER = (int, float)  # a tuple: `int | float` in isinstance builds a union on every call


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """How one field is checked; with a `default`, an event may lack it (fields added later)."""

    check: Check
    default: Any = _REQUIRED


class text:  # named like the function it replaced: `text(256, optional=True)`
    """A string of `min_len` to `max_len` characters without NUL (or null, if `optional`)."""

    __slots__ = ("max_len", "min_len", "optional")

    def __init__(self, max_len: int, *, min_len: int = 0, optional: bool = False) -> None:
        self.max_len, self.min_len, self.optional = max_len, min_len, optional

    def __call__(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str):
            return "must be a string" + (" or null" if self.optional else "")
        if not self.min_len <= len(value) <= self.max_len:
            return f"must have {self.min_len} to {self.max_len} characters"
        if "\x00" in value:
            return "must not contain NUL"
        return None


def count(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    if not 0 <= value <= INT32_MAX:
        return f"must be from 0 to {INT32_MAX}"
    return None


class non_negative:  # named like a function too: `non_negative(optional=True)`
    """A finite number from 0 (or null, if `optional`)."""

    __slots__ = ("optional",)

    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def __call__(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, _NUMBER) or isinstance(value, bool):
            return "must be a number" + (" or null" if self.optional else "")
        if not math.isfinite(value) or value < 0:
            return "must be a finite, non-negative number"
        return None


def status(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    if not 100 <= value <= 599:
        return "must be an HTTP status (100-599)"
    return None


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean"


MAX_ATTEMPTS = 64


def attempt_log(value: Any) -> str | None:
    """The tries of a request: [{deployment, status, code, ms}, ...]."""
    if not isinstance(value, list) or len(value) > MAX_ATTEMPTS:
        return f"must be a list of at most {MAX_ATTEMPTS} tries"
    for item in value:
        if not isinstance(item, dict) or set(item) != {"deployment", "status", "code", "ms"}:
            return "must hold objects with deployment, status, code and ms"
        if _deployment_name(item["deployment"]) or _error_code(item["code"]):
            return "must hold short strings for deployment and code"
        if not isinstance(item["status"], int) or not 0 <= item["status"] <= 599 or _milliseconds(item["ms"]):
            return "must hold a status (0-599) and non-negative milliseconds"
    return None


_deployment_name, _error_code, _milliseconds = text(1024), text(256, optional=True), non_negative()


def unix_time(value: Any) -> str | None:
    if not isinstance(value, _NUMBER) or isinstance(value, bool):
        return "must be a number (unix seconds)"
    if not EARLIEST <= value < LATEST:
        return "must be a time from 2000 to 2100 (unix seconds)"
    return None


class _Fields(dict[str, Field]):
    """The field table; changing it (a test adding a field) rebuilds `decode_event`'s plan."""

    def __setitem__(self, name: str, spec: Field) -> None:
        super().__setitem__(name, spec)
        _plans.clear()

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        _plans.clear()


FIELDS: dict[str, Field] = _Fields(
    {
        "event_id": Field(text(256, min_len=1)),
        "request_id": Field(text(256, min_len=1)),
        "key_id": Field(text(256, min_len=1)),
        "endpoint": Field(text(256, min_len=1)),
        "model": Field(text(1024)),  # empty when the request failed before naming a model
        "provider": Field(text(256)),
        "upstream_model": Field(text(1024)),
        "prompt_tokens": Field(count),
        "completion_tokens": Field(count),
        "latency_ms": Field(non_negative()),
        "ttft_ms": Field(non_negative(optional=True)),
        "status": Field(status),
        "error_code": Field(text(256, optional=True)),
        "cached": Field(flag),
        "stream": Field(flag),
        "created_at": Field(unix_time),
        # Added after the first release: events without them (an old spool file) still decode.
        "team_id": Field(text(256, optional=True), default=None),
        "estimated": Field(flag, default=False),
        "cached_tokens": Field(count, default=0),
        "reasoning_tokens": Field(count, default=0),
        "cost": Field(non_negative(optional=True), default=None),
        "saved_cost": Field(non_negative(optional=True), default=None),
        "cache": Field(text(16, optional=True), default=None),
        "deployment": Field(text(1024), default=""),
        "attempts": Field(count, default=0),
        "attempt_log": Field(attempt_log, default=[]),
        "route_reason": Field(text(256, optional=True), default=None),
        "region": Field(text(64, optional=True), default=None),
    }
)


# Each field's check as a test decode_event runs inline: (name, default, kind, low, high,
# null allowed, check). A value the test accepts is one the check accepts; any other value
# goes to the check, which refuses it with its reason (or accepts it: the check decides).
_STR, _INT, _NUM, _BOOL, _CALL = range(5)


def _plan(name: str, spec: Field) -> tuple[str, Any, int, float, float, bool, Check]:
    check = spec.check
    if isinstance(check, text):
        return name, spec.default, _STR, check.min_len, check.max_len, check.optional, check
    if isinstance(check, non_negative):
        return name, spec.default, _NUM, 0, math.inf, check.optional, check
    if check is count:
        return name, spec.default, _INT, 0, INT32_MAX, False, check
    if check is status:
        return name, spec.default, _INT, 100, 599, False, check
    if check is unix_time:
        return name, spec.default, _NUM, EARLIEST, LATEST, False, check
    if check is flag:
        return name, spec.default, _BOOL, 0, 0, False, check
    return name, spec.default, _CALL, 0, 0, False, check


_plans: list[tuple[tuple[str, Any, int, float, float, bool, Check], ...]] = []


def _current_plan() -> tuple[tuple[str, Any, int, float, float, bool, Check], ...]:
    if not _plans:
        _plans.append(tuple(_plan(name, spec) for name, spec in FIELDS.items()))
    return _plans[0]


def decode_event(raw: bytes) -> UsageEvent:
    """The event in one line of a stream entry, with exactly the fields of `FIELDS`;
    raises BadEvent naming the first field that is missing or out of range."""
    if len(raw) > MAX_EVENT_BYTES:
        raise BadEvent(f"event is {len(raw)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent("not an object")
    # As the router writes events: every field and no other, so `data` is the event (no
    # copy, no default to fill in). This runs for every event analytics stores.
    complete = data.keys() == FIELDS.keys()
    event: dict[str, Any] = data if complete else {}
    get = data.get
    for name, default, kind, low, high, nullable, check in _plans[0] if _plans else _current_plan():
        value = get(name, _REQUIRED)
        if value is _REQUIRED:
            if default is _REQUIRED:
                raise BadEvent(f"missing field {name}")
            value = default
        t = type(value)
        if kind == _STR:
            ok = (t is str and low <= len(value) <= high and "\x00" not in value) or (
                value is None and nullable
            )
        elif kind == _INT:
            ok = t is int and low <= value <= high
        elif kind == _NUM:
            ok = ((t is float or t is int) and low <= value < high) or (value is None and nullable)
        else:
            ok = kind == _BOOL and t is bool
        if not ok:
            reason = check(value)
            if reason is not None:
                raise BadEvent(f"field {name} {reason}")
        if not complete:
            event[name] = value
    return event  # type: ignore[return-value]
