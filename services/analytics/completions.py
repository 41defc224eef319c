"""Stored chat completions: what `store: true` keeps, and OpenAI's endpoints that read it.

    GET    /v1/chat/completions?model=&metadata[k]=v&after=&limit=&order=
    GET    /v1/chat/completions/{id}
    POST   /v1/chat/completions/{id}            {"metadata": {...}}
    DELETE /v1/chat/completions/{id}
    GET    /v1/chat/completions/{id}/messages?after=&limit=&order=
    POST   /internal/completions                (the router: {"request": ..., "response": ...})

The router serves these paths to clients and forwards them here with the caller's
principal; a caller sees only what its scope allows (`access.py`), and a completion
outside it is "not found", so its existence does not leak.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from services.analytics.access import Scope
from services.analytics.store import CompletionQuery, StoredCompletion, UsageStore
from services.kernel.errors import InvalidRequest, NotFound, PayloadTooLarge
from services.kernel.principal import Principal
from services.kernel.service import json_response

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_LIST = 100
_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,256}$")
_METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")
# Request fields OpenAI returns with a stored completion.
_ECHOED = (
    "temperature",
    "top_p",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "service_tier",
)


def valid_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's rule: up to 16 string pairs, keys ≤ 64 and values ≤ 512 characters."""
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS:
        return None
    for k, v in value.items():
        if not (isinstance(k, str) and 0 < len(k) <= MAX_METADATA_KEY):
            return None
        if not (isinstance(v, str) and len(v) <= MAX_METADATA_VALUE):
            return None
    return dict(value)


def render(c: StoredCompletion) -> dict[str, Any]:
    """The stored completion as OpenAI returns it: the answer, its metadata, echoed parameters."""
    out = dict(c.response)
    out["metadata"] = c.metadata
    for name in _ECHOED:
        if name in c.request:
            out[name] = c.request[name]
    if "user" in c.request:
        out["input_user"] = c.request["user"]
    return out


def visible(c: StoredCompletion, scope: Scope) -> bool:
    if scope.team_id is not None and c.team_id != scope.team_id:
        return False
    return scope.key_id is None or c.key_id == scope.key_id


def _completion_id(request: Request) -> str:
    value = str(request.path_params["completion_id"])
    if not _ID.match(value):
        raise NotFound("No stored chat completion with that id.", param="completion_id")
    return value


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST}", param="limit")
    return int(raw)


def _order(request: Request) -> str:
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    return order


def _page(items: list[dict[str, Any]], has_more: bool) -> Response:
    return json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": has_more,
        }
    )


async def _visible(store: UsageStore, request: Request, scope: Scope) -> StoredCompletion:
    found = await store.get_completion(_completion_id(request))
    if found is None or not visible(found, scope):
        raise NotFound("No stored chat completion with that id.", param="completion_id")
    return found


async def list_completions(request: Request, store: UsageStore, scope: Scope) -> Response:
    metadata = []
    for name, value in request.query_params.multi_items():
        match = _METADATA_PARAM.match(name)
        if match is not None:
            metadata.append((match.group(1), value))
        elif name.startswith("metadata"):
            raise InvalidRequest("filter on metadata as metadata[key]=value", param="metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"at most {MAX_METADATA_PAIRS} metadata filters", param="metadata")
    after = request.query_params.get("after")
    if after is not None and not _ID.match(after):
        raise InvalidRequest("after must be the id of a stored completion", param="after")
    model = request.query_params.get("model")
    if model is not None and not 0 < len(model) <= 256:
        raise InvalidRequest("model must have 1 to 256 characters", param="model")
    query = CompletionQuery(
        key_id=scope.key_id,
        team_id=scope.team_id,
        model=model,
        metadata=tuple(metadata),
        after=after,
        limit=_limit(request, 20),
        order=_order(request),
    )
    items, has_more = await store.list_completions(query)
    return _page([render(c) for c in items], has_more)


async def get_completion(request: Request, store: UsageStore, scope: Scope) -> Response:
    return json_response(render(await _visible(store, request, scope)))


async def update_completion(request: Request, store: UsageStore, scope: Scope) -> Response:
    body = await _json(request, 64 * 1024)
    if not isinstance(body, dict) or set(body) - {"metadata"}:
        raise InvalidRequest('the body must be {"metadata": {...}}')
    metadata = {} if body.get("metadata") is None else valid_metadata(body["metadata"])
    if metadata is None:
        raise InvalidRequest(
            "metadata must be at most 16 string pairs (keys up to 64, values up to 512 characters)",
            param="metadata",
        )
    found = await _visible(store, request, scope)
    await store.update_completion(found.id, metadata)
    updated = await store.get_completion(found.id)
    if updated is None:  # deleted meanwhile
        raise NotFound("No stored chat completion with that id.", param="completion_id")
    return json_response(render(updated))


async def delete_completion(request: Request, store: UsageStore, scope: Scope) -> Response:
    found = await _visible(store, request, scope)
    await store.delete_completion(found.id)
    return json_response({"id": found.id, "object": "chat.completion.deleted", "deleted": True})


async def list_messages(request: Request, store: UsageStore, scope: Scope) -> Response:
    found = await _visible(store, request, scope)
    messages = found.request.get("messages")
    items = [
        {**m, "id": f"{found.id}-{i}"}
        for i, m in enumerate(messages if isinstance(messages, list) else [])
        if isinstance(m, dict)
    ]
    if _order(request) == "desc":
        items.reverse()
    after = request.query_params.get("after")
    if after is not None:
        ids = [m["id"] for m in items]
        if after not in ids:
            raise InvalidRequest("after must be the id of a message of this completion", param="after")
        items = items[ids.index(after) + 1 :]
    limit = _limit(request, 20)
    return _page(items[:limit], len(items) > limit)


async def _json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body must be JSON") from None


async def store_completion(request: Request, store: UsageStore, principal: Principal, limit: int) -> Response:
    """The router hands over a completion created with `store: true`."""
    body = await _json(request, limit)
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise InvalidRequest('the body must be {"request": {...}, "response": {...}}')
    response = body.get("response")
    if (
        not isinstance(response, dict)
        or not isinstance(response.get("id"), str)
        or not _ID.match(response["id"])
    ):
        raise InvalidRequest("response must be a chat.completion with an id", param="response")
    # When the request arrived at the router (sub-second, so lists keep their order).
    now = time.time()
    created = body.get("created_at")
    plausible = isinstance(created, int | float) and now - 86400 < created < now + 3600
    completion = StoredCompletion(
        id=response["id"],
        created_at=float(created) if plausible else now,  # type: ignore[arg-type]
        key_id=principal.key_id,
        team_id=principal.team_id,
        model=str(response.get("model") or body["request"].get("model") or "")[:256],
        metadata=valid_metadata(body["request"].get("metadata")) or {},
        request=body["request"],
        response=response,
    )
    stored = await store.put_completion(completion)
    return json_response({"id": completion.id, "stored": stored}, 201 if stored else 200)
