"""The cache itself: an exact layer and a semantic layer over one store.

Lookup: the exact key first (one Redis round trip); then, for a text prompt, its
embedding is compared with the namespace's vectors in the in-process index, and the
nearest candidates are fetched and checked by the verifier, best first. A lookup
never searches outside the request's namespace, which includes the tenant and the
region of the router that asks (when it has one). While
the embedding model is still loading a lookup is exact-only (counted).

Store: the answer goes under the request's exact key, with the prompt's vector when
it has one; the eviction it causes and the new vector are applied to this
replica's index at once and reach the other replicas through the change stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np

from services.cache.entries import Change, Entries, Limits, NewEntry
from services.cache.index import VectorIndex
from services.cache.keys import RequestKey, request_key
from services.cache.metrics import CacheMetrics
from services.cache.verifier import Verifier
from services.kernel.config import CacheConfig

log = logging.getLogger("gateway.cache")


class TextEncoder(Protocol):
    """The part of `services.kernel.encoder.Encoder` the cache uses."""

    @property
    def ready(self) -> bool: ...

    async def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    kind: str  # "exact" or "semantic"
    response: bytes  # the stored chat.completion, JSON
    similarity: float
    age_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Miss:
    reason: (
        str  # "absent", "no_candidate", "rejected", "model_loading", "not_text", "semantic_off", "too_old"
    )


class SemanticCache:
    def __init__(
        self,
        entries: Entries,
        index: VectorIndex,
        encoder: TextEncoder | None,
        verifier: Verifier | None,
        config: CacheConfig,
        metrics: CacheMetrics,
    ) -> None:
        self.entries = entries
        self.index = index
        self.encoder = encoder
        self.verifier = verifier
        self.config = config
        self.metrics = metrics
        self.limits = Limits(config.max_entries_per_namespace, config.max_entries)
        self.background: set[asyncio.Task[None]] = set()
        self.ready = False  # the index has been built from storage once
        # Vectors of prompts just looked up, for the store that follows a miss: one
        # embedding per miss instead of two (the model is the expensive part).
        self.recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self.recent_max = 4096

    def key(self, tenant: str, model: str, request: dict[str, Any], region: str | None = None) -> RequestKey:
        return request_key(
            tenant, model, request, semantic_max_chars=self.config.semantic_max_chars, region=region
        )

    def _semantic_possible(self, key: RequestKey, wanted: bool) -> str | None:
        """Why the semantic layer cannot run for this request, or None."""
        if not (wanted and self.config.semantic and self.verifier is not None and self.encoder is not None):
            return "semantic_off"
        if key.text is None:
            return "not_text"
        if not self.encoder.ready:
            return "model_loading"
        return None

    async def lookup(
        self,
        tenant: str,
        model: str,
        request: dict[str, Any],
        *,
        semantic: bool = True,
        max_age_s: float | None = None,
        region: str | None = None,
    ) -> Hit | Miss:
        started = time.perf_counter()
        result = await self._lookup(self.key(tenant, model, request, region), semantic, max_age_s)
        outcome = result.kind if isinstance(result, Hit) else "miss"
        self.metrics.lookups.labels(outcome).inc()
        self.metrics.duration.labels(outcome).observe(time.perf_counter() - started)
        self.metrics.count(f"lookups_{outcome}")
        return result

    async def _lookup(self, key: RequestKey, semantic: bool, max_age_s: float | None) -> Hit | Miss:
        now = time.time()
        stored = await self.entries.get(key.namespace, key.exact, now)
        if stored is not None and (max_age_s is None or now - stored.created <= max_age_s):
            return Hit("exact", stored.response, 1.0, now - stored.created)
        why = self._semantic_possible(key, semantic)
        if why is not None:
            if why in ("model_loading", "not_text"):
                self.metrics.semantic_skipped.labels(why).inc()
                self.metrics.count(f"semantic_skipped_{why}")
            return Miss("too_old" if stored is not None else why if why != "semantic_off" else "absent")
        assert self.encoder is not None
        assert self.verifier is not None
        assert key.text is not None
        if key.namespace not in self.index.spaces:
            return Miss("no_candidate")  # nothing to compare with: no embedding needed
        query = (await self.encoder.encode([key.text]))[0]
        self._remember(key.exact, query)
        candidates = self.index.search(
            key.namespace, query, floor=self.verifier.floor, k=self.config.candidates, now=now
        )
        candidates = [c for c in candidates if c.entry_id != key.exact]
        if not candidates:
            return Miss("no_candidate")
        rows = await self.entries.get_many(key.namespace, [c.entry_id for c in candidates], now)
        for candidate, row in zip(candidates, rows, strict=True):
            if row is None:  # gone from storage (evicted, expired, flushed) before the index heard
                self.index.remove(key.namespace, candidate.entry_id)
                self.metrics.rejected.labels("stale").inc()
                continue
            if max_age_s is not None and now - row.created > max_age_s:
                continue
            verdict = self.verifier.check(key.text, row.text, candidate.similarity)
            if not verdict.accepted:
                self.metrics.rejected.labels(verdict.stage).inc()
                self.metrics.count(f"rejected_{verdict.stage.replace(':', '_')}")
                continue
            self._spawn(self.entries.touch(key.namespace, candidate.entry_id, now))
            return Hit("semantic", row.response, candidate.similarity, now - row.created)
        return Miss("rejected")

    async def store(
        self,
        tenant: str,
        model: str,
        request: dict[str, Any],
        response: bytes,
        *,
        ttl_s: float | None = None,
        semantic: bool = True,
        region: str | None = None,
    ) -> str:
        """Keep an answer; returns "semantic", "exact_only", or why it was not stored."""
        if len(response) > self.config.max_entry_bytes:
            self.metrics.refused.labels("too_large").inc()
            return "too_large"
        key = self.key(tenant, model, request, region)
        vector = None
        if self._semantic_possible(key, semantic) is None:
            assert self.encoder is not None
            assert key.text is not None
            vector = self.recent.pop(key.exact, None)
            if vector is None:
                vector = (await self.encoder.encode([key.text]))[0]
        entry = NewEntry(
            key.namespace,
            key.exact,
            response,
            key.text or "",
            vector,
            min(ttl_s or self.config.ttl_s, self.config.max_ttl_s),
            tenant,
            model,
            region,
        )
        changes = await self.entries.put(entry, time.time(), self.limits)
        self.apply(changes)  # the other replicas hear it through storage
        kind = "semantic" if vector is not None else "exact_only"
        self.metrics.stores.labels(kind).inc()
        self.metrics.count(f"stores_{kind}")
        return kind

    def _remember(self, exact: str, vector: np.ndarray) -> None:
        self.recent[exact] = vector
        if len(self.recent) > self.recent_max:
            self.recent.popitem(last=False)

    def apply(self, changes: list[Change], source: str = "local") -> None:
        """Bring this replica's index in line with changes to storage."""
        for change in changes:
            if change.op == "add" and change.vector is not None:
                self.index.add(change.namespace, change.entry_id, change.vector, change.expires)
            elif change.op == "del":
                self.index.remove(change.namespace, change.entry_id)
                if source == "local":
                    self.metrics.evictions.inc()
                    self.metrics.count("evictions")
            elif change.op == "flush":
                self.index.drop(change.namespace)
        if source != "local" and changes:
            self.metrics.sync_changes.labels(source).inc(len(changes))
        self.metrics.index_entries.set(len(self.index))
        self.metrics.index_namespaces.set(len(self.index.spaces))

    async def flush(self, namespace: str) -> int:
        count = await self.entries.flush(namespace)
        self.index.drop(namespace)
        self.metrics.count("flushed", count)
        return count

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._quiet(work))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _quiet(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:  # an LRU touch lost costs nothing but ordering
            log.info("cache touch failed", extra={"error": type(exc).__name__})

    async def drain(self) -> None:
        if self.background:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self.background), timeout=2.0)
