"""The call stage: tries deployments through the adapters and the one shared sender
until one answers, within the request's deadline.

The order of tries:

1. the model's deployments, as the `Balancer` orders them, skipping those whose
   circuit is open (`breaker.py`), or that are at their RPM/TPM capacity or asked to
   be left alone (Retry-After);
2. on a connection error, 408, 409 or 5xx, the same deployment again, up to its
   `retries`, after an exponential backoff with full jitter; on a 429, the next
   deployment at once (the last one left waits out its Retry-After when that is
   short enough);
3. then the model's `fallbacks`, each the same way (chat only: an embedding from
   another model lives in another vector space);
4. a context-length error jumps to the model's `context_fallbacks` instead.

Regions (`regions.py`): within each model, the deployments of the router's own
region come first, so another region's take a request only once its own have none
healthy; a request restricted to regions never reaches a deployment outside them,
fallbacks included: when only those are left it gets a clear error instead.

An error no other try can fix (a 400, rejected credentials) ends it at once. No try
starts after `resilience.deadline_s`, and a try never outlives it. A stream is tried
again only until its first meaningful chunk is read, which is before any byte has
reached the client. Every try is an `Attempt` on the exchange (deployment, status,
time): in the usage event and the `x-gateway-attempts` header.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

from services.kernel.config import Catalog, Deployment, ResilienceConfig
from services.kernel.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from services.kernel.redact import Redactor
from services.kernel.wire import ChatCompletionChunk
from services.router.breaker import Breakers, State
from services.router.exchange import Attempt, Exchange, Route
from services.router.metrics import RouterMetrics
from services.router.providers.base import (
    Adapter,
    Completion,
    HttpRequest,
    HttpResponse,
    StreamDecoder,
    Timeouts,
)
from services.router.providers.params import finish_embeddings
from services.router.providers.tokens import count_messages, count_text
from services.router.regions import RegionPolicy, describe
from services.router.routing import Balancer
from services.router.sender import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    ReadTimedOut,
    Sender,
    TransportError,
    UpstreamStream,
)

log = logging.getLogger("gateway.router")
T = TypeVar("T")
CONTEXT = "context_length_exceeded"


def transport_error(dep: Deployment, exc: TransportError) -> GatewayError:
    """A failure to talk to the deployment at all, as the client sees it."""
    where = f"{dep.provider} deployment {dep.name}"
    err: GatewayError
    if isinstance(exc, ConnectTimedOut):
        err = UpstreamTimeout(f"timed out connecting to {where}")
    elif isinstance(exc, ReadTimedOut):
        what = {"first_byte": "start answering", "idle": "send more of the stream"}.get(exc.which, "answer")
        err = UpstreamTimeout(f"{where} did not {what} within {exc.seconds:g} s")
    else:
        err = UpstreamError(f"could not reach {where}: {type(exc).__name__}")
    # A timed-out or reset request may have been processed; a provider call is not a payment,
    # and trying again is what the client would do itself.
    err.retryable = isinstance(exc, ConnectFailed | ConnectTimedOut | ConnectionLost | ReadTimedOut)
    return err


def retry_after(err: GatewayError) -> float | None:
    """Seconds from the error's Retry-After (a number or an HTTP date), if any."""
    value = err.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _is_failure(err: GatewayError) -> bool:
    """Whether the error says the deployment is unhealthy (for its circuit breaker)."""
    return err.status >= 500 and err.status != 501


class OpenStream:
    """An upstream stream that answered 200, with what was read of it already (`ready`:
    chunks decoded but not yet sent) and the rest still to come (`pieces`)."""

    __slots__ = ("decoder", "deployment", "pieces", "ready", "response")

    def __init__(
        self,
        deployment: Deployment,
        response: UpstreamStream,
        decoder: StreamDecoder,
        pieces: AsyncIterator[bytes],
        ready: list[ChatCompletionChunk],
    ) -> None:
        self.deployment = deployment
        self.response = response
        self.decoder = decoder
        self.pieces = pieces
        self.ready = ready


def _meaningful(chunk: ChatCompletionChunk) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
        if choice.get("finish_reason") is not None:
            return True
    return False


def prompt_estimate(ex: Exchange) -> int:
    """The gateway's estimate of the prompt's tokens (capacity and context window checks)."""
    body = ex.body
    messages = body.get("messages")
    if isinstance(messages, list):
        return count_messages(messages)
    value = body.get("input")
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, list):
        return sum(
            count_text(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 1 for v in value
        )
    return 0


@dataclasses.dataclass(slots=True)
class _Skipped:
    reason: str  # "circuit_open", "rpm", "tpm", "throttled"
    wait: float


_NEXT = object()  # `_on`'s answer when the request should move on to the next deployment


@dataclasses.dataclass(slots=True)
class _Run(Generic[T]):
    """The state of one request's tries."""

    ex: Exchange
    once: Callable[[Deployment, Adapter, float], Awaitable[tuple[T, float]]]
    deadline: float  # event-loop time
    tokens: int  # prompt estimate
    first_model: str
    tried: set[str] = dataclasses.field(default_factory=set)
    skipped: list[_Skipped] = dataclasses.field(default_factory=list)
    last: GatewayError | None = None
    jump: Sequence[str] | None = None  # context fallbacks to go to next
    allowed: frozenset[str] | None = None  # the regions the request may be served in
    withheld: bool = False  # residency left out a deployment a failover would have tried


class Dispatcher:
    def __init__(
        self,
        sender: Sender,
        adapters: Mapping[str, Adapter],
        metrics: RouterMetrics,
        redact: Redactor,
        *,
        catalog: Catalog | None = None,
        resilience: ResilienceConfig | None = None,
        balancer: Balancer | None = None,
        breakers: Breakers | None = None,
        regions: RegionPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sender = sender
        self.adapters = adapters
        self.metrics = metrics
        self.redact = redact
        self.catalog = catalog or Catalog(models={})
        self.resilience = resilience or ResilienceConfig()
        self.balancer = balancer or Balancer()
        self.breakers = breakers or Breakers(on_change=self._circuit_changed)
        self.regions = regions or RegionPolicy()
        self.rng = rng or random.Random()
        self.sleep = sleep
        # Counting a prompt's tokens walks every message with a regex: only when a token
        # capacity (tpm) or a context window makes the count matter.
        self.counts_tokens = any(
            d.config.tpm is not None for deps in self.catalog.models.values() for d in deps
        ) or any(c.context_window is not None for c in self.catalog.configs.values())

    def _circuit_changed(self, dep: Deployment, state: State) -> None:
        self.metrics.circuit(dep, state)
        log.warning("circuit " + state.replace("_", "-"), extra={"deployment": dep.name, "state": state})

    # -- the chain of models ------------------------------------------------------------

    def _allowed(
        self, ex: Exchange, names: Sequence[str], tried: set[str]
    ) -> list[tuple[str, Sequence[Deployment]]]:
        out: list[tuple[str, Sequence[Deployment]]] = []
        for alias in names:
            name = self.catalog.aliases.get(alias, alias)
            deployments = self.catalog.models.get(name)
            if deployments is None or name in tried:
                continue  # left out for a missing key, or already tried
            if ex.principal is not None and not ex.principal.may_use(name):
                continue
            out.append((name, deployments))
        return out

    def _chain(self, ex: Exchange, fallbacks: bool, tokens: int) -> list[tuple[str, Sequence[Deployment]]]:
        route = ex.route
        assert route is not None
        config = self.catalog.configs.get(route.model)
        if config is None:
            return [(route.model, route.deployments)]
        if fallbacks and config.context_window is not None and tokens > config.context_window:
            larger = self._allowed(ex, config.context_fallbacks, {route.model})
            if not larger:
                raise InvalidRequest(
                    f"The prompt (about {tokens} tokens) is longer than the context window of"
                    f" '{route.model}' ({config.context_window} tokens).",
                    param="messages",
                    code=CONTEXT,
                )
            return larger
        chain: list[tuple[str, Sequence[Deployment]]] = [(route.model, route.deployments)]
        if fallbacks and config.fallbacks:
            chain += self._allowed(ex, config.fallbacks, {route.model})
        return chain

    # -- the tries ----------------------------------------------------------------------

    def _backoff(self, tries: int) -> float:
        r = self.resilience
        return self.rng.uniform(0, min(r.backoff_max_s, r.backoff_base_s * 2**tries))

    async def _attempts(
        self,
        ex: Exchange,
        once: Callable[[Deployment, Adapter, float], Awaitable[tuple[T, float]]],
        *,
        fallbacks: bool,
    ) -> T:
        """Run `once(deployment, adapter, deadline)` until one succeeds; see the module docstring."""
        assert ex.route is not None
        loop = asyncio.get_running_loop()
        run = _Run(
            ex,
            once,
            deadline=loop.time() + self.resilience.deadline_s - (time.perf_counter() - ex.started),
            tokens=prompt_estimate(ex) if self.counts_tokens else 0,
            first_model=ex.route.model,
            allowed=self.regions.allowed(ex.principal),
        )
        if run.allowed is not None and not run.allowed:
            raise self._served_nowhere(ex)
        queue = collections.deque(self._placed(run, self._chain(ex, fallbacks, run.tokens)))
        if not queue:
            self.metrics.residency_refusal("no_deployment")
            assert run.allowed is not None  # only residency empties a chain
            raise Forbidden(
                f"The model '{ex.route.model}' has no deployment in the regions this request may be"
                f" served in ({describe(run.allowed)}).",
                param="model",
                code="region_not_allowed",
                headers={"x-should-retry": "false"},
            )
        deferred: list[tuple[float, int, Deployment, str, Sequence[Deployment]]] = []
        while queue:
            model, deployments = queue.popleft()
            run.tried.add(model)
            config = self.catalog.configs.get(model)
            ordered = self.regions.prefer(
                self.balancer.order(deployments, config.balancing if config else "weighted")
            )
            for position, dep in enumerate(ordered):
                why = self.balancer.unavailable(dep, run.tokens)
                if why is None and not self.breakers.allow(dep):
                    why = ("circuit_open", self.breakers.retry_in(dep))
                if why is not None:
                    run.skipped.append(_Skipped(*why))
                    if why[0] in ("circuit_open", "throttled"):
                        deferred.append((why[1], len(deferred), dep, model, deployments))
                    continue
                last_candidate = not queue and position == len(ordered) - 1
                outcome = await self._on(run, dep, model, deployments, last_candidate=last_candidate)
                if outcome is not _NEXT:
                    return cast(T, outcome)
                if run.jump is not None:
                    queue = collections.deque(self._placed(run, self._allowed(ex, run.jump, run.tried)))
                    run.jump = None
                    break
        if run.last is None and deferred:
            # Everything left was cooling down (open circuit, or its own Retry-After) and
            # nothing else can answer: try those anyway, soonest-ready first, once each,
            # rather than refuse a request a recovered deployment could serve (the router's
            # own region first, as always).
            def soonest(
                d: tuple[float, int, Deployment, str, Sequence[Deployment]],
            ) -> tuple[bool, float, int]:
                return self.regions.is_remote(d[2]), d[0], d[1]

            for _, _, dep, model, deployments in sorted(deferred, key=soonest):
                outcome = await self._on(run, dep, model, deployments, last_candidate=False, retries=0)
                if outcome is not _NEXT:
                    return cast(T, outcome)
        if run.withheld:
            raise self._kept_in_region(ex, run)
        if run.last is not None:
            raise run.last
        raise self._none_available(ex, run.skipped)

    def _placed(
        self, run: _Run[Any], chain: Sequence[tuple[str, Sequence[Deployment]]]
    ) -> list[tuple[str, Sequence[Deployment]]]:
        """The chain without the deployments the request's regions rule out (and without
        the models left with none); remembers whether residency took any out."""
        allowed = run.allowed
        if allowed is None:
            return list(chain)
        placed: list[tuple[str, Sequence[Deployment]]] = []
        for model, deployments in chain:
            kept = [d for d in deployments if RegionPolicy.admits(allowed, d)]
            if len(kept) < len(deployments):
                run.withheld = True
            if kept:
                placed.append((model, kept))
        return placed

    def _served_nowhere(self, ex: Exchange) -> GatewayError:
        """The request may be served in no region at all (whatever the model): its key's
        regions and its team's have none in common, or none of them is one this router's
        residency allows."""
        self.metrics.residency_refusal("no_region")
        own = ex.principal.regions if ex.principal is not None else None
        if own is not None and not own:
            message = (
                "This API key may not be served in any region: the regions it is restricted to"
                " and those of its team have none in common. An administrator can change the"
                " key's or the team's regions."
            )
        else:
            message = (
                f"This router keeps every request in {describe(self.regions.residency or frozenset())},"
                f" and this API key may only be served in {describe(own or frozenset())}: no region"
                " allows both. Send the request to a router in one of the key's regions."
            )
        return Forbidden(message, code="region_not_allowed", headers={"x-should-retry": "false"})

    def _kept_in_region(self, ex: Exchange, run: _Run[Any]) -> GatewayError:
        """Every deployment the request may use failed or is cooling down, and the ones
        that could have taken over are outside its regions: say so, rather than go there."""
        assert run.allowed is not None
        self.metrics.residency_refusal("unavailable")
        model = ex.route.model if ex.route is not None else ""
        wait = str(max(1, math.ceil(min((s.wait for s in run.skipped), default=1.0))))
        cause = f" (last error: {run.last.message})" if run.last is not None else ""
        return ServiceUnavailable(
            f"No deployment of '{model}' in the regions this request may be served in"
            f" ({describe(run.allowed)}) could answer{cause}; deployments in other regions are"
            " not used for it.",
            code="region_unavailable",
            headers={"retry-after": wait},
        )

    async def _on(
        self,
        run: _Run[Any],
        dep: Deployment,
        model: str,
        deployments: Sequence[Deployment],
        *,
        last_candidate: bool,
        retries: int | None = None,
    ) -> Any:
        """Try one deployment, again on retryable failures; its result, or `_NEXT`."""
        ex = run.ex
        loop = asyncio.get_running_loop()
        limit = dep.config.retries if retries is None else retries
        tries = 0
        while True:
            if len(ex.attempts) >= self.resilience.max_attempts or loop.time() >= run.deadline:
                raise run.last or UpstreamTimeout(
                    "The request's deadline passed before an upstream answered."
                )
            attempt = Attempt(dep, time.perf_counter())
            ex.attempts.append(attempt)
            self.balancer.start(dep, run.tokens)
            err: GatewayError
            try:
                result, latency = await run.once(dep, self.adapters[dep.provider], run.deadline)
            except TransportError as exc:
                err = transport_error(dep, exc)
            except GatewayError as exc:
                err = exc
            except BaseException:
                self.balancer.end(dep)
                self.breakers.release(dep)
                attempt.status, attempt.seconds = 499, time.perf_counter() - attempt.started
                raise
            else:
                attempt.status, attempt.seconds = 200, time.perf_counter() - attempt.started
                self.breakers.success(dep)
                self.balancer.observe(dep, latency)
                self.metrics.attempt(dep, 200)
                if self.regions.local is not None and self.regions.is_remote(dep):
                    self.metrics.cross_region_answer(dep, self.regions.local)
                ex.lease = dep
                if model != run.first_model:
                    ex.route = Route(model, tuple(deployments), f"fallback from {run.first_model}")
                return result
            self.balancer.end(dep)
            self._failed(ex, attempt, err)
            config = self.catalog.configs.get(model)
            larger = config.context_fallbacks if config is not None and err.code == CONTEXT else ()
            if larger and self._allowed(ex, larger, run.tried):
                run.last, run.jump = err, larger
                return _NEXT
            if not err.retryable:
                raise err
            run.last = err
            pause = retry_after(err)
            if err.status == 429:
                self.balancer.throttle(dep, pause if pause is not None else self._backoff(tries))
                if not last_candidate:
                    return _NEXT  # another deployment can take it now
            if tries >= limit or self.breakers.state(dep) == "open":
                return _NEXT
            wait = self._backoff(tries)
            if pause is not None:
                if pause > self.resilience.max_retry_after_s:
                    return _NEXT
                wait = max(wait, pause)
            if loop.time() + wait >= run.deadline:
                return _NEXT
            self.metrics.retries.labels(dep.provider, dep.name).inc()
            await self.sleep(wait)
            tries += 1

    def _failed(self, ex: Exchange, attempt: Attempt, err: GatewayError) -> None:
        dep = attempt.deployment
        err.message = self.redact(err.message)
        attempt.status, attempt.error_code = err.status, err.code
        attempt.seconds = time.perf_counter() - attempt.started
        self.metrics.attempt(dep, err.status)
        if _is_failure(err):
            self.breakers.failure(dep)
        elif err.status == 429:
            self.breakers.release(dep)
        else:
            self.breakers.success(dep)  # it answered: it is up
        if err.status >= 500 or err.status == 429:
            self.metrics.upstream_error(dep, err.code)
            log.warning(
                "upstream failure",
                extra={
                    "request_id": ex.request_id,
                    "deployment": dep.name,
                    "provider": dep.provider,
                    "status": err.status,
                    "code": err.code,
                    "detail": err.message,
                    "retryable": err.retryable,
                },
            )

    @staticmethod
    def _none_available(ex: Exchange, skipped: list[_Skipped]) -> GatewayError:
        model = ex.route.model if ex.route is not None else ""
        wait = str(max(1, math.ceil(min((s.wait for s in skipped), default=1.0))))
        if skipped and all(s.reason != "circuit_open" for s in skipped):
            return RateLimited(
                f"Every deployment of '{model}' is at its configured capacity; retry after {wait} s.",
                headers={"retry-after": wait},
            )
        return ServiceUnavailable(
            f"No deployment of '{model}' is available: they failed recently and are cooling down.",
            code="no_healthy_deployment",
            headers={"retry-after": wait},
        )

    def finish(self, ex: Exchange) -> None:
        """The request is over: the deployment that answered is free again, its completion
        tokens count against its TPM, and a stream that broke counts against its health."""
        dep = ex.lease
        if dep is None:
            return
        ex.lease = None
        self.balancer.end(dep)
        self.balancer.add_tokens(dep, ex.usage.completion_tokens)
        if ex.status in (502, 504):
            self.breakers.failure(dep)

    # -- the calls ----------------------------------------------------------------------

    @staticmethod
    def _bounded(request: HttpRequest, deadline: float) -> HttpRequest:
        left = deadline - asyncio.get_running_loop().time()
        t = request.timeouts
        if left + 1.0 >= t.total:  # within a second of the deployment's own bound: keep it
            return request
        left = max(left, 0.001)
        timeouts = Timeouts(t.connect, min(t.first_byte, left), left, t.idle)
        return HttpRequest(request.url, request.headers, request.body, timeouts, request.method)

    # `chat`, `embeddings` and `chat_stream` hand back the coroutine of `_attempts` without
    # awaiting it themselves: one coroutine frame fewer for every resume of the call.

    def chat(self, ex: Exchange) -> Coroutine[Any, Any, tuple[Deployment, Completion]]:
        async def once(dep: Deployment, adapter: Adapter, deadline: float) -> tuple[Any, float]:
            request = self._bounded(adapter.chat_request(dep, ex.body, stream=False), deadline)  # type: ignore[arg-type]
            started = time.perf_counter()
            response = await self.sender.send(request)
            if response.status >= 300:
                raise adapter.error(dep, response)
            return (dep, adapter.chat_response(dep, response)), time.perf_counter() - started

        return self._attempts(ex, once, fallbacks=True)

    def embeddings(self, ex: Exchange) -> Coroutine[Any, Any, tuple[Deployment, Completion]]:
        async def once(dep: Deployment, adapter: Adapter, deadline: float) -> tuple[Any, float]:
            request = self._bounded(adapter.embeddings_request(dep, ex.body), deadline)  # type: ignore[arg-type]
            started = time.perf_counter()
            response = await self.sender.send(request)
            if response.status >= 300:
                raise adapter.error(dep, response)
            completion = adapter.embeddings_response(dep, response)
            completion = finish_embeddings(completion, ex.body.get("encoding_format"), prompt_estimate(ex))
            return (dep, completion), time.perf_counter() - started

        return self._attempts(ex, once, fallbacks=False)

    def chat_stream(self, ex: Exchange) -> Coroutine[Any, Any, OpenStream]:
        """Open the stream and read it up to its first meaningful chunk; until then
        nothing has reached the client, so a failure can still go elsewhere."""

        async def once(dep: Deployment, adapter: Adapter, deadline: float) -> tuple[OpenStream, float]:
            request = self._bounded(adapter.chat_request(dep, ex.body, stream=True), deadline)  # type: ignore[arg-type]
            started = time.perf_counter()
            response = await self.sender.open(request)
            try:
                if response.status >= 300:
                    body = await response.read()
                    raise adapter.error(dep, HttpResponse(response.status, response.headers, body))
                media = response.headers.get("content-type", "")
                if not media.startswith(adapter.stream_media_type):
                    got = media.split(";")[0] or "no content type"
                    err = UpstreamError(
                        f"{dep.name} answered a streaming request with {got}"
                        f" instead of {adapter.stream_media_type}"
                    )
                    err.retryable = True
                    raise err
                decoder = adapter.chat_stream(dep)
                pieces = response.chunks()
                ready = await self._first_chunks(dep, decoder, pieces, request.timeouts.first_byte, started)
            except BaseException:
                await response.aclose()
                raise
            return OpenStream(dep, response, decoder, pieces, ready), time.perf_counter() - started

        return self._attempts(ex, once, fallbacks=True)

    @staticmethod
    async def _first_chunks(
        dep: Deployment,
        decoder: StreamDecoder,
        pieces: AsyncIterator[bytes],
        first_byte: float,
        started: float,
    ) -> list[ChatCompletionChunk]:
        ready: list[ChatCompletionChunk] = []
        left = max(0.0, first_byte - (time.perf_counter() - started))
        try:
            async with asyncio.timeout(left):
                while not any(_meaningful(c) for c in ready):
                    try:
                        data = await anext(pieces)
                    except StopAsyncIteration:
                        ready += decoder.finish()
                        break
                    ready += decoder.feed(data)
                    if decoder.error is not None or decoder.done:
                        break
        except TimeoutError:
            raise ReadTimedOut("first_byte", first_byte) from None
        if decoder.error is not None:
            raise decoder.error
        if not decoder.done and not any(_meaningful(c) for c in ready):
            err = UpstreamError(f"{dep.name} ended the stream before it sent anything")
            err.retryable = True
            raise err
        return ready

    # -- the health page ----------------------------------------------------------------

    def health(self) -> list[dict[str, Any]]:
        """Every deployment's circuit, load and capacity use, for `GET /v1/deployments/health`."""
        out = []
        for model, deployments in self.catalog.models.items():
            for dep in deployments:
                load = self.balancer.load(dep)
                requests, tokens = self.balancer.usage(dep)
                circuit = self.breakers._circuit(dep)
                out.append(
                    {
                        "deployment": dep.name,
                        "model": model,
                        "provider": dep.provider,
                        "upstream_model": dep.model,
                        "region": dep.config.region,
                        "state": self.breakers.state(dep),
                        "consecutive_failures": circuit.failures,
                        "times_opened": circuit.opened_total,
                        "retry_in_s": round(self.breakers.retry_in(dep), 3),
                        "in_flight": load.in_flight,
                        "latency_ms": None if load.latency is None else round(load.latency * 1000, 3),
                        "requests_last_minute": requests,
                        "tokens_last_minute": tokens,
                        "rpm": dep.config.rpm,
                        "tpm": dep.config.tpm,
                    }
                )
        return out
