"""The dead-letter API: what the consumer could not store, listed and sent back.

    GET  /v1/usage/dead-letters?limit=100&after=<id>   the oldest first, paged by id
    POST /v1/usage/dead-letters/replay                 {"ids": [...]} | {"limit": n} | {}

A replay moves dead letters back into the usage stream, where the consumer takes
them again like any event: stored (idempotent on `event_id`) if their cause is
fixed, dead-lettered again if not. Both need the master key.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from services.analytics.consumer import ConsumerMetrics
from services.kernel.errors import InvalidRequest, PayloadTooLarge
from services.kernel.service import json_response
from services.kernel.stream import UsageStream

ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_LIST = 1000
MAX_REPLAY = 10_000
MAX_BODY_BYTES = 64 * 1024


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return value


async def list_dead_letters(request: Request, stream: UsageStream, metrics: ConsumerMetrics) -> Response:
    limit = _bounded_int(request.query_params.get("limit", "100"), "limit", 1, MAX_LIST)
    after = request.query_params.get("after")
    if after is not None and not ENTRY_ID.match(after):
        raise InvalidRequest("after must be a dead-letter id such as 1700000000000-0", param="after")
    entries = await stream.dead_letters(count=limit, after=after)
    total = await stream.dead_letter_count()
    metrics.dead_letters.set(total)
    data = [
        {
            "id": entry_id,
            "stage": letter.stage,
            "reason": letter.reason,
            "source": letter.source,
            "at": letter.at,
            "data": letter.data.decode(errors="replace"),
        }
        for entry_id, letter in entries
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "total": total,
            "next_after": entries[-1][0] if len(entries) == limit else None,
        }
    )


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body must be a JSON object") from None


async def replay_dead_letters(request: Request, stream: UsageStream, metrics: ConsumerMetrics) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    for key in body:
        if key not in ("ids", "limit"):
            raise InvalidRequest(f"unknown field {key!r}: use 'ids' or 'limit'", param=str(key)[:64])
    if "ids" in body and "limit" in body:
        raise InvalidRequest("give either 'ids' or 'limit', not both")
    ids = body.get("ids")
    if ids is not None and (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_LIST
        or not all(isinstance(i, str) and ENTRY_ID.match(i) for i in ids)
    ):
        raise InvalidRequest(f"ids must be a list of 1 to {MAX_LIST} dead-letter ids", param="ids")
    limit = _bounded_int(body.get("limit", MAX_LIST), "limit", 1, MAX_REPLAY)
    replayed = await stream.replay_dead_letters(ids, limit=limit)
    remaining = await stream.dead_letter_count()
    metrics.dead_letters.set(remaining)
    return json_response({"replayed": replayed, "remaining": remaining})
