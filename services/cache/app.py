"""The cache service: exact and semantic response cache (docs/cache.md).

    POST   /v1/cache/lookup                 {tenant, model, request[, semantic, max_age_s, region]}
    POST   /v1/cache/store                  {tenant, model, request, response[, ttl_s, semantic, region]}
    GET    /v1/cache/stats                  hit / miss counts (this replica and all), index size
    GET    /v1/cache/namespaces[?tenant=&region=]  namespaces with their entry and hit counts
    GET    /v1/cache/namespaces/{ns}        one namespace's entries, most recently used first
    DELETE /v1/cache/namespaces/{ns}        flush one namespace
    POST   /v1/cache/flush                  {tenant[, region]}, {region} or {all: true}: flush many

`region` (the region of the router that asks) is part of the namespace: an entry
stored with one is found only by lookups with the same one. Lookup and store
answers repeat it, so a router can tell a cache that applied it from one that did
not know the field.

Every endpoint needs the master key (the router holds it): whoever can call the
cache can read any tenant's answers. Distributed, entries live in Redis and every
replica keeps an in-process vector index in step through Redis; embedded, the same
code runs over the in-process stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.cache import sync
from services.cache.entries import Entries
from services.cache.index import VectorIndex
from services.cache.memory import MemoryEntries
from services.cache.metrics import CacheMetrics
from services.cache.semantic import Hit, SemanticCache, TextEncoder
from services.cache.store import RedisEntries
from services.cache.verifier import build as build_verifier
from services.kernel.bearer import require_master_key
from services.kernel.config import REGION_NAME
from services.kernel.errors import InvalidRequest, NotFound, PayloadTooLarge, ServiceUnavailable
from services.kernel.service import ServiceApp, build_app, json_response
from services.kernel.settings import Settings

log = logging.getLogger("gateway.cache")
MAX_NAME = 512
_NAMESPACE_CHARS = frozenset("0123456789abcdef")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body must be JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


def _name(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise InvalidRequest(f"'{field}' must be a string of 1 to {MAX_NAME} characters.", param=field)
    return value


def _region(value: Any, field: str = "region") -> str | None:
    """An optional region name (as in the configuration); None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(REGION_NAME, value):
        raise InvalidRequest(
            f"'{field}' must be a region name (lower-case letters, digits and dashes).", param=field
        )
    return value


def _placed(reply: dict[str, Any], region: str | None) -> dict[str, Any]:
    return reply if region is None else {**reply, "region": region}


def _chat_request(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("request")
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list) or not value["messages"]:
        raise InvalidRequest("'request' must be a chat completion request with messages.", param="request")
    return value


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, True)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be a boolean.", param=field)
    return value


def _seconds(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequest(f"'{field}' must be a positive number of seconds.", param=field)
    return float(value)


def _namespace(request: Request) -> str:
    ns = str(request.path_params["namespace"])
    if len(ns) != 32 or not set(ns) <= _NAMESPACE_CHARS:
        raise NotFound("No such cache namespace.")
    return ns


@contextlib.contextmanager
def storage() -> Iterator[None]:
    """Storage unreachable is an expected state (503, logged once per call, no traceback)."""
    try:
        yield
    except (OSError, aioredis.RedisError) as exc:
        log.warning("cache storage unreachable", extra={"error": type(exc).__name__})
        raise ServiceUnavailable("The cache's storage is unreachable.") from None


def create_app(
    settings: Settings,
    *,
    encoder: TextEncoder | None = None,
    entries: Entries | None = None,
    process_metrics: bool = True,
) -> ServiceApp:
    """The cache app. `encoder` is shared by the embedded gateway (and then not started or
    closed here); `entries` replaces the storage the settings imply (tests)."""
    config = settings.config.cache
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    body_limit = settings.config.server.max_body_bytes * 2 + config.max_entry_bytes
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            store = entries
            if store is None:
                if settings.redis_url:
                    redis = aioredis.from_url(
                        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
                    )
                    store = RedisEntries(redis, config.redis_prefix, sync_maxlen=config.sync_maxlen)
                    stack.push_async_callback(store.aclose)
                else:
                    store = MemoryEntries()
            model = encoder
            verifier = None
            if config.enabled and config.semantic:  # no model loaded for a cache that is off
                verifier = build_verifier(
                    config.verifier, threshold=config.threshold, floor=config.similarity_floor
                )
                if model is None:
                    from services.kernel.encoder import Encoder  # torch loads only when needed

                    own = Encoder()
                    await own.start()
                    stack.push_async_callback(own.aclose)
                    model = own
            cache = SemanticCache(store, VectorIndex(), model, verifier, config, metrics)
            state["cache"] = cache
            tasks = [
                asyncio.create_task(sync.follow(cache), name="cache-follow")
                if isinstance(store, RedisEntries)
                else None,
                asyncio.create_task(sync.sweep(cache, config.sweep_interval_s), name="cache-sweep"),
                asyncio.create_task(sync.publish_counts(cache), name="cache-counts"),
            ]
            if not isinstance(store, RedisEntries):
                cache.ready = True  # one process: the index is built as entries are stored

            async def stop() -> None:
                for task in tasks:
                    if task is not None:
                        await sync.stop(task)
                await cache.drain()
                await sync.flush_counts(cache)

            stack.push_async_callback(stop)
            yield

    def cache_of(request: Request) -> SemanticCache:
        require_master_key(request.scope, settings.master_key)
        cache: SemanticCache = state["cache"]
        return cache

    async def lookup(request: Request) -> Response:
        cache = cache_of(request)
        body = await read_json(request, body_limit)
        tenant, model, chat = _name(body, "tenant"), _name(body, "model"), _chat_request(body)
        semantic, max_age_s = _flag(body, "semantic"), _seconds(body, "max_age_s")
        region = _region(body.get("region"))
        with storage():
            result = await cache.lookup(
                tenant, model, chat, semantic=semantic, max_age_s=max_age_s, region=region
            )
        if isinstance(result, Hit):
            head = orjson.dumps(
                _placed(
                    {
                        "hit": True,
                        "kind": result.kind,
                        "similarity": round(result.similarity, 4),
                        "age_s": result.age_s,
                    },
                    region,
                )
            )
            # The stored answer is already JSON: spliced in, not parsed and re-encoded.
            return Response(
                head[:-1] + b',"response":' + result.response + b"}", media_type="application/json"
            )
        return json_response(_placed({"hit": False, "reason": result.reason}, region))

    async def store(request: Request) -> Response:
        cache = cache_of(request)
        body = await read_json(request, body_limit)
        response = body.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            raise InvalidRequest("'response' must be a chat.completion object.", param="response")
        tenant, model, chat = _name(body, "tenant"), _name(body, "model"), _chat_request(body)
        ttl_s, semantic = _seconds(body, "ttl_s"), _flag(body, "semantic")
        region = _region(body.get("region"))
        with storage():
            kind = await cache.store(
                tenant, model, chat, orjson.dumps(response), ttl_s=ttl_s, semantic=semantic, region=region
            )
        return json_response(_placed({"stored": kind in ("semantic", "exact_only"), "kind": kind}, region))

    async def stats(request: Request) -> Response:
        cache = cache_of(request)
        with storage():
            shared = await cache.entries.counts()
        hits = shared.get("lookups_exact", 0) + shared.get("lookups_semantic", 0)
        total = hits + shared.get("lookups_miss", 0)
        return json_response(
            {
                "all_replicas": shared,
                "hit_rate": round(hits / total, 4) if total else None,
                "replica": dict(cache.metrics.totals),
                "index": {
                    "ready": cache.ready,
                    "namespaces": len(cache.index.spaces),
                    "entries": len(cache.index),
                    "bytes": cache.index.nbytes(),
                },
                "model_ready": bool(cache.encoder is not None and cache.encoder.ready),
            }
        )

    def _info(info: Any) -> dict[str, Any]:
        return {
            "namespace": info.namespace,
            "tenant": info.tenant,
            "model": info.model,
            "region": info.region,
            "entries": info.entries,
            "hits": info.hits,
            "created": info.created,
        }

    async def namespaces(request: Request) -> Response:
        cache = cache_of(request)
        tenant = request.query_params.get("tenant")
        if tenant is not None and not 0 < len(tenant) <= MAX_NAME:
            raise InvalidRequest("'tenant' is too long.", param="tenant")
        region = _region(request.query_params.get("region"))
        with storage():
            rows = await cache.entries.namespaces(tenant, region)
        return json_response({"object": "list", "data": [_info(r) for r in rows]})

    async def namespace(request: Request) -> Response:
        cache = cache_of(request)
        ns = _namespace(request)
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit") from None
        if not 1 <= limit <= 1000:
            raise InvalidRequest("'limit' must be from 1 to 1000.", param="limit")
        with storage():
            rows = await cache.entries.entries(ns, limit)
        if not rows:
            raise NotFound("No such cache namespace (or it is empty).")
        data = [
            {
                "id": r.entry_id,
                "prompt": r.text[:200],
                "created": r.created,
                "expires": r.expires,
                "last_used": r.last_used,
                "hits": r.hits,
                "semantic": r.semantic,
                "bytes": r.bytes,
            }
            for r in rows
        ]
        return json_response({"object": "list", "namespace": ns, "data": data})

    async def flush_one(request: Request) -> Response:
        cache = cache_of(request)
        with storage():
            count = await cache.flush(_namespace(request))
        return json_response({"flushed": count})

    async def flush_many(request: Request) -> Response:
        cache = cache_of(request)
        body = await read_json(request, 64 * 1024)
        tenant = region = None
        if body.get("all") is not True:
            if "tenant" not in body and "region" not in body:
                raise InvalidRequest(
                    'Send {"tenant": ...}, {"region": ...}, both, or {"all": true}.', param="tenant"
                )
            if "tenant" in body:
                tenant = _name(body, "tenant")
            if "region" in body:
                region = _region(body["region"])
                if region is None:
                    raise InvalidRequest("'region' must be a region name.", param="region")
        count = 0
        with storage():
            infos = await cache.entries.namespaces(tenant, region)
            for info in infos:
                count += await cache.flush(info.namespace)
        return json_response({"flushed": count, "namespaces": len(infos)})

    async def ready() -> dict[str, str]:
        cache: SemanticCache | None = state.get("cache")
        if cache is None:
            return {"cache": "starting"}
        return {"storage": await cache.entries.check()}

    return build_app(
        "cache",
        routes=[
            Route("/v1/cache/lookup", lookup, methods=["POST"]),
            Route("/v1/cache/store", store, methods=["POST"]),
            Route("/v1/cache/stats", stats, methods=["GET"]),
            Route("/v1/cache/namespaces", namespaces, methods=["GET"]),
            Route("/v1/cache/namespaces/{namespace}", namespace, methods=["GET"]),
            Route("/v1/cache/namespaces/{namespace}", flush_one, methods=["DELETE"]),
            Route("/v1/cache/flush", flush_many, methods=["POST"]),
        ],
        lifespan=lifespan,
        ready=ready,
        registry=registry,
        process_metrics=process_metrics,
    )
