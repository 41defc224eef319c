"""The router's ASGI entry: model endpoints served directly, everything else by Starlette.

The model endpoints are the hot path, so they skip Starlette's routing and
middleware stack (measured in bench/): a dictionary lookup on (method, path), the
request id, then the pipeline. Health, readiness, metrics, 404 and 405 stay
Starlette routes. The pipeline comes from the lifespan's typed state.
"""

from __future__ import annotations

import re
import time
from typing import Any, TypedDict, cast

import orjson
from starlette.types import Receive, Scope, Send

from services.kernel.errors import Forbidden, GatewayError, ServiceUnavailable
from services.kernel.ids import new_id
from services.kernel.service import ServiceApp
from services.router.pipeline import Pipeline, send_error, send_json
from services.router.routing import not_found
from services.router.stored import StoredCompletions, is_stored_path

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_MODELS = ("/v1/models", "/models")
_MODEL_PREFIXES = ("/v1/models/", "/models/")
_HEALTH = ("/v1/deployments/health", "/deployments/health")


class RouterState(TypedDict):
    """What the router's lifespan yields; every request's `scope["state"]` starts as a copy."""

    pipeline: Pipeline
    models: ModelCards
    completions: StoredCompletions


class ModelCards:
    """`GET /v1/models` and `GET /v1/models/{id}`: the models that have a usable deployment."""

    def __init__(self, pipeline: Pipeline, models: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.owners = models  # public name or alias → provider of its first deployment
        self.created = int(time.time())

    def card(self, name: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": self.owners[name]}

    async def serve(self, scope: Scope, send: Send, request_id: str) -> None:
        principal = await self.pipeline.authenticator.authenticate(dict(scope["headers"]))
        path = str(scope["path"])
        body: dict[str, object]
        if path in _MODELS:
            names = [n for n in self.owners if principal.may_use(n)]
            body = {"object": "list", "data": [self.card(n) for n in names]}
        else:
            name = path.split("/models/", 1)[1]
            if name not in self.owners or not principal.may_use(name):
                raise not_found(name)
            body = self.card(name)
        await send_json(send, 200, orjson.dumps(body), [], request_id)


async def deployments_health(pipeline: Pipeline, scope: Scope, send: Send, request_id: str) -> None:
    """`GET /v1/deployments/health`: every deployment's circuit, load and capacity; admins only."""
    principal = await pipeline.authenticator.authenticate(dict(scope["headers"]))
    if principal.role != "admin":
        raise Forbidden("Only an administrator may read the deployments' health.", code="admin_only")
    body = {"object": "list", "data": pipeline.dispatcher.health()}
    await send_json(send, 200, orjson.dumps(body), [], request_id)


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return new_id()


class RouterApp(ServiceApp):
    """A `ServiceApp` that answers the model endpoints before Starlette sees them."""

    _POST = {
        "/v1/chat/completions": "chat.completions",
        "/chat/completions": "chat.completions",
        "/v1/embeddings": "embeddings",
        "/embeddings": "embeddings",
        "/v1/messages": "messages",
        "/messages": "messages",
        "/v1/messages/count_tokens": "messages.count_tokens",
        "/messages/count_tokens": "messages.count_tokens",
    }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            endpoint = self._POST.get(path) if method == "POST" else None
            state = scope.get("state")
            if endpoint is not None and state and "pipeline" in state:  # a model call, served
                pipeline: Pipeline = state["pipeline"]
                await pipeline.handle(endpoint, scope, receive, send, request_id_of(scope))  # type: ignore[arg-type]
                return
            if endpoint is not None or (
                method == "GET" and (path in _MODELS or path in _HEALTH or path.startswith(_MODEL_PREFIXES))
            ):
                await self._serve(endpoint, scope, receive, send)
                return
            if is_stored_path(method, path):
                await self._serve_stored(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_stored(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The stored-completion endpoints (`stored.py`), answered by analytics."""
        request_id = request_id_of(scope)
        state = cast(dict[str, Any], scope.get("state") or {})
        if "completions" not in state:
            await send_error(send, ServiceUnavailable("The gateway is starting."), request_id, str)
            return
        typed = cast(RouterState, state)
        try:
            await typed["completions"].serve(scope, receive, send, request_id)
        except GatewayError as exc:
            await send_error(send, exc, request_id, typed["pipeline"].redact)

    async def _serve(self, endpoint: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        state = cast(dict[str, Any], scope.get("state") or {})
        if "pipeline" not in state:
            await send_error(send, ServiceUnavailable("The gateway is starting."), request_id, str)
            return
        typed = cast(RouterState, state)
        pipeline = typed["pipeline"]
        if endpoint is not None:
            await pipeline.handle(endpoint, scope, receive, send, request_id)  # type: ignore[arg-type]
            return
        try:
            if scope["path"] in _HEALTH:
                await deployments_health(pipeline, scope, send, request_id)
            else:
                await typed["models"].serve(scope, send, request_id)
        except GatewayError as exc:
            await send_error(send, exc, request_id, pipeline.redact)
