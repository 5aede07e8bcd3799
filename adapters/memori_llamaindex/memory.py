"""`MemoriMemory`: a LlamaIndex `BaseMemory` backed by memori-core, for `agent.run(memory=...)`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import BaseMemory
from pydantic import Field, PrivateAttr

from memori_core import Memori, Message, Recalled, StoredMessage
from memori_core.context import format_memory_block
from memori_llamaindex._settings import MemoriSettings, session_uuid
from memori_llamaindex.messages import (
    TokenCounter,
    count_message_tokens,
    default_token_counter,
    from_memori,
    message_text,
    query_text,
    to_memori_all,
    window_start,
)

__all__ = ["DEFAULT_TOKEN_LIMIT", "MemoriMemory"]

#: Same default as LlamaIndex's `ChatMemoryBuffer`, the agents' default memory.
DEFAULT_TOKEN_LIMIT = 3000

_UNSET: Any = object()


def _plan_set(stored: Sequence[StoredMessage], new: list[Message]) -> tuple[bool, list[Message]]:
    """Whether `set(new)` must clear the session first, and which messages it then appends.

    Agents call `set` with the whole history on every run (`chat_history=`). When the stored
    transcript is a prefix of it, only the rest is appended, so the session and the memories
    derived from it survive; otherwise the session is replaced.
    """
    if len(stored) <= len(new) and all(s.message == m for s, m in zip(stored, new, strict=False)):
        return False, new[len(stored) :]
    return True, new


class MemoriMemory(MemoriSettings, BaseMemory):
    """Chat memory for LlamaIndex agents: the session's recent messages plus recalled memories.

    `get()` returns a system message holding the memories memori-core recalls for the current
    input (or the latest user message), followed by the session's most recent messages that fit
    in `token_limit`. Messages passed to `put`/`put_messages`/`set` are stored in the session's
    transcript, where memori-core also turns them into long-term memories for this user and
    agent. Every method has a native async twin (`aget`, `aput`, ...), which agents use.

    Example::

        memory = MemoriMemory("user-123", "support-agent")
        await agent.run(user_msg="I'm vegetarian", memory=memory)

    The object is rebuildable from its fields (`MemoriMemory.model_validate(m.model_dump())`
    continues the same session), which LlamaIndex relies on when it restores a `Context`.
    `session_id` is fixed at construction (a new UUID when not given); any string works, a
    non-UUID one is mapped to a stable UUID. For a custom embedder or extractor, pass your own
    `memori=Memori(...)`: the memory works on a scoped copy of it (your instance's attribution
    is untouched) and takes its database URL into `database_url`. That live instance is not
    serialised: a copy rebuilt from JSON opens `Memori(database_url, embedder=embedder)` from
    the fields.

    In an `AgentWorkflow` all agents share the workflow's one memory, so one `process_id`
    covers the workflow; agents run separately each get their own `MemoriMemory`.
    """

    session_id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="The conversation thread, fixed at construction: a rebuilt copy continues it.",
    )
    token_limit: int = Field(
        default=DEFAULT_TOKEN_LIMIT,
        ge=1,
        description="Token budget of what `get()` returns: memory block plus recent messages.",
    )
    tokenizer_fn: Callable[[str], list[Any]] | None = Field(
        default=None,
        exclude=True,
        description="Tokenizer for the token limit; None uses LlamaIndex's Settings.tokenizer.",
    )

    _counter: TokenCounter | None = PrivateAttr(default=None)

    def __init__(
        self,
        entity_id: str = _UNSET,
        process_id: str | None = _UNSET,
        /,
        *,
        memori: Memori | None = None,
        **data: Any,
    ) -> None:
        if entity_id is not _UNSET:
            data["entity_id"] = entity_id
        if process_id is not _UNSET:
            data["process_id"] = process_id
        super().__init__(**data)
        self._attach(memori)

    @classmethod
    def class_name(cls) -> str:
        return "MemoriMemory"

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> MemoriMemory:
        """Create a memory from the constructor's keywords, plus `chat_history` to `set()` first."""
        chat_history: list[ChatMessage] | None = kwargs.pop("chat_history", None)
        kwargs.pop("llm", None)  # other memories size themselves from the LLM; we take token_limit
        memory = cls(**kwargs)
        if chat_history is not None:
            memory.set(chat_history)
        return memory

    # ---- shared, I/O-free steps ----

    @property
    def _sid(self) -> str:
        return session_uuid(self.session_id)

    def _count(self) -> TokenCounter:
        if self._counter is None:
            fn = self.tokenizer_fn
            self._counter = (lambda text: len(fn(text))) if fn else default_token_counter()
        return self._counter

    @staticmethod
    def _query(input: str | ChatMessage | None, history: Sequence[ChatMessage]) -> str:
        if isinstance(input, ChatMessage):
            input = message_text(input)
        return input.strip() if input and input.strip() else query_text(history)

    def _recall_limit(self, mem: Memori) -> int:
        # Ask for extra: memories of messages still in view are dropped afterwards.
        return 2 * (self.recall_limit or mem.recall_limit)

    def _assemble(
        self,
        mem: Memori,
        stored: Sequence[StoredMessage],
        history: list[ChatMessage],
        recalled: Sequence[Recalled],
    ) -> list[ChatMessage]:
        """The memory block message and the recent-message window, within `token_limit`."""
        count = self._count()
        # A memory made only from messages the model sees anyway would repeat them (the
        # current question would come back as a "memory"), so those are left out.
        start = window_start(history, self.token_limit, count)
        in_view = {m.id for m in stored[start:]}
        fresh = [
            r
            for r in recalled
            if not (
                r.session_id == self._sid
                and r.source_message_ids
                and in_view.issuperset(r.source_message_ids)
            )
        ][: self.recall_limit or mem.recall_limit]
        block = format_memory_block(fresh, self.context_token_budget or mem.context_token_budget)
        head = [ChatMessage(role="system", content=block)] if block else []
        used = sum(count_message_tokens(m, count) for m in head)
        return [*head, *history[window_start(history, max(self.token_limit - used, 0), count) :]]

    # ---- sync ----

    def get(  # also takes a ChatMessage, like llama-index's Memory
        self, input: str | ChatMessage | None = None, **kwargs: Any
    ) -> list[ChatMessage]:
        """The memory block for `input` (default: the latest user message) + recent messages."""
        mem = self._open()
        stored = mem.messages(self._sid)
        history = [from_memori(m) for m in stored]
        query = self._query(input, history)
        recalled = mem.recall(query, limit=self._recall_limit(mem)) if query else []
        return self._assemble(mem, stored, history, recalled)

    def get_all(self) -> list[ChatMessage]:
        """Every message of this session, oldest first (no memory block)."""
        return [from_memori(m) for m in self._open().messages(self._sid)]

    def put(self, message: ChatMessage) -> None:
        """Append one message to the session."""
        self.put_messages([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        """Append messages to the session (injected memory-block messages are left out)."""
        new = to_memori_all(messages)
        if new:
            self._open().append(new, session_id=self._sid)

    def set(self, messages: list[ChatMessage]) -> None:
        """Make `messages` the session's history (appends only the new tail when it extends it)."""
        mem = self._open()
        clear, new = _plan_set(mem.messages(self._sid), to_memori_all(messages))
        if clear:
            mem.clear_session(self._sid)
        if new:
            mem.append(new, session_id=self._sid)

    def reset(self) -> None:
        """Delete this session's messages and the memories derived from them.

        To start a fresh conversation but keep what was learned, use `new_session()`.
        """
        self._open().clear_session(self._sid)

    # ---- async twins: the same steps, with memori-core's async I/O ----

    async def aget(
        self, input: str | ChatMessage | None = None, **kwargs: Any
    ) -> list[ChatMessage]:
        """Async `get`."""
        mem = await self._aopen()
        stored = await mem.amessages(self._sid)
        history = [from_memori(m) for m in stored]
        query = self._query(input, history)
        recalled = await mem.arecall(query, limit=self._recall_limit(mem)) if query else []
        return self._assemble(mem, stored, history, recalled)

    async def aget_all(self) -> list[ChatMessage]:
        """Async `get_all`."""
        mem = await self._aopen()
        return [from_memori(m) for m in await mem.amessages(self._sid)]

    async def aput(self, message: ChatMessage) -> None:
        """Async `put`."""
        await self.aput_messages([message])

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        """Async `put_messages`."""
        new = to_memori_all(messages)
        if new:
            mem = await self._aopen()
            await mem.aappend(new, session_id=self._sid)

    async def aset(self, messages: list[ChatMessage]) -> None:
        """Async `set`."""
        mem = await self._aopen()
        clear, new = _plan_set(await mem.amessages(self._sid), to_memori_all(messages))
        if clear:
            await mem.aclear_session(self._sid)
        if new:
            await mem.aappend(new, session_id=self._sid)

    async def areset(self) -> None:
        """Async `reset`."""
        mem = await self._aopen()
        await mem.aclear_session(self._sid)

    # ---- sessions ----

    def new_session(self) -> str:
        """Continue in a fresh conversation thread; recalled memories are kept. Returns its id."""
        self.session_id = str(uuid.uuid4())
        return self.session_id
