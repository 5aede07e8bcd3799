"""`MemoriChatHistory`: a LangChain chat message history stored in memori-core.

```python
from memori_langchain import MemoriChatHistory

history = MemoriChatHistory("user-123", "support-chat", database_url="sqlite:///memori.db")
history.add_messages([HumanMessage("I live in Lisbon"), AIMessage("Noted!")])
history.messages          # [HumanMessage(...), AIMessage(...)], rebuilt exactly
history.session_id        # the memori session (a UUID string) holding this thread
```

Every message is written through the core, so it is part of the user's memory: the OpenAI
interceptor and the other adapters recall it, and `Memori.forget(entity_id)` deletes it.

`RunnableWithMessageHistory` works with it (sync and async), but that class and
`BaseChatMessageHistory` are deprecated in langchain-core 1.x. For new code use
`langchain.agents.create_agent` with `memori_langchain.middleware.MemoriMiddleware` (recall
before the model, record after the run) and a LangGraph checkpointer for the thread's short-term
state; `memori_langchain.store.MemoriStore` is a LangGraph `BaseStore` for long-term items.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from memori_core import Memori, Scope
from memori_langchain._convert import from_core, session_uuid, to_core_list
from memori_langchain._memori import scoped_memori

__all__ = ["MemoriChatHistory"]


class MemoriChatHistory(BaseChatMessageHistory):
    """A chat history for one thread of (`entity_id`, `process_id`), stored by memori-core.

    Args:
        entity_id: The end user.
        process_id: The agent or workflow; two process ids never see each other's threads.
        session_id: The thread. A UUID resumes that memori session (for example one started
            by the OpenAI interceptor); any other string (such as the `session_id` given to
            `RunnableWithMessageHistory`) always maps to the same session of this user and
            agent. `None` starts a new thread; read it back from `.session_id`.
        memori: A `Memori` whose database, embedder and settings to share (through
            `memori.scoped(...)`; the caller's instance keeps its own attribution).
        database_url: Open `Memori(database_url)` instead (the default database if both
            `memori` and `database_url` are omitted).

    Raises:
        InvalidScopeError: a bad entity or process id.
        ScopeError: `session_id` is a UUID of another user's or agent's session (on first use).
    """

    def __init__(
        self,
        entity_id: str,
        process_id: str | None,
        /,
        *,
        session_id: str | uuid.UUID | None = None,
        memori: Memori | None = None,
        database_url: str | None = None,
    ) -> None:
        super().__init__()
        self._memori = scoped_memori(entity_id, process_id, memori, database_url)
        self._scope = Scope(entity_id, process_id)
        if session_id is None:
            session_id = uuid.uuid4()
        self._session_id = session_uuid(
            str(session_id), self._scope.entity_id, self._scope.process_id
        )

    @property
    def session_id(self) -> str:
        """The memori session id (UUID text) this history reads and writes."""
        return self._session_id

    @property
    def memori(self) -> Memori:
        """The `Memori` this history writes through (for recall, stats, forget)."""
        return self._memori

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The thread's messages, oldest first."""
        return [from_core(m) for m in self._memori.messages(self._session_id)]

    async def aget_messages(self) -> list[BaseMessage]:
        """The thread's messages, oldest first."""
        return [from_core(m) for m in await self._memori.amessages(self._session_id)]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append `messages` to the thread in one write (no deduplication)."""
        if messages:
            self._memori.append(to_core_list(messages), session_id=self._session_id)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append `messages` to the thread in one write (no deduplication)."""
        if messages:
            await self._memori.aappend(to_core_list(messages), session_id=self._session_id)

    def clear(self) -> None:
        """Delete the thread's messages and the memories derived from them."""
        self._memori.clear_session(self._session_id)

    async def aclear(self) -> None:
        """Delete the thread's messages and the memories derived from them."""
        await self._memori.aclear_session(self._session_id)
