"""`MemoriMemory`: a LlamaIndex `BaseMemory` backed by memori-core, for `agent.run(memory=...)`."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import BaseMemory
from pydantic import Field, PrivateAttr, model_validator

from memori_core import Memori, Message, Recalled, Scope, StoredMessage
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

# Payload key of an agent's private copy of a transcript message: the original's id, so a copy
# is known to be "in view" exactly when the original is in the window.
_TRANSCRIPT_ID_KEY = "memori_llamaindex.transcript_id"


def _private_copies(stored: Sequence[StoredMessage]) -> list[Message]:
    """Copies of transcript messages for an agent's own session, tagged with the original id."""
    copies = []
    for s in stored:
        payload = s.message.payload if isinstance(s.message.payload, dict) else {}
        copies.append(dataclasses.replace(s.message, payload={**payload, _TRANSCRIPT_ID_KEY: s.id}))
    return copies


def _transcript_id(stored: StoredMessage) -> int | None:
    payload = stored.message.payload
    value = payload.get(_TRANSCRIPT_ID_KEY) if isinstance(payload, dict) else None
    return value if isinstance(value, int) else None


def _latest_user(stored: Sequence[StoredMessage]) -> StoredMessage | None:
    return next((m for m in reversed(stored) if m.role == "user"), None)


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

    In an `AgentWorkflow` all agents share the workflow's one memory. To keep each agent's
    long-term memory apart while they share the transcript, map agent names to process ids
    (`agent_process_ids={"researcher": "research-agent", ...}`) and run the agents in a
    `MemoriAgentWorkflow`, which tells the memory which agent is acting (`activate_agent`).
    The transcript stays in this memory's session under `process_id`; while a listed agent is
    active, `get()` recalls that agent's memories only, and the messages put are also recorded
    in that agent's own session, so memories are made from them under its process id. An agent
    receiving a handoff also records the user message it now acts on. Agents not listed (and
    no active agent) use `process_id`, whose memories span the whole shared transcript.
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
    agent_process_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Workflow agent name -> process_id its memories are recalled and recorded "
        "under; agents not listed use process_id.",
    )
    active_agent: str | None = Field(
        default=None,
        description="The workflow agent now acting (set by MemoriAgentWorkflow via "
        "activate_agent); None means process_id.",
    )

    _counter: TokenCounter | None = PrivateAttr(default=None)
    _agent_memori: dict[str, Memori] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_agent_scopes(self) -> MemoriMemory:
        for process_id in self.agent_process_ids.values():
            Scope(self.entity_id, process_id)
        return self

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

    def _agent_process_id(self, agent_name: str | None) -> str | None:
        """The process id `agent_name` keeps its own memories under, or None for `process_id`."""
        process_id = self.agent_process_ids.get(agent_name) if agent_name is not None else None
        return process_id if process_id != self.process_id else None

    def _agent_sid(self, process_id: str) -> str:
        # One private session per conversation and agent, derived so a rebuilt copy finds it.
        return session_uuid(f"{self._sid}/agent/{process_id}")

    def _private(self, mem: Memori, agent_name: str | None) -> tuple[Memori, str] | None:
        """The agent's `Memori` and private session id, or None when it uses `process_id`."""
        process_id = self._agent_process_id(agent_name)
        if process_id is None:
            return None
        if self._agent_memori is None:
            self._agent_memori = {}
        agent_mem = self._agent_memori.get(process_id)
        if agent_mem is None:
            agent_mem = mem.scoped(self.entity_id, process_id)
            self._agent_memori[process_id] = agent_mem
        return agent_mem, self._agent_sid(process_id)

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
        private: tuple[str, Sequence[StoredMessage]] | None = None,
    ) -> list[ChatMessage]:
        """The memory block message and the recent-message window, within `token_limit`.

        `private` is the active agent's session id and its messages, when it has its own.
        """
        count = self._count()
        # A memory made only from messages the model sees anyway would repeat them (the
        # current question would come back as a "memory"), so those are left out; an agent's
        # private copy is in view when the transcript message it copies is.
        start = window_start(history, self.token_limit, count)
        in_view: dict[str, set[int]] = {self._sid: {m.id for m in stored[start:]}}
        if private is not None:
            sid, copies = private
            in_view[sid] = {c.id for c in copies if _transcript_id(c) in in_view[self._sid]}
        fresh = [
            r
            for r in recalled
            if not (
                r.session_id in in_view
                and r.source_message_ids
                and in_view[r.session_id].issuperset(r.source_message_ids)
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
        if not query:
            return self._assemble(mem, stored, history, [])
        private = self._private(mem, self.active_agent)
        if private is None:
            return self._assemble(
                mem, stored, history, mem.recall(query, limit=self._recall_limit(mem))
            )
        agent_mem, sid = private
        recalled = agent_mem.recall(query, limit=self._recall_limit(mem))
        return self._assemble(mem, stored, history, recalled, (sid, agent_mem.messages(sid)))

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
            mem = self._open()
            stored = mem.append(new, session_id=self._sid)
            private = self._private(mem, self.active_agent)
            if private is not None:
                agent_mem, sid = private
                agent_mem.append(_private_copies(stored), session_id=sid)

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

        To start a fresh conversation but keep what was learned, use `new_session()`. The
        agents' private copies of this conversation (see `agent_process_ids`) go too.
        """
        mem = self._open()
        mem.clear_session(self._sid)
        for agent_mem, sid in self._all_private(mem):
            agent_mem.clear_session(sid)

    # ---- async twins: the same steps, with memori-core's async I/O ----

    async def aget(
        self, input: str | ChatMessage | None = None, **kwargs: Any
    ) -> list[ChatMessage]:
        """Async `get`."""
        mem = await self._aopen()
        stored = await mem.amessages(self._sid)
        history = [from_memori(m) for m in stored]
        query = self._query(input, history)
        if not query:
            return self._assemble(mem, stored, history, [])
        private = self._private(mem, self.active_agent)
        if private is None:
            recalled = await mem.arecall(query, limit=self._recall_limit(mem))
            return self._assemble(mem, stored, history, recalled)
        agent_mem, sid = private
        recalled = await agent_mem.arecall(query, limit=self._recall_limit(mem))
        copies = await agent_mem.amessages(sid)
        return self._assemble(mem, stored, history, recalled, (sid, copies))

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
            stored = await mem.aappend(new, session_id=self._sid)
            private = self._private(mem, self.active_agent)
            if private is not None:
                agent_mem, sid = private
                await agent_mem.aappend(_private_copies(stored), session_id=sid)

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
        for agent_mem, sid in self._all_private(mem):
            await agent_mem.aclear_session(sid)

    # ---- sessions ----

    def new_session(self) -> str:
        """Continue in a fresh conversation thread; recalled memories are kept. Returns its id."""
        self.session_id = str(uuid.uuid4())
        return self.session_id

    # ---- agents of a workflow ----

    def _all_private(self, mem: Memori) -> list[tuple[Memori, str]]:
        targets = (self._private(mem, name) for name in self.agent_process_ids)
        unique = {t[1]: t for t in targets if t is not None}
        return list(unique.values())

    def activate_agent(self, agent_name: str | None, *, handoff: bool = False) -> None:
        """Recall and record as `agent_name` from now on (None: as `process_id`).

        `MemoriAgentWorkflow` calls this before each agent acts. With `handoff=True` the
        conversation's latest user message is also recorded for the new agent (once), since
        that agent now acts on it. Only agents listed in `agent_process_ids` have memories of
        their own; the transcript is shared either way.
        """
        self.active_agent = agent_name
        if handoff:
            mem = self._open()
            private = self._private(mem, agent_name)
            if private is not None:
                agent_mem, sid = private
                todo = self._handoff_copy(mem.messages(self._sid), agent_mem.messages(sid))
                if todo:
                    agent_mem.append(todo, session_id=sid)

    async def aactivate_agent(self, agent_name: str | None, *, handoff: bool = False) -> None:
        """Async `activate_agent`."""
        self.active_agent = agent_name
        if handoff:
            mem = await self._aopen()
            private = self._private(mem, agent_name)
            if private is not None:
                agent_mem, sid = private
                todo = self._handoff_copy(
                    await mem.amessages(self._sid), await agent_mem.amessages(sid)
                )
                if todo:
                    await agent_mem.aappend(todo, session_id=sid)

    @staticmethod
    def _handoff_copy(
        transcript: Sequence[StoredMessage], copies: Sequence[StoredMessage]
    ) -> list[Message]:
        """The latest user message as a private copy, unless the agent already has it."""
        user = _latest_user(transcript)
        if user is None or any(_transcript_id(c) == user.id for c in copies):
            return []
        return _private_copies([user])
