"""The in-process vector index: one matrix of unit vectors per namespace.

A search is one matrix-vector product over the namespace's rows (exact cosine, no
approximation): at the default cap of 10,000 entries that is a few hundred
microseconds, and 100,000 rows stay in the low milliseconds (bench/cache.py).
Entries carry their expiry so an expired row is never returned, even before the
sweep removes it. The index is a copy: Redis holds the truth, `sync.py` keeps the
copies of all replicas up to date and rebuilds one at start.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from services.kernel.encoder import DIMENSIONS

_MIN_ROWS = 16


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    similarity: float


class NamespaceIndex:
    """Vectors of one namespace; rows are packed (a removal moves the last row into the hole)."""

    __slots__ = ("expires", "ids", "n", "positions", "vectors")

    def __init__(self) -> None:
        self.vectors = np.empty((_MIN_ROWS, DIMENSIONS), dtype=np.float32)
        self.expires = np.empty(_MIN_ROWS, dtype=np.float64)
        self.ids: list[str] = []
        self.positions: dict[str, int] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, entry_id: str, vector: np.ndarray, expires_at: float) -> None:
        """Add or replace a row (idempotent: sync may deliver an entry twice)."""
        row = self.positions.get(entry_id)
        if row is None:
            if self.n == len(self.vectors):
                self._grow()
            row = self.n
            self.n += 1
            self.ids.append(entry_id)
            self.positions[entry_id] = row
        self.vectors[row] = vector
        self.expires[row] = expires_at

    def _grow(self) -> None:
        size = len(self.vectors) + max(len(self.vectors) // 2, _MIN_ROWS)
        vectors = np.empty((size, DIMENSIONS), dtype=np.float32)
        vectors[: self.n] = self.vectors[: self.n]
        expires = np.empty(size, dtype=np.float64)
        expires[: self.n] = self.expires[: self.n]
        self.vectors, self.expires = vectors, expires

    def remove(self, entry_id: str) -> bool:
        row = self.positions.pop(entry_id, None)
        if row is None:
            return False
        last = self.n - 1
        if row != last:
            moved = self.ids[last]
            self.vectors[row] = self.vectors[last]
            self.expires[row] = self.expires[last]
            self.ids[row] = moved
            self.positions[moved] = row
        self.ids.pop()
        self.n = last
        if self.n < len(self.vectors) // 4 and len(self.vectors) > _MIN_ROWS:
            keep = max(self.n * 2, _MIN_ROWS)
            self.vectors = self.vectors[:keep].copy()
            self.expires = self.expires[:keep].copy()
        return True

    def search(self, query: np.ndarray, *, floor: float, k: int, now: float) -> list[Candidate]:
        """Up to `k` live rows with cosine ≥ `floor`, most similar first."""
        if self.n == 0:
            return []
        scores = self.vectors[: self.n] @ query
        scores[self.expires[: self.n] <= now] = -2.0
        if self.n > k:
            top = np.argpartition(scores, -k)[-k:]
            top = top[np.argsort(scores[top])[::-1]]
        else:
            top = np.argsort(scores)[::-1]
        return [Candidate(self.ids[i], float(scores[i])) for i in top if scores[i] >= floor]

    def expired(self, now: float) -> list[str]:
        rows = np.nonzero(self.expires[: self.n] <= now)[0]
        return [self.ids[i] for i in rows]

    def nbytes(self) -> int:
        return self.vectors.nbytes + self.expires.nbytes


class VectorIndex:
    """All namespaces of one replica."""

    def __init__(self) -> None:
        self.spaces: dict[str, NamespaceIndex] = {}

    def add(self, namespace: str, entry_id: str, vector: np.ndarray, expires_at: float) -> None:
        space = self.spaces.get(namespace)
        if space is None:
            space = self.spaces[namespace] = NamespaceIndex()
        space.add(entry_id, vector, expires_at)

    def remove(self, namespace: str, entry_id: str) -> None:
        space = self.spaces.get(namespace)
        if space is not None and space.remove(entry_id) and not space.n:
            del self.spaces[namespace]

    def drop(self, namespace: str) -> None:
        self.spaces.pop(namespace, None)

    def clear(self) -> None:
        self.spaces.clear()

    def search(
        self, namespace: str, query: np.ndarray, *, floor: float, k: int, now: float | None = None
    ) -> list[Candidate]:
        space = self.spaces.get(namespace)
        if space is None:
            return []
        return space.search(query, floor=floor, k=k, now=time.time() if now is None else now)

    def sweep(self, now: float | None = None) -> int:
        """Drop expired rows everywhere; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for namespace in list(self.spaces):
            for entry_id in self.spaces[namespace].expired(now):
                self.remove(namespace, entry_id)
                removed += 1
        return removed

    def __len__(self) -> int:
        return sum(s.n for s in self.spaces.values())

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.spaces.values())
