"""Vector indexes: derived, rebuildable copies of memory embeddings for dense search.

The store keeps every vector beside its text and is the source of truth; the default dense
search runs numpy over the scope's vectors in the store. An external `VectorIndex` (chromadb,
`memori_core.vector.chroma.ChromaIndex`) takes over the search for large scopes, and
`memori-core reindex` rebuilds it from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IndexedVector", "VectorIndex"]


@dataclass(frozen=True, slots=True)
class IndexedVector:
    """One memory's embedding and the scope columns an index filters on."""

    memory_id: int
    entity_id: str
    process_id: str | None
    vector: np.ndarray


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest-neighbour search over memory vectors, always filtered by scope."""

    def upsert(self, model_id: str, items: Sequence[IndexedVector]) -> None: ...

    def search(
        self,
        model_id: str,
        entity_id: str,
        process_ids: Sequence[str | None],
        vector: np.ndarray,
        limit: int,
    ) -> list[tuple[int, float]]:
        """(memory id, cosine similarity), best first, only of `entity_id` and `process_ids`."""
        ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def delete_entity(self, entity_id: str) -> int:
        """Remove every vector of the entity; return how many were removed."""
        ...

    def reset(self) -> None:
        """Remove everything (before a rebuild)."""
        ...
