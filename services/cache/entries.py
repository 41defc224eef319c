"""What the cache keeps, and the contract of the two places that keep it.

`RedisEntries` (store.py) is the distributed store every replica shares;
`MemoryEntries` (memory.py) is the embedded stand-in with the same behaviour in one
process. Both evict by TTL and by least-recent use, per namespace and overall, and
report what they removed so the vector index can follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np


@dataclasses.dataclass(frozen=True, slots=True)
class NewEntry:
    """An answer to keep: `vector` is None for an exact-only entry."""

    namespace: str
    entry_id: str  # the request's exact key: storing the same request twice replaces it
    response: bytes  # the chat.completion, JSON
    text: str  # the prompt the semantic layer compares ("" for exact-only)
    vector: np.ndarray | None
    ttl_s: float
    tenant: str
    model: str
    region: str | None = None  # the region of the router that stored it (part of the namespace)


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """A cached answer as a lookup reads it."""

    response: bytes
    text: str
    created: float  # unix seconds
    expires: float


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_entries_per_namespace: int
    max_entries: int


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What happened to an entry, for the vector index of every replica.

    op "add" carries the vector; "del" removes one entry; "flush" a whole namespace.
    """

    op: str
    namespace: str
    entry_id: str = ""
    vector: np.ndarray | None = None
    expires: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class NamespaceInfo:
    namespace: str
    tenant: str
    model: str
    entries: int
    hits: int
    created: float
    region: str | None = None  # None: stored by a router with no region


@dataclasses.dataclass(frozen=True, slots=True)
class EntryInfo:
    entry_id: str
    text: str
    created: float
    expires: float
    last_used: float
    hits: int
    semantic: bool
    bytes: int


class Entries(Protocol):
    async def get(self, namespace: str, entry_id: str, now: float) -> Stored | None:
        """A live entry, marked as used (an exact hit); None when absent or expired."""
        ...

    async def get_many(self, namespace: str, entry_ids: Sequence[str], now: float) -> list[Stored | None]:
        """Live entries, not marked as used (semantic candidates)."""
        ...

    async def touch(self, namespace: str, entry_id: str, now: float) -> None:
        """Mark an entry as used (a semantic hit)."""
        ...

    async def put(self, entry: NewEntry, now: float, limits: Limits) -> list[Change]:
        """Store `entry` and evict what no longer fits; returns every change, the add first."""
        ...

    async def flush(self, namespace: str) -> int:
        """Delete a namespace; returns how many entries it had."""
        ...

    async def sweep(self, now: float) -> list[Change]:
        """Delete expired entries and empty namespaces."""
        ...

    async def namespaces(self, tenant: str | None = None, region: str | None = None) -> list[NamespaceInfo]:
        """Namespaces, of one tenant and / or one region when given."""
        ...

    async def entries(self, namespace: str, limit: int) -> list[EntryInfo]:
        """The namespace's entries, most recently used first."""
        ...

    async def snapshot(self) -> tuple[str, list[Change]]:
        """Every semantic entry (as "add" changes) and the sync position to follow from."""
        ...

    async def changes(self, after: str, block_ms: int) -> tuple[str, list[Change]] | None:
        """Changes made after `after` (by any replica), waiting up to `block_ms` for one;
        None when `after` is too old to follow (trimmed): rebuild from a snapshot."""
        ...

    async def add_counts(self, counts: dict[str, int]) -> None:
        """Add to the shared statistics (every replica's)."""
        ...

    async def counts(self) -> dict[str, int]: ...

    async def check(self) -> str: ...

    async def aclose(self) -> None: ...
