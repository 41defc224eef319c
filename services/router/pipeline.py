"""The path of a model request, stage by stage.

    authenticate → read and validate → resolve → admit → cache lookup
                 → call the provider → respond (plain, or relayed stream) → settle

Authentication comes first, before the body is read, so an unauthenticated client
never makes the gateway read or parse a body; resolve comes before admit, so the
reservation is priced at the model that will answer. `settle` runs exactly once,
in a `finally`, whatever happened: an error, a client gone before or after the
first byte, an upstream failure, cancellation or shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from services.kernel.errors import ClientClosed, GatewayError, PayloadTooLarge, ShuttingDown
from services.kernel.redact import Redactor
from services.router.dialect import OPENAI, Dialect
from services.router.dispatch import Dispatcher, prompt_estimate
from services.router.exchange import Endpoint, Exchange
from services.router.metrics import RouterMetrics
from services.router.providers.base import Usage
from services.router.providers.openai import usage_of
from services.router.relay import SSE_HEADERS, ClientWatch, Relay
from services.router.settle import Settler
from services.router.stages import Admission, Authenticator, Resolver, ResponseCache
from services.router.validation import check_chat, check_embeddings, parse_object

log = logging.getLogger("gateway.router")
JSON = (b"content-type", b"application/json")


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before reading them where possible."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosed("the client closed the connection while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], request_id: str
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                JSON,
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    exc: GatewayError,
    request_id: str,
    redact: Callable[[str], str],
    dialect: Dialect = OPENAI,
    ex: Exchange | None = None,
) -> None:
    body = dialect.error(exc, redact(exc.message))
    headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in exc.headers.items()]
    if ex is not None and ex.attempts:
        headers.append((b"x-gateway-attempts", attempts_header(ex).encode()))
    await send_json(send, exc.status, body, headers, request_id)


def attempts_header(ex: Exchange) -> str:
    """`<deployment>;status=<s>;ms=<t>` per try, oldest first, comma-separated."""
    return ", ".join(f"{a.deployment.name};status={a.status};ms={a.seconds * 1000:.1f}" for a in ex.attempts)


class Pipeline:
    """Runs the stages of a model request; every stage is passed in."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        resolver: Resolver,
        admission: Admission,
        cache: ResponseCache,
        dispatcher: Dispatcher,
        relay: Relay,
        settler: Settler,
        metrics: RouterMetrics,
        redact: Redactor,
        max_body_bytes: int,
        cache_enabled: bool = False,
        dialects: Mapping[str, Dialect] | None = None,
        region: str | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.resolver = resolver
        self.admission = admission
        self.cache = cache
        self.dispatcher = dispatcher
        self.relay = relay
        self.settler = settler
        self.metrics = metrics
        self.redact = redact
        self.max_body_bytes = max_body_bytes
        self.cache_enabled = cache_enabled
        self.dialects = dialects or {}
        self.region = region  # this router's: on every exchange, for the cache and the usage event

    async def handle(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        dialect = self.dialects.get(endpoint, OPENAI)
        ex = Exchange(
            request_id, endpoint, headers=dialect.headers(dict(scope["headers"])), region=self.region
        )
        self.metrics.stats.in_flight += 1
        try:
            await self._run(ex, receive, send, dialect)
        except GatewayError as exc:
            ex.fail(exc.status, exc.code)
            if not ex.responded and exc.status != 499:
                await send_error(send, exc, request_id, self.redact, dialect, ex)
        except asyncio.CancelledError:
            # The server stopped waiting for this request (shutdown past its timeout).
            # It ends here, recorded and, where possible, answered; nothing is left to cancel.
            err: GatewayError = ShuttingDown("The gateway is shutting down; retry the request.")
            ex.fail(err.status, err.code)
            if not ex.responded:
                await send_error(send, err, request_id, self.redact, dialect, ex)
        except Exception:
            log.exception("unexpected error in the request path", extra={"request_id": request_id})
            err = GatewayError("The gateway failed to handle the request; it has been logged.")
            ex.fail(err.status, err.code)
            if not ex.responded:
                await send_error(send, err, request_id, self.redact, dialect, ex)
        finally:
            self.metrics.stats.in_flight -= 1
            self.dispatcher.finish(ex)
            self.settler.settle(ex)

    async def _run(self, ex: Exchange, receive: Receive, send: Send, dialect: Dialect) -> None:
        ex.principal = await self.authenticator.authenticate(ex.headers)
        body = dialect.request(parse_object(await read_body(receive, ex.headers, self.max_body_bytes)))
        model = body.get("model")
        ex.requested_model = model[:256] if isinstance(model, str) else ""
        if ex.endpoint == "embeddings":
            name = check_embeddings(body)
        else:
            name, ex.stream, ex.include_usage = check_chat(body)
        ex.body = body
        ex.route = await self.resolver.resolve(ex, name)
        if ex.endpoint == "messages.count_tokens":
            # Counting is not a model call: nothing to admit, no tokens spent.
            count = orjson.dumps({"input_tokens": prompt_estimate(ex)})
            ex.responded = True
            await send_json(send, 200, count, self._headers(ex), ex.request_id)
            return
        ex.reservation = await self.admission.admit(ex)
        if ex.endpoint == "embeddings":
            _, completion = await self.dispatcher.embeddings(ex)
            ex.usage = completion.usage
            await send_json(send, 200, completion.body, self._headers(ex), ex.request_id)
            ex.responded = True
            return
        if self.cache_enabled and await self._answer_from_cache(ex, send, dialect):
            return
        if ex.stream:
            with ClientWatch(receive) as watch:
                try:
                    opened = await self.dispatcher.chat_stream(ex)
                except asyncio.CancelledError:
                    if watch.gone:  # gone before the first byte: the upstream call is closed
                        # The provider has read the prompt by now; the answer was never relayed.
                        ex.usage = Usage(prompt_estimate(ex), 0, estimated=True)
                        raise watch.closed() from None
                    raise
                headers = [(b"x-request-id", ex.request_id.encode()), *self._headers(ex)]
                await self.relay.run(ex, opened, headers, watch, send, dialect.stream(ex.include_usage))
            return
        _, completion = await self.dispatcher.chat(ex)
        ex.usage, ex.completion = completion.usage, completion.data
        ex.responded = True
        await send_json(send, 200, dialect.answer(completion), self._headers(ex), ex.request_id)

    async def _answer_from_cache(self, ex: Exchange, send: Send, dialect: Dialect) -> bool:
        try:
            hit = await self.cache.lookup(ex)
        except GatewayError:
            raise  # the request itself is wrong (a malformed cache header): the client is told why
        except Exception as exc:  # the cache is optional: a failing lookup is a miss
            self.metrics.stage_outcome("cache_lookup", "failed")
            log.warning(
                "cache lookup failed", extra={"request_id": ex.request_id, "error": type(exc).__name__}
            )
            return False
        if hit is None:
            return False
        ex.cache = hit.kind
        ex.completion = hit.completion
        ex.usage = usage_of(hit.completion) or Usage()
        ex.response_headers.extend(hit.headers)
        headers = self._headers(ex)
        ex.responded = True
        if ex.stream:
            start: Any = {"type": "http.response.start", "status": 200}
            start["headers"] = [*SSE_HEADERS, (b"x-request-id", ex.request_id.encode()), *headers]
            await send(start)
            await send(
                {"type": "http.response.body", "body": dialect.replay(hit.completion, ex.include_usage)}
            )
        else:
            await send_json(send, 200, dialect.cached(hit.completion), headers, ex.request_id)
        return True

    @staticmethod
    def _headers(ex: Exchange) -> list[tuple[bytes, bytes]]:
        route = ex.route
        dep = ex.deployment
        out = ex.response_headers
        if route is not None:
            out.append((b"x-gateway-model", route.model.encode()))
            if route.reason:
                out.append((b"x-route-reason", route.reason.encode()))
        if dep is not None:
            out.append((b"x-gateway-provider", dep.provider.encode()))
        if ex.attempts:
            out.append((b"x-gateway-attempts", attempts_header(ex).encode()))
        return out
