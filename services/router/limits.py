"""The admit stage: allowed models are checked by the resolver; here, RPM, TPM and
budgets, per key and per team, exactly, however many routers run.

Admit reserves, in one atomic Redis script (`lua/admit.lua`) over every subject
of the request (its key and its team): one request, the request's maximum
tokens, and its maximum cost. Settle (`lua/settle.lua`) replaces the reserved
tokens and cost by the real ones. So concurrent requests on any number of
routers can never be admitted past a limit, and a budget is never overspent as
long as an answer stays within its reservation (see `docs/auth.md`).

- Windows: RPM and TPM count what was admitted in the last 60 one-second buckets.
- Maximum tokens: the request body's JSON length (every token of a byte-level
  tokenizer is at least one byte of text) plus `image_tokens` per image, audio or
  file part; plus `max_completion_tokens`/`max_tokens` (or `default_max_tokens`)
  times `n`.
- Maximum cost: those tokens at the dearest price among the deployments the
  request may be sent to. A budgeted caller asking for a model without a price
  is refused (403): it cannot be counted, and it is never free.
- Redis away: the same rules on this process's counters (`LocalCounters`),
  seeded with the last spend Redis reported; the spend counted meanwhile is added
  to Redis when it is back. Or, with `on_redis_down: deny`, a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from services.auth.client import NANO, period_bounds, spend_key
from services.kernel.config import LimitsConfig
from services.kernel.errors import Forbidden, InvalidRequest, RateLimited, ServiceUnavailable
from services.kernel.pricing import cost_of
from services.kernel.principal import Limits, Principal
from services.router.exchange import Exchange
from services.router.reachability import Reachability

log = logging.getLogger("gateway.router")
WINDOW_S = 60
_LUA = Path(__file__).parent / "lua"
_MEDIA_PARTS = frozenset({"image_url", "input_image", "input_audio", "file", "image", "audio"})


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"
    code = "budget_exceeded"


@dataclasses.dataclass(frozen=True, slots=True)
class Subject:
    name: str  # "key:<id>" or "team:<id>"
    limits: Limits
    label: str  # "key" or "team", for messages


@dataclasses.dataclass(slots=True)
class Reservation:
    """What admit counted, to be replaced by the real usage at settle."""

    subjects: tuple[Subject, ...]
    tokens: int
    cost: int  # nano-units
    second: int  # the rate bucket it was counted in
    periods: tuple[int, ...]  # each subject's budget period start
    local: bool  # counted in this process (Redis was away)


@dataclasses.dataclass(slots=True)
class Decision:
    admitted: bool
    refused_by: int  # index of the subject that refused (when not admitted)
    reason: str
    retry_after: int
    now: int
    used: list[tuple[int, int, int, int, int]]  # per subject: requests, tokens, spent, period start, end
    spent: int = 0  # the refusing subject's spend (budget refusals)


def has_limits(limits: Limits) -> bool:
    return limits.rpm is not None or limits.tpm is not None or limits.budget is not None


def subjects_of(principal: Principal) -> tuple[Subject, ...]:
    out = []
    if has_limits(principal.limits):
        out.append(Subject(f"key:{principal.key_id}", principal.limits, "key"))
    if principal.team_id is not None and has_limits(principal.team_limits):
        out.append(Subject(f"team:{principal.team_id}", principal.team_limits, "team"))
    return tuple(out)


def _count_media(messages: Any) -> int:
    count = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                count += sum(1 for p in content if isinstance(p, dict) and p.get("type") in _MEDIA_PARTS)
    return count


def max_tokens(ex: Exchange, config: LimitsConfig) -> tuple[int, int]:
    """(prompt, completion) upper bounds of the request's tokens."""
    body = ex.body
    prompt = len(orjson.dumps(body))
    if ex.endpoint == "embeddings":
        return prompt, 0
    prompt += config.image_tokens * _count_media(body.get("messages"))
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = asked if isinstance(asked, int) else config.default_max_tokens
    n = body.get("n")
    return prompt, completion * (n if isinstance(n, int) and n > 0 else 1)


def max_cost(ex: Exchange, prompt: int, completion: int) -> int | None:
    """Nano-units at the dearest deployment the request may reach; None if one has no price."""
    worst = 0
    assert ex.route is not None
    for dep in ex.route.deployments:
        price = dep.config.price
        if price is None:
            return None
        # (price per million tokens) * tokens * 1e9 / 1e6, rounded up
        worst = max(worst, math.ceil((price.input * prompt + price.output * completion) * 1000))
    return worst


def real_cost(ex: Exchange) -> int:
    """What the request cost, in nano-units, as the usage event records it."""
    if ex.cache is not None:
        return 0
    dep = ex.deployment
    if dep is None:
        return 0
    usage = ex.usage
    cost = cost_of(dep.config.price, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    return 0 if cost is None else math.ceil(cost * NANO)


class LocalCounters:
    """The same counting as the scripts, in this process: the embedded mode's counters,
    and the router's fallback while Redis is away."""

    def __init__(self) -> None:
        self.rate: dict[str, dict[int, list[int]]] = {}  # subject → second → [requests, tokens]
        self.spend: dict[tuple[str, int], int] = {}  # (subject, period start) → nano
        self.known: dict[tuple[str, int], int] = {}  # last spend Redis reported
        self.pending: dict[tuple[str, int], int] = {}  # spend counted here, not yet in Redis

    def admit(self, subjects: Sequence[Subject], tokens: int, cost: int, now: int) -> Decision:
        used: list[tuple[int, int, int, int, int]] = []
        for i, s in enumerate(subjects, 1):
            requests = toks = spent = 0
            start, end = 0, -1
            limits = s.limits
            if limits.rpm is not None or limits.tpm is not None:
                buckets = self.rate.setdefault(s.name, {})
                for sec in [sec for sec in buckets if sec <= now - WINDOW_S]:
                    del buckets[sec]
                requests = sum(b[0] for b in buckets.values())
                toks = sum(b[1] for b in buckets.values())
                if limits.rpm is not None and requests + 1 > limits.rpm:
                    wait = _wait([(sec, b[0]) for sec, b in buckets.items()], requests + 1 - limits.rpm, now)
                    return Decision(False, i, "rpm", wait, now, used)
                if limits.tpm is not None and tokens > limits.tpm:
                    return Decision(False, i, "too_large", 0, now, used)
                if limits.tpm is not None and toks + tokens > limits.tpm:
                    wait = _wait([(sec, b[1]) for sec, b in buckets.items()], toks + tokens - limits.tpm, now)
                    return Decision(False, i, "tpm", wait, now, used)
            if limits.budget is not None:
                start, end_or_none = period_bounds(limits.budget_period, now)
                end = -1 if end_or_none is None else end_or_none
                key = (s.name, start)
                spent = self.spend.get(key, self.known.get(key, 0))
                if spent + cost > round(limits.budget * NANO):
                    return Decision(False, i, "budget", end - now if end >= 0 else -1, now, used, spent)
            used.append((requests, toks, spent, start, end))
        for i, s in enumerate(subjects):
            requests, toks, spent, start, end = used[i]
            if s.limits.rpm is not None or s.limits.tpm is not None:
                bucket = self.rate[s.name].setdefault(now, [0, 0])
                bucket[0] += 1
                bucket[1] += tokens if s.limits.tpm is not None else 0
                requests, toks = requests + 1, toks + (tokens if s.limits.tpm is not None else 0)
            if s.limits.budget is not None:
                self.spend[(s.name, start)] = spent + cost
                spent += cost
            used[i] = (requests, toks, spent, start, end)
        return Decision(True, 0, "", 0, now, used)

    def settle(self, r: Reservation, tokens: int, cost: int) -> None:
        for s, start in zip(r.subjects, r.periods, strict=True):
            bucket = self.rate.get(s.name, {}).get(r.second)
            if bucket is not None and s.limits.tpm is not None:
                bucket[1] += tokens
            if s.limits.budget is not None and (s.name, start) in self.spend:
                self.spend[(s.name, start)] += cost

    async def spent(self, subject: str, period: str | None) -> float | None:
        """The embedded auth service's view of a subject's spend (see `SpendReader`)."""
        start, _ = period_bounds(period, time.time())
        return self.spend.get((subject, start), 0) / NANO

    def save(self, path: Path) -> None:
        """Keep the embedded gateway's spend across restarts (rate windows are not worth it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = [[name, start, nano] for (name, start), nano in self.spend.items()]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        for item in data if isinstance(data, list) else []:
            if isinstance(item, list) and len(item) == 3:
                name, start, nano = item
                if isinstance(name, str) and isinstance(start, int) and isinstance(nano, int):
                    self.spend[(name, start)] = nano


def _wait(buckets: list[tuple[int, int]], need: int, now: int) -> int:
    freed = 0
    for sec, value in sorted(buckets):
        freed += value
        if freed >= need:
            return sec + WINDOW_S - now
    return WINDOW_S


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.decisions = Counter(
            "gateway_admission_decisions_total",
            "Requests admitted or refused by a limit, and where they were counted (redis, local)",
            ["outcome", "counter"],
            registry=registry,
        )
        self.overruns = Counter(
            "gateway_budget_overruns_total",
            "Requests that cost more than their reservation (no max_tokens, longer answer)",
            registry=registry,
        )
        self.flushes = Counter(
            "gateway_admission_local_flushes_total",
            "Spend counted locally while Redis was away, added to Redis when it came back",
            registry=registry,
        )


class LimitAdmission:
    """The `Admission` stage: RPM, TPM and budgets for keys and teams."""

    def __init__(
        self,
        config: LimitsConfig,
        *,
        redis: aioredis.Redis | None,
        prefix: str,
        reach: Reachability,
        registry: CollectorRegistry | None,
        local: LocalCounters | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.prefix = prefix
        self.reach = reach
        self.local = local or LocalCounters()
        self.metrics = AdmissionMetrics(registry)
        self._admit = redis.register_script((_LUA / "admit.lua").read_text()) if redis else None
        self._settle = redis.register_script((_LUA / "settle.lua").read_text()) if redis else None
        self._flushing: asyncio.Task[None] | None = None

    async def admit(self, ex: Exchange) -> Reservation | None:
        principal = ex.principal
        if principal is None:
            return None
        subjects = subjects_of(principal)
        if not subjects:
            return None  # nothing to count: no I/O at all
        tokens = cost = 0
        counts_tokens = any(s.limits.tpm is not None or s.limits.budget is not None for s in subjects)
        if counts_tokens:
            if (
                self.config.require_max_tokens
                and ex.endpoint == "chat.completions"
                and not (ex.body.get("max_tokens") or ex.body.get("max_completion_tokens"))
            ):
                raise InvalidRequest(
                    "This key has a token or spending limit: set max_tokens (or max_completion_tokens).",
                    param="max_tokens",
                    code="max_tokens_required",
                )
            prompt, completion = max_tokens(ex, self.config)
            tokens = prompt + completion
            if any(s.limits.budget is not None for s in subjects):
                priced = max_cost(ex, prompt, completion)
                if priced is None:
                    assert ex.route is not None
                    raise Forbidden(
                        f"The model '{ex.route.model}' has no configured price, so its cost cannot be "
                        "counted against this key's budget.",
                        param="model",
                        code="model_not_priced",
                    )
                cost = priced
        decision, local = await self._decide(subjects, tokens, cost)
        counter = "local" if local else "redis"
        if not decision.admitted:
            self.metrics.decisions.labels(decision.reason, counter).inc()
            raise self._refusal(subjects, decision, tokens, cost)
        self.metrics.decisions.labels("admitted", counter).inc()
        ex.response_headers.extend(_headers(subjects, decision))
        return Reservation(subjects, tokens, cost, decision.now, tuple(u[3] for u in decision.used), local)

    async def _decide(self, subjects: tuple[Subject, ...], tokens: int, cost: int) -> tuple[Decision, bool]:
        if self._admit is not None and self.reach.usable:
            keys, args = self._script_args(subjects, tokens, cost)
            try:
                reply = await asyncio.wait_for(self._admit(keys=keys, args=args), self.config.redis_timeout_s)
            except (OSError, aioredis.RedisError, TimeoutError) as exc:
                self.reach.failed("admit", exc)
            else:
                self.reach.succeeded()
                decision = _decision(reply, len(subjects))
                for s, used in zip(subjects, decision.used, strict=False):
                    if s.limits.budget is not None:
                        self.local.known[(s.name, used[3])] = used[2]
                if self.local.pending and self._flushing is None:
                    self._flushing = asyncio.create_task(self._flush())
                return decision, False
        if self.redis is not None and self.config.on_redis_down == "deny":
            raise ServiceUnavailable(
                "Limits cannot be checked right now; try again shortly.", code="limits_unavailable"
            )
        decision = self.local.admit(subjects, tokens, cost, int(time.time()))
        if decision.admitted and self.redis is not None:
            for s, used in zip(subjects, decision.used, strict=True):
                if s.limits.budget is not None:
                    key = (s.name, used[3])
                    self.local.pending[key] = self.local.pending.get(key, 0) + cost
        return decision, True

    def _script_args(
        self, subjects: Sequence[Subject], tokens: int, cost: int
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [len(subjects), WINDOW_S]
        for s in subjects:
            limits = s.limits
            keys += [f"{self.prefix}:rate:{s.name}", f"{self.prefix}:spend:{s.name}"]
            args += [
                -1 if limits.rpm is None else limits.rpm,
                -1 if limits.tpm is None else limits.tpm,
                tokens if limits.tpm is not None else 0,
                -1 if limits.budget is None else round(limits.budget * NANO),
                cost,
                limits.budget_period or "",
            ]
        return keys, args

    def _refusal(self, subjects: tuple[Subject, ...], d: Decision, tokens: int, cost: int) -> RateLimited:
        s = subjects[d.refused_by - 1]
        who = f"this {s.label}" if s.label == "key" else "this key's team"
        headers = {"retry-after": str(max(1, d.retry_after))} if d.retry_after > 0 else {}
        if d.reason == "rpm":
            headers["x-ratelimit-limit-requests"] = str(s.limits.rpm)
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = f"{max(1, d.retry_after)}s"
            return RateLimited(
                f"Rate limit reached for requests per minute on {who}: limit {s.limits.rpm}. "
                f"Retry in {max(1, d.retry_after)} s.",
                headers=headers,
            )
        if d.reason in ("tpm", "too_large"):
            headers |= {"x-ratelimit-limit-tokens": str(s.limits.tpm), "x-ratelimit-remaining-tokens": "0"}
            if d.reason == "too_large":
                return RateLimited(
                    f"This request may use up to {tokens} tokens, more than the limit of {s.limits.tpm} "
                    f"tokens per minute on {who}; lower max_tokens or shorten it.",
                    code="request_too_large_for_limit",
                    headers=headers,
                )
            headers["x-ratelimit-reset-tokens"] = f"{max(1, d.retry_after)}s"
            return RateLimited(
                f"Rate limit reached for tokens per minute on {who}: limit {s.limits.tpm}, "
                f"this request may use up to {tokens}. Retry in {max(1, d.retry_after)} s.",
                headers=headers,
            )
        budget = s.limits.budget or 0.0
        period = f"per {s.limits.budget_period}" if s.limits.budget_period else "in total"
        resets = f" It resets in {d.retry_after} s." if d.retry_after > 0 else " It does not reset."
        return BudgetExceeded(
            f"Budget exceeded on {who}: {budget:g} {period}, {d.spent / NANO:.6f} spent or reserved, "
            f"and this request may cost up to {cost / NANO:.6f}.{resets}",
            headers=headers,
        )

    async def settle(self, ex: Exchange) -> None:
        r = ex.reservation
        if not isinstance(r, Reservation):
            return
        usage = ex.usage
        used_tokens = 0 if ex.cache is not None else usage.prompt_tokens + usage.completion_tokens
        token_delta = used_tokens - r.tokens
        cost_delta = real_cost(ex) - r.cost if any(s.limits.budget is not None for s in r.subjects) else 0
        if cost_delta > 0:
            self.metrics.overruns.inc()
            log.warning(
                "request cost more than its reservation",
                extra={"request_id": ex.request_id, "over_nano": cost_delta},
            )
        tpm = any(s.limits.tpm is not None for s in r.subjects)
        if not cost_delta and not (token_delta and tpm):
            return  # nothing to correct: no second round trip
        if r.local:
            self.local.settle(r, token_delta, cost_delta)
            self._pending(r, cost_delta)
            return
        assert self._settle is not None
        keys: list[str] = []
        args: list[Any] = [len(r.subjects), r.second]
        for s, start in zip(r.subjects, r.periods, strict=True):
            keys += [f"{self.prefix}:rate:{s.name}", spend_key(self.prefix, s.name, start)]
            args.append(token_delta if s.limits.tpm is not None else 0)
            args.append(cost_delta if s.limits.budget is not None else 0)
        try:
            await asyncio.wait_for(self._settle(keys=keys, args=args), max(1.0, self.config.redis_timeout_s))
        except (OSError, aioredis.RedisError, TimeoutError) as exc:
            self.reach.failed("settle", exc)
            self._pending(r, cost_delta)

    def _pending(self, r: Reservation, cost_delta: int) -> None:
        if self.redis is None or not cost_delta:
            return
        for s, start in zip(r.subjects, r.periods, strict=True):
            if s.limits.budget is not None:
                key = (s.name, start)
                self.local.pending[key] = self.local.pending.get(key, 0) + cost_delta

    async def _flush(self) -> None:
        """Add the spend counted while Redis was away to Redis."""
        try:
            assert self.redis is not None
            while self.local.pending:
                (name, start), nano = self.local.pending.popitem()
                try:
                    await self.redis.incrby(spend_key(self.prefix, name, start), nano)
                except (OSError, aioredis.RedisError):
                    self.local.pending[(name, start)] = self.local.pending.get((name, start), 0) + nano
                    return
                self.metrics.flushes.inc()
            self.local.spend.clear()  # Redis holds the truth again
        finally:
            self._flushing = None

    async def aclose(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)


def _decision(reply: list[Any], n: int) -> Decision:
    admitted, index, reason, retry, now = reply[:5]
    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
    if not admitted:
        spent = int(reply[5]) if len(reply) > 5 else 0
        return Decision(False, int(index), reason, int(retry), int(now), [], spent)
    flat = [int(v) for v in reply[5:]]
    used = [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4]) for i in range(0, 5 * n, 5)]
    return Decision(True, 0, "", 0, int(now), used)


def _headers(subjects: tuple[Subject, ...], d: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` headers for the tightest of the subjects' limits."""
    out: list[tuple[bytes, bytes]] = []
    pairs = list(zip(subjects, d.used, strict=True))
    requests = [(s.limits.rpm - u[0], s.limits.rpm) for s, u in pairs if s.limits.rpm]
    if requests:
        remaining, limit = min(requests)
        out += [
            (b"x-ratelimit-limit-requests", str(limit).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, remaining)).encode()),
        ]
    tokens = [(s.limits.tpm - u[1], s.limits.tpm) for s, u in pairs if s.limits.tpm]
    if tokens:
        remaining, limit = min(tokens)
        out += [
            (b"x-ratelimit-limit-tokens", str(limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, remaining)).encode()),
        ]
    budgets = [s.limits.budget - u[2] / NANO for s, u in pairs if s.limits.budget is not None]
    if budgets:
        out.append((b"x-gateway-budget-remaining", f"{max(0.0, min(budgets)):.6f}".encode()))
    return out
