"""`MemoriRetriever`: a user's recalled memories as LangChain `Document`s.

```python
retriever = MemoriRetriever("user-123", "support-chat", k=3, memori=mem)
docs = retriever.invoke("where does the user live?")
docs[0].page_content         # 'I live in Lisbon'
docs[0].metadata["score"]    # final score; metadata["parts"] says why (lexical, dense, ...)
```
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from memori_core import Memori, Recalled
from memori_langchain._memori import scoped_memori

__all__ = ["MemoriRetriever", "recalled_to_document"]


def recalled_to_document(recalled: Recalled) -> Document:
    """The `Document` for one recalled memory; its metadata says why it was recalled.

    Metadata keys: `id` (memory id), `score`, `parts` (`lexical`, `dense`, `recency`,
    `salience`), `kind`, `created_at` (ISO 8601), `session_id`, `process_id`,
    `source_message_ids`, `times_seen`.
    """
    return Document(
        page_content=recalled.text,
        id=str(recalled.id),
        metadata={
            "id": recalled.id,
            "score": recalled.score,
            "parts": recalled.parts.as_dict(),
            "kind": recalled.kind,
            "created_at": recalled.created_at.isoformat(),
            "session_id": recalled.session_id,
            "process_id": recalled.process_id,
            "source_message_ids": list(recalled.source_message_ids),
            "times_seen": recalled.times_seen,
        },
    )


class MemoriRetriever(BaseRetriever):
    """Recall the `k` most relevant memories of (`entity_id`, `process_id`) for a query.

    Recall follows the core's rules: always filtered by entity, and by process unless the
    `Memori` shares entity-wide memories across processes. `memori` and `database_url` are
    as for `MemoriChatHistory`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    entity_id: str
    process_id: str | None
    k: int = Field(default=5, gt=0)
    _memori: Memori = PrivateAttr()

    def __init__(
        self,
        entity_id: str,
        process_id: str | None,
        /,
        *,
        k: int = 5,
        memori: Memori | None = None,
        database_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        fields: dict[str, Any] = {"entity_id": entity_id, "process_id": process_id, "k": k}
        super().__init__(**fields, **kwargs)
        self._memori = scoped_memori(entity_id, process_id, memori, database_url)

    @property
    def memori(self) -> Memori:
        """The `Memori` recall runs on."""
        return self._memori

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [recalled_to_document(r) for r in self._memori.recall(query, limit=self.k)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        found = await self._memori.arecall(query, limit=self.k)
        return [recalled_to_document(r) for r in found]
