"""An in-process cache of each scope's memory vectors, so dense search does not re-read them.

Entries grow incrementally (only memories newer than the entry's high-water mark are read on
the next search) and are evicted least-recently-used beyond a total vector budget. Deleted or
superseded memories may linger in an entry; dense search re-checks its hits against the store,
so they are never returned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ScopeVectors", "VectorCache", "similarities"]

CacheKey = tuple[str, str | None, str]


def similarities(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` (cosine similarity of unit vectors) without BLAS.

    A matrix-vector product this small gains nothing from OpenBLAS's threads, which then spin
    on the other cores after every call: on 2 cores `matrix @ vector` over 10k x 384 measured
    4.0 ms and slowed everything running beside it (recall 27 ms vs 13.5 ms); einsum's own
    loop takes 0.6 ms on one core.
    """
    out: np.ndarray = np.einsum("ij,j->i", matrix, vector)
    return out


@dataclass
class ScopeVectors:
    """The vectors of one (entity, process, model), in a buffer that grows by doubling."""

    dimension: int
    # Every memory up to `high_water` is cached or not wanted; up to `looked_up_to` was read
    # when the store's vectors counter stood at `vectors_version` (-1: not known).
    high_water: int = 0
    looked_up_to: int = 0
    vectors_version: int = -1
    size: int = 0
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    buffer: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    seen: set[int] = field(default_factory=set)

    def append(self, ids: list[int], vectors: np.ndarray) -> None:
        if self.dimension == 0:
            self.dimension = int(vectors.shape[1])
            self.buffer = np.zeros((0, self.dimension), dtype=np.float32)
        needed = self.size + len(ids)
        if needed > len(self.ids):
            capacity = max(needed, 2 * len(self.ids), 64)
            grown_ids = np.zeros(capacity, dtype=np.int64)
            grown = np.zeros((capacity, self.dimension), dtype=np.float32)
            grown_ids[: self.size] = self.ids[: self.size]
            grown[: self.size] = self.buffer[: self.size]
            self.ids, self.buffer = grown_ids, grown
        self.ids[self.size : needed] = ids
        self.buffer[self.size : needed] = vectors
        self.size = needed
        self.seen.update(ids)

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        # Views stay valid after a later append reallocates: they keep the old buffer alive.
        return self.ids[: self.size], self.buffer[: self.size]


class VectorCache:
    """LRU over scopes, bounded by the total number of cached vectors."""

    def __init__(self, max_vectors: int = 250_000) -> None:
        self.max_vectors = max_vectors
        self._entries: OrderedDict[CacheKey, ScopeVectors] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: CacheKey, dimension: int) -> ScopeVectors:
        """The entry for `key` (created empty if missing); call with `lock` held.

        `dimension` 0 means "not known yet": taken from the first vectors appended."""
        entry = self._entries.get(key)
        if entry is None or (dimension and entry.dimension and entry.dimension != dimension):
            entry = self._entries[key] = ScopeVectors(dimension)
        self._entries.move_to_end(key)
        return entry

    def evict(self) -> None:
        """Drop least recently used entries beyond the budget; call with `lock` held."""
        total = sum(e.size for e in self._entries.values())
        while total > self.max_vectors and len(self._entries) > 1:
            _, oldest = self._entries.popitem(last=False)
            total -= oldest.size

    def forget_entity(self, entity_id: str) -> None:
        with self.lock:
            for key in [k for k in self._entries if k[0] == entity_id]:
                del self._entries[key]

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()
