"""`MemoriMiddleware`: long-term memory for `langchain.agents.create_agent` (LangChain 1.x).

```python
from langchain.agents import create_agent
from memori_langchain.middleware import MemoriMiddleware

agent = create_agent(model, tools, middleware=[MemoriMiddleware("user-123", "support-chat")])
agent.invoke({"messages": [{"role": "user", "content": "Where do I live?"}]})
```

Before every model call, the memories recalled for the latest user message are added to the
request's system message (the agent state is not changed, so the block is never stored). After
the run, the conversation is recorded; the core stores only the part not stored yet, so agents
that resend their whole history (or keep it in a checkpointer) are recorded once.

Each LangGraph thread (`config={"configurable": {"thread_id": ...}}`) is its own memori session;
without a checkpointer every run goes to the middleware's `session_id`.

Storage failures never fail the agent run: they are logged (logger `memori_langchain`) and the
model is called without memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest
    from langchain.agents.middleware.types import ModelResponse
    from langgraph.runtime import Runtime
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "memori_langchain.middleware needs langchain and langgraph; install them with "
        '`pip install "memori-core[langgraph]"`'
    ) from e

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from memori_core import Memori, Scope
from memori_core.errors import StorageError
from memori_langchain._convert import message_text, session_uuid, to_core_list
from memori_langchain._memori import scoped_memori

__all__ = ["MemoriMiddleware", "with_memory_block"]

logger = logging.getLogger("memori_langchain")

_State = AgentState[Any]
_Handler = Callable[[ModelRequest[Any]], ModelResponse[Any]]
_AsyncHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]


def with_memory_block(system: SystemMessage | None, block: str) -> SystemMessage:
    """`system` with the memory `block` appended (a new message; `system` is unchanged)."""
    if system is None:
        return SystemMessage(content=block)
    content = system.content
    if isinstance(content, str):
        new_content: str | list[str | dict[str, Any]] = (
            f"{content}\n\n{block}" if content else block
        )
    else:
        new_content = [*content, {"type": "text", "text": block}]
    return system.model_copy(update={"content": new_content})


def _latest_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message_text(message)
    return ""


class MemoriMiddleware(AgentMiddleware[_State, Any, Any]):
    """Recall before the model, record after the run, for (`entity_id`, `process_id`).

    Args:
        entity_id: The end user.
        process_id: The agent; memories recorded by other process ids are not recalled
            (unless the `Memori` shares entity-wide memories).
        session_id: The session used when the run has no LangGraph thread id; a new one if
            `None` (see `.session_id`).
        memori, database_url: as for `MemoriChatHistory`.
        recall_limit: at most this many memories per model call (the `Memori` default if `None`).
        inject: add recalled memory to the model request.
        record: record the conversation after each run.
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
        recall_limit: int | None = None,
        inject: bool = True,
        record: bool = True,
    ) -> None:
        super().__init__()
        self._memori = scoped_memori(entity_id, process_id, memori, database_url)
        self._scope = Scope(entity_id, process_id)
        self._session_id = self.session_for(str(session_id or uuid.uuid4()))
        self._recall_limit = recall_limit
        self._inject = inject
        self._record = record

    @property
    def memori(self) -> Memori:
        """The `Memori` this middleware recalls from and records to."""
        return self._memori

    @property
    def session_id(self) -> str:
        """The session of runs that have no LangGraph thread id."""
        return self._session_id

    def session_for(self, thread_id: str | None) -> str:
        """The memori session a LangGraph thread is recorded in."""
        if thread_id is None:
            return self._session_id
        return session_uuid(thread_id, self._scope.entity_id, self._scope.process_id)

    # -- before the model: inject -------------------------------------------------------

    def _request_with(self, request: ModelRequest[Any], block: str) -> ModelRequest[Any]:
        if not block:
            return request
        return request.override(system_message=with_memory_block(request.system_message, block))

    def wrap_model_call(self, request: ModelRequest[Any], handler: _Handler) -> ModelResponse[Any]:
        """Call the model with the recalled memory added to the system message."""
        query = _latest_user_text(request.messages) if self._inject else ""
        block = ""
        if query:
            try:
                block = self._memori.context(query, limit=self._recall_limit)
            except StorageError:
                logger.warning(
                    "memori recall failed; calling the model without memory", exc_info=True
                )
        return handler(self._request_with(request, block))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: _AsyncHandler
    ) -> ModelResponse[Any]:
        """Call the model with the recalled memory added to the system message."""
        query = _latest_user_text(request.messages) if self._inject else ""
        block = ""
        if query:
            try:
                block = await self._memori.acontext(query, limit=self._recall_limit)
            except StorageError:
                logger.warning(
                    "memori recall failed; calling the model without memory", exc_info=True
                )
        return await handler(self._request_with(request, block))

    # -- after the run: record ----------------------------------------------------------

    def _thread_id(self, runtime: Runtime[Any]) -> str | None:
        info = getattr(runtime, "execution_info", None)
        thread_id = getattr(info, "thread_id", None)
        return None if thread_id is None else str(thread_id)

    def _to_record(self, state: _State) -> list[BaseMessage]:
        return list(state.get("messages", [])) if self._record else []

    def after_agent(self, state: _State, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Record the run's conversation (only what is not stored yet)."""
        messages = self._to_record(state)
        if messages:
            session = self.session_for(self._thread_id(runtime))
            try:
                self._memori.record(to_core_list(messages), session_id=session)
            except StorageError:
                logger.warning("memori could not record the agent run", exc_info=True)
        return None

    async def aafter_agent(self, state: _State, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Record the run's conversation (only what is not stored yet)."""
        messages = self._to_record(state)
        if messages:
            session = self.session_for(self._thread_id(runtime))
            try:
                await self._memori.arecord(to_core_list(messages), session_id=session)
            except StorageError:
                logger.warning("memori could not record the agent run", exc_info=True)
        return None
