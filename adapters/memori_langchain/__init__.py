"""LangChain adapter for memori-core: chat history, retriever, agent middleware, LangGraph store.

- `MemoriChatHistory(entity_id, process_id)`: a `BaseChatMessageHistory` (sync and async).
- `MemoriRetriever(entity_id, process_id, k=5)`: recalled memories as `Document`s with their
  score parts in the metadata.
- `memori_langchain.middleware.MemoriMiddleware`: recall before the model and record the turn
  after the run, for `langchain.agents.create_agent` (needs `memori-core[langgraph]`).
- `memori_langchain.store.MemoriStore`: a LangGraph `BaseStore` over memori-core (needs
  `memori-core[langgraph]`).

This package itself needs only `langchain-core` (`pip install "memori-core[langchain]"`).
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "memori_langchain needs langchain-core; install it with "
        '`pip install "memori-core[langchain]"`'
    ) from e

from memori_langchain.chat_history import MemoriChatHistory
from memori_langchain.retriever import MemoriRetriever

__all__ = ["MemoriChatHistory", "MemoriRetriever"]
