"""chromadb as the vector index: embedded (`PersistentClient`) or a Chroma server (`HttpClient`).

Install with `pip install "memori-core[chroma]"`. Embeddings are always computed by memori's
embedder and passed in, so chromadb never loads (or downloads) a model of its own, and its
anonymous telemetry is switched off.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from memori_core.errors import ConfigurationError, StorageError
from memori_core.vector import IndexedVector

__all__ = ["ChromaIndex"]

# chromadb metadata cannot hold None; "" can never be a process id (ids are non-empty).
_NO_PROCESS = ""


class ChromaIndex:
    """A chromadb-backed `VectorIndex`: one collection per embedding model.

    Pass `path=` for an embedded database on disk, `host=`/`port=` for a Chroma server, or an
    existing `client=`.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        host: str | None = None,
        port: int = 8000,
        client: Any = None,
        collection_prefix: str = "memori",
    ) -> None:
        try:
            import chromadb
            from chromadb.config import Settings
        except ImportError as e:
            raise ImportError(
                'ChromaIndex needs chromadb: pip install "memori-core[chroma]"'
            ) from e
        settings = Settings(anonymized_telemetry=False)
        if client is not None:
            self._client = client
        elif host is not None:
            self._client = chromadb.HttpClient(host=host, port=port, settings=settings)
        elif path is not None:
            self._client = chromadb.PersistentClient(path=path, settings=settings)
        else:
            raise ConfigurationError("ChromaIndex needs path=, host= or client=")
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,32}", collection_prefix):
            raise ConfigurationError("collection_prefix must be 1-32 letters, digits, _ or -")
        self._prefix = collection_prefix
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _collection(self, model_id: str) -> Any:
        with self._lock:
            collection = self._collections.get(model_id)
            if collection is None:
                digest = hashlib.blake2b(model_id.encode(), digest_size=6).hexdigest()
                collection = self._client.get_or_create_collection(
                    f"{self._prefix}_{digest}",
                    embedding_function=None,
                    metadata={"hnsw:space": "cosine", "memori_model": model_id},
                )
                self._collections[model_id] = collection
            return collection

    def _all_collections(self) -> list[Any]:
        return [
            self._client.get_collection(c.name if hasattr(c, "name") else c)
            for c in self._client.list_collections()
            if (c.name if hasattr(c, "name") else c).startswith(self._prefix + "_")
        ]

    def upsert(self, model_id: str, items: Sequence[IndexedVector]) -> None:
        if not items:
            return
        try:
            self._collection(model_id).upsert(
                ids=[str(i.memory_id) for i in items],
                embeddings=[np.asarray(i.vector, dtype=np.float32).tolist() for i in items],
                metadatas=[
                    {"entity_id": i.entity_id, "process_key": i.process_id or _NO_PROCESS}
                    for i in items
                ],
            )
        except Exception as e:
            raise StorageError(f"chromadb upsert failed: {e}") from e

    def search(
        self,
        model_id: str,
        entity_id: str,
        process_ids: Sequence[str | None],
        vector: np.ndarray,
        limit: int,
    ) -> list[tuple[int, float]]:
        keys = sorted({p or _NO_PROCESS for p in process_ids})
        # Filters are data structures, never strings: ids cannot change the query.
        where = {"$and": [{"entity_id": entity_id}, {"process_key": {"$in": keys}}]}
        try:
            result = self._collection(model_id).query(
                query_embeddings=[np.asarray(vector, dtype=np.float32).tolist()],
                n_results=limit,
                where=where,
                include=["distances"],
            )
        except Exception as e:
            raise StorageError(f"chromadb query failed: {e}") from e
        ids = result["ids"][0] if result["ids"] else []
        distances = result["distances"][0] if result["distances"] else []
        return [(int(i), 1.0 - float(d)) for i, d in zip(ids, distances, strict=True)]

    def delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        for collection in self._all_collections():
            collection.delete(ids=[str(i) for i in ids])

    def delete_entity(self, entity_id: str) -> int:
        removed = 0
        for collection in self._all_collections():
            found = collection.get(where={"entity_id": entity_id}, include=[])
            if found["ids"]:
                collection.delete(ids=found["ids"])
                removed += len(found["ids"])
        return removed

    def reset(self) -> None:
        with self._lock:
            for collection in self._all_collections():
                self._client.delete_collection(collection.name)
            self._collections.clear()
