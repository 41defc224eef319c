"""Stored chat completions at the router: `store: true` handed to analytics, and OpenAI's
read endpoints served from it.

    GET    /v1/chat/completions                  list (model, metadata[k], after, limit, order)
    GET    /v1/chat/completions/{id}             one
    POST   /v1/chat/completions/{id}             update its metadata
    DELETE /v1/chat/completions/{id}
    GET    /v1/chat/completions/{id}/messages

The router authenticates the caller, then asks analytics through its client, which
cuts the answer to the caller's scope. Handing over a completion is a settle
follow-up (off the request path, bounded, counted when it fails); analytics being
down or slow never fails a model request, and the read endpoints answer 503.
"""

from __future__ import annotations

import logging
import re

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from services.analytics.client import AnalyticsClient, Answer
from services.kernel.errors import GatewayError, MethodNotAllowed, NotFound, ServiceUnavailable
from services.router.exchange import Exchange
from services.router.metrics import RouterMetrics
from services.router.pipeline import read_body, send_json
from services.router.stages import Authenticator

log = logging.getLogger("gateway.router.stored")

PREFIXES = ("/v1/chat/completions/", "/chat/completions/")
LISTS = ("/v1/chat/completions", "/chat/completions")
_ID = re.compile(r"^(?=.*[A-Za-z0-9])[A-Za-z0-9._:\-]{1,256}$")
MAX_UPDATE_BYTES = 64 * 1024


def is_stored_path(method: str, path: str) -> bool:
    """A path this module answers (the POST of a new completion is the pipeline's)."""
    return (method == "GET" and path in LISTS) or path.startswith(PREFIXES)


class StoredCompletions:
    def __init__(
        self,
        client: AnalyticsClient | None,
        authenticator: Authenticator,
        metrics: RouterMetrics,
        *,
        key: str,
        enabled: bool,
        max_bytes: int,
    ) -> None:
        self.client = client
        self.authenticator = authenticator
        self.metrics = metrics
        self.key = key
        self.enabled = enabled and client is not None
        self.max_bytes = max_bytes

    def wanted(self, ex: Exchange) -> bool:
        """Whether the settled exchange is a completion to keep."""
        return (
            self.enabled
            and ex.endpoint == "chat.completions"
            and ex.status == 200
            and ex.completion is not None
            and ex.principal is not None
            and ex.body.get("store") is True
        )

    async def store(self, ex: Exchange) -> None:
        """Hand the request and its answer to analytics (a settle follow-up)."""
        assert self.client is not None
        assert ex.principal is not None
        body = orjson.dumps({"request": ex.body, "response": ex.completion, "created_at": ex.created_at})
        if len(body) > self.max_bytes:
            self.metrics.stage_outcome("store_completion", "skipped")
            log.warning(
                "completion too large to store", extra={"request_id": ex.request_id, "bytes": len(body)}
            )
            return
        try:
            await self.client.store_completion(ex.principal, body, key=self.key)
        except httpx.TimeoutException:
            self.metrics.stage_outcome("store_completion", "timed_out")
            log.warning("completion not stored: analytics timed out", extra={"request_id": ex.request_id})
        except httpx.HTTPError as exc:
            self.metrics.stage_outcome("store_completion", "failed")
            log.warning(
                "completion not stored", extra={"request_id": ex.request_id, "error": type(exc).__name__}
            )

    async def serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        method, path = str(scope["method"]), str(scope["path"])
        principal = await self.authenticator.authenticate(dict(scope["headers"]))
        if self.client is None:
            raise ServiceUnavailable(
                "Stored completions need the analytics service, which is not configured."
            )
        client = self.client
        query = bytes(scope.get("query_string", b""))
        try:
            if path in LISTS:
                answer = await client.list_completions(principal, query, key=self.key)
            else:
                rest = path.split("/chat/completions/", 1)[1]
                completion_id, _, tail = rest.partition("/")
                if not _ID.match(completion_id) or tail not in ("", "messages"):
                    raise NotFound(f"no route for {method} {path[:200]}")
                if tail == "messages":
                    if method != "GET":
                        raise MethodNotAllowed(
                            f"method {method} is not allowed here", headers={"allow": "GET"}
                        )
                    answer = await client.completion_messages(principal, completion_id, query, key=self.key)
                elif method == "GET":
                    answer = await client.get_completion(principal, completion_id, key=self.key)
                elif method == "POST":
                    body = await read_body(receive, dict(scope["headers"]), MAX_UPDATE_BYTES)
                    answer = await client.update_completion(principal, completion_id, body, key=self.key)
                elif method == "DELETE":
                    answer = await client.delete_completion(principal, completion_id, key=self.key)
                else:
                    raise MethodNotAllowed(
                        f"method {method} is not allowed here", headers={"allow": "GET, POST, DELETE"}
                    )
        except httpx.TimeoutException:
            self.metrics.stage_outcome("completions_api", "timed_out")
            raise ServiceUnavailable("The analytics service did not answer in time; retry.") from None
        except httpx.HTTPError:
            self.metrics.stage_outcome("completions_api", "failed")
            raise ServiceUnavailable("The analytics service is unavailable; retry.") from None
        await self._relay(answer, send, request_id)

    @staticmethod
    async def _relay(answer: Answer, send: Send, request_id: str) -> None:
        if not answer.content_type.startswith("application/json"):
            raise GatewayError("The analytics service answered with something unexpected.")
        await send_json(send, answer.status, answer.body, [], request_id)
