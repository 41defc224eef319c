"""The embedded stand-in for Redis: the `Entries` contract in one process.

Same behaviour as `RedisEntries` (TTL, least-recently-used caps per namespace and
overall, statistics); there are no other replicas, so `changes` only waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from services.cache.entries import Change, EntryInfo, Limits, NamespaceInfo, NewEntry, Stored


@dataclasses.dataclass(slots=True)
class _Entry:
    response: bytes
    text: str
    vector: np.ndarray | None
    created: float
    expires: float
    last_used: float
    hits: int = 0


@dataclasses.dataclass(slots=True)
class _Space:
    tenant: str
    model: str
    region: str | None
    created: float
    entries: OrderedDict[str, _Entry] = dataclasses.field(default_factory=OrderedDict)  # LRU first
    hits: int = 0


class MemoryEntries:
    def __init__(self) -> None:
        self.spaces: dict[str, _Space] = {}
        self.lru: OrderedDict[tuple[str, str], None] = OrderedDict()  # overall, least recent first
        self.stats: dict[str, int] = {}

    def _live(self, namespace: str, entry_id: str, now: float) -> _Entry | None:
        space = self.spaces.get(namespace)
        entry = space.entries.get(entry_id) if space is not None else None
        if entry is None or entry.expires <= now:
            return None  # an expired entry stays until `sweep` or `put` reports its removal
        return entry

    def _use(self, namespace: str, entry_id: str, entry: _Entry, now: float) -> None:
        entry.last_used = now
        entry.hits += 1
        space = self.spaces[namespace]
        space.hits += 1
        space.entries.move_to_end(entry_id)
        self.lru.move_to_end((namespace, entry_id))

    def _drop(self, namespace: str, entry_id: str) -> None:
        space = self.spaces.get(namespace)
        if space is None or space.entries.pop(entry_id, None) is None:
            return
        self.lru.pop((namespace, entry_id), None)
        if not space.entries:
            del self.spaces[namespace]

    async def get(self, namespace: str, entry_id: str, now: float) -> Stored | None:
        entry = self._live(namespace, entry_id, now)
        if entry is None:
            return None
        self._use(namespace, entry_id, entry, now)
        return Stored(entry.response, entry.text, entry.created, entry.expires)

    async def get_many(self, namespace: str, entry_ids: Sequence[str], now: float) -> list[Stored | None]:
        out: list[Stored | None] = []
        for entry_id in entry_ids:
            entry = self._live(namespace, entry_id, now)
            out.append(
                None if entry is None else Stored(entry.response, entry.text, entry.created, entry.expires)
            )
        return out

    async def touch(self, namespace: str, entry_id: str, now: float) -> None:
        entry = self._live(namespace, entry_id, now)
        if entry is not None:
            self._use(namespace, entry_id, entry, now)

    async def put(self, entry: NewEntry, now: float, limits: Limits) -> list[Change]:
        ns = entry.namespace
        space = self.spaces.get(ns)
        if space is None:
            space = self.spaces[ns] = _Space(entry.tenant, entry.model, entry.region, now)
        expires = now + entry.ttl_s
        space.entries[entry.entry_id] = _Entry(entry.response, entry.text, entry.vector, now, expires, now)
        space.entries.move_to_end(entry.entry_id)
        self.lru[(ns, entry.entry_id)] = None
        self.lru.move_to_end((ns, entry.entry_id))
        changes = (
            [Change("add", ns, entry.entry_id, entry.vector, expires)] if entry.vector is not None else []
        )
        for entry_id in [i for i, e in space.entries.items() if e.expires <= now]:
            self._drop(ns, entry_id)
            changes.append(Change("del", ns, entry_id))
        while ns in self.spaces and len(space.entries) > limits.max_entries_per_namespace:
            entry_id = next(iter(space.entries))
            self._drop(ns, entry_id)
            changes.append(Change("del", ns, entry_id))
        while len(self.lru) > limits.max_entries:
            victim_ns, entry_id = next(iter(self.lru))
            self._drop(victim_ns, entry_id)
            changes.append(Change("del", victim_ns, entry_id))
        return changes

    async def flush(self, namespace: str) -> int:
        space = self.spaces.pop(namespace, None)
        if space is None:
            return 0
        for entry_id in space.entries:
            self.lru.pop((namespace, entry_id), None)
        return len(space.entries)

    async def sweep(self, now: float) -> list[Change]:
        changes = []
        for ns, space in list(self.spaces.items()):
            for entry_id in [i for i, e in space.entries.items() if e.expires <= now]:
                self._drop(ns, entry_id)
                changes.append(Change("del", ns, entry_id))
        return changes

    async def namespaces(self, tenant: str | None = None, region: str | None = None) -> list[NamespaceInfo]:
        return [
            NamespaceInfo(ns, s.tenant, s.model, len(s.entries), s.hits, s.created, s.region)
            for ns, s in sorted(self.spaces.items())
            if (tenant is None or s.tenant == tenant) and (region is None or s.region == region)
        ]

    async def entries(self, namespace: str, limit: int) -> list[EntryInfo]:
        space = self.spaces.get(namespace)
        if space is None:
            return []
        out: list[EntryInfo] = []
        for entry_id, e in reversed(space.entries.items()):
            if len(out) >= limit:
                break
            size = len(e.response) + len(e.text) + (e.vector.nbytes if e.vector is not None else 0)
            out.append(
                EntryInfo(
                    entry_id, e.text, e.created, e.expires, e.last_used, e.hits, e.vector is not None, size
                )
            )
        return out

    async def snapshot(self) -> tuple[str, list[Change]]:
        changes = [
            Change("add", ns, entry_id, e.vector, e.expires)
            for ns, space in self.spaces.items()
            for entry_id, e in space.entries.items()
            if e.vector is not None
        ]
        return "0|0", changes

    async def changes(self, after: str, block_ms: int) -> tuple[str, list[Change]] | None:
        await asyncio.sleep(block_ms / 1000)  # one process: nobody else writes
        return after, []

    async def add_counts(self, counts: dict[str, int]) -> None:
        for name, value in counts.items():
            self.stats[name] = self.stats.get(name, 0) + value

    async def counts(self) -> dict[str, int]:
        return dict(self.stats)

    async def check(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None

    def nbytes(self) -> int:
        """Approximate memory held, for the admin statistics."""
        total = sys.getsizeof(self.spaces)
        for space in self.spaces.values():
            for e in space.entries.values():
                total += (
                    len(e.response) + len(e.text) + (e.vector.nbytes if e.vector is not None else 0) + 200
                )
        return total
