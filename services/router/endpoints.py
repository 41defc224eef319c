"""The OpenAI-compatible endpoints: chat completions (plain and streamed),
embeddings and models. Handlers are thin: check, route, call the adapter, record."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.kernel.bearer import require_master_key
from services.kernel.config import Deployment
from services.kernel.errors import GatewayError, PayloadTooLarge
from services.kernel.ids import new_id
from services.kernel.service import json_response
from services.kernel.usage import UsageEvent
from services.router.metrics import RouterMetrics
from services.router.providers import PROVIDERS
from services.router.providers.base import ChatStream, Completion, Usage
from services.router.routing import attempt_order, deployments_for
from services.router.upstream import Upstream
from services.router.usage import UsagePublisher
from services.router.validation import check_chat, check_embeddings, parse_object

log = logging.getLogger("gateway.router")

_ACCESS_FIELDS = (
    "request_id",
    "key_id",
    "endpoint",
    "model",
    "provider",
    "status",
    "error_code",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "stream",
)
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before reading them where possible."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _model_name(body: dict[str, Any]) -> str:
    """The requested model for the record, even when the request is invalid."""
    model = body.get("model")
    return model[:256] if isinstance(model, str) else ""


@dataclasses.dataclass(slots=True)
class Record:
    """What one request did, turned into a usage event and metrics at the end."""

    request_id: str
    key_id: str
    endpoint: str
    started: float
    model: str = ""
    provider: str = ""
    upstream_model: str = ""
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    usage: Usage = dataclasses.field(default_factory=Usage)
    first_chunk_at: float | None = None
    relayed: bool = False  # a stream under way: recorded when it ends


class Endpoints:
    """Request handlers with their dependencies passed in at start."""

    def __init__(
        self,
        *,
        models: dict[str, tuple[Deployment, ...]],
        master_key: str,
        max_body_bytes: int,
        http: Upstream,
        publisher: UsagePublisher,
        metrics: RouterMetrics,
        created: int,
        access_log: bool = False,
    ) -> None:
        self.models = models
        self.master_key = master_key
        self.max_body_bytes = max_body_bytes
        self.http = http
        self.publisher = publisher
        self.metrics = metrics
        self.created = created
        self.access_log = access_log
        self.rng = random.Random()

    # -- recording ---------------------------------------------------------

    def finish(self, rec: Record) -> None:
        now = time.perf_counter()
        latency = now - rec.started
        ttft = None if rec.first_chunk_at is None else rec.first_chunk_at - rec.started
        event: UsageEvent = {
            "event_id": new_id(),
            "request_id": rec.request_id,
            "key_id": rec.key_id,
            "endpoint": rec.endpoint,
            "model": rec.model,
            "provider": rec.provider,
            "upstream_model": rec.upstream_model,
            "prompt_tokens": rec.usage.prompt_tokens,
            "completion_tokens": rec.usage.completion_tokens,
            "latency_ms": round(latency * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "status": rec.status,
            "error_code": rec.error_code,
            "cached": False,
            "stream": rec.stream,
            "created_at": time.time(),
        }
        self.publisher.emit(event)
        if self.access_log:
            log.info(
                "request",
                extra={k: event[k] for k in _ACCESS_FIELDS},  # type: ignore[literal-required]
            )
        self.metrics.record(rec.endpoint, rec.model, rec.provider, rec.status, latency, ttft, rec.usage)

    def _headers(self, dep: Deployment) -> dict[str, str]:
        return {"x-gateway-model": dep.public_model, "x-gateway-provider": dep.provider}

    async def _attempts(
        self,
        rec: Record,
        model: str,
        call: Callable[[Deployment], Awaitable[Any]],
    ) -> tuple[Deployment, Any]:
        """Try the model's deployments in routing order; fall over on retryable failures."""
        last: GatewayError | None = None
        for dep in attempt_order(deployments_for(self.models, model), self.rng):
            rec.provider, rec.upstream_model = dep.provider, dep.model
            try:
                return dep, await call(dep)
            except GatewayError as exc:
                if exc.status >= 500 or exc.status == 429:
                    self.metrics.upstream_errors.labels(dep.provider, exc.code or "").inc()
                    log.warning(
                        "upstream failure",
                        extra={
                            "request_id": rec.request_id,
                            "model": dep.public_model,
                            "provider": dep.provider,
                            "status": exc.status,
                            "code": exc.code,
                            "detail": exc.message,
                            "retryable": exc.retryable,
                        },
                    )
                if not exc.retryable:
                    raise
                last = exc
        assert last is not None
        raise last

    def _start(self, request: Request, endpoint: str) -> Record:
        """Authenticate; from here on every outcome is recorded as a usage event."""
        started = time.perf_counter()
        key_id = require_master_key(request.scope, self.master_key)
        return Record(request.scope["state"]["request_id"], key_id, endpoint, started)

    @contextlib.contextmanager
    def _recorded(self, rec: Record) -> Iterator[None]:
        """Record the outcome of the block, whatever it is; a stream records itself at its end."""
        try:
            yield
        except GatewayError as exc:
            rec.status, rec.error_code = exc.status, exc.code
            self.finish(rec)
            raise
        except Exception:
            rec.status, rec.error_code = 500, "internal_error"
            self.finish(rec)
            raise
        if not rec.relayed:
            self.finish(rec)

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_object(await read_body(request, self.max_body_bytes))

    # -- handlers ----------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        rec = self._start(request, "chat.completions")
        with self._recorded(rec):
            body = await self._body(request)
            rec.model = _model_name(body)
            model, stream, include_usage = check_chat(body)
            rec.stream = stream
            if stream:
                return await self._chat_stream(rec, model, body, include_usage)

            async def call(dep: Deployment) -> Completion:
                return await PROVIDERS[dep.provider].chat(dep, body, http=self.http)

            dep, completion = await self._attempts(rec, model, call)
            rec.usage = completion.usage
            return Response(completion.body, media_type="application/json", headers=self._headers(dep))

    async def _chat_stream(
        self, rec: Record, model: str, body: dict[str, Any], include_usage: bool
    ) -> Response:
        async def call(dep: Deployment) -> ChatStream:
            return await PROVIDERS[dep.provider].chat_stream(
                dep, body, http=self.http, include_usage=include_usage
            )

        dep, upstream = await self._attempts(rec, model, call)
        rec.relayed = True

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.frames():
                    yield chunk
                if upstream.error is not None:
                    rec.status, rec.error_code = upstream.error.status, upstream.error.code
            except BaseException:
                rec.status, rec.error_code = 499, "client_closed_request"
                raise
            finally:
                rec.usage, rec.first_chunk_at = upstream.usage, upstream.first_chunk_at
                self.finish(rec)
                await upstream.aclose()

        return StreamingResponse(
            relay(), media_type="text/event-stream", headers={**SSE_HEADERS, **self._headers(dep)}
        )

    async def embeddings(self, request: Request) -> Response:
        rec = self._start(request, "embeddings")
        with self._recorded(rec):
            body = await self._body(request)
            rec.model = _model_name(body)
            model = check_embeddings(body)

            async def call(dep: Deployment) -> Completion:
                return await PROVIDERS[dep.provider].embeddings(dep, body, http=self.http)

            dep, completion = await self._attempts(rec, model, call)
            rec.usage = completion.usage
            return Response(completion.body, media_type="application/json", headers=self._headers(dep))

    def _model_card(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": self.models[name][0].provider,
        }

    async def list_models(self, request: Request) -> Response:
        require_master_key(request.scope, self.master_key)
        return json_response({"object": "list", "data": [self._model_card(n) for n in self.models]})

    async def get_model(self, request: Request) -> Response:
        require_master_key(request.scope, self.master_key)
        name = request.path_params["model"]
        deployments_for(self.models, name)
        return json_response(self._model_card(name))
