"""One intercepted model call, independent of the endpoint and of sync/async I/O.

A `Turn` is built from the caller's keyword arguments before the call. The driver (sync or
async, in `_registry`) fetches the memory block and, on resume, the session's recent
transcript; the turn turns those into the arguments actually sent, and afterwards into the
messages to record. Nothing here does I/O, so both drivers share every decision.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from memori_core.llm._common import estimate_tokens
from memori_core.types import Message, StoredMessage

__all__ = ["Accumulator", "Turn", "conversation_shape", "select_replay"]

_CONVERSATION_ROLES = frozenset({"user", "assistant", "tool"})
_INSTRUCTION_ROLES = frozenset({"system", "developer"})


class Accumulator(Protocol):
    """Collects a streamed reply chunk by chunk."""

    def add(self, item: Any) -> None:
        """Take one chunk/event as the SDK yielded it."""

    def reply(self, partial: bool) -> Message | None:
        """The assistant message received so far; `partial` marks a reply cut short."""


def _cost(message: Message) -> int:
    extra = json.dumps(message.tool_calls) if message.tool_calls else ""
    return estimate_tokens(message.content + extra)


def select_replay(history: Sequence[StoredMessage], token_budget: int) -> list[Message]:
    """The most recent turns of `history` that fit `token_budget`, as a valid conversation.

    The window starts at a user message (so no tool result loses its call) and drops a trailing
    tool call whose results are missing (the API rejects such a request).
    """
    messages = [s.message for s in history if s.message.role in _CONVERSATION_ROLES]
    chosen: list[Message] = []
    used = 0
    for message in reversed(messages):
        cost = _cost(message)
        if used + cost > token_budget:
            break
        chosen.append(message)
        used += cost
    chosen.reverse()
    start = next((i for i, m in enumerate(chosen) if m.role == "user"), len(chosen))
    chosen = chosen[start:]
    return _drop_unanswered_tool_calls(chosen)


def _drop_unanswered_tool_calls(messages: list[Message]) -> list[Message]:
    i = 0
    while i < len(messages):
        message = messages[i]
        if message.role == "assistant" and message.tool_calls:
            wanted = {c.get("id") for c in message.tool_calls}
            j = i + 1
            while j < len(messages) and messages[j].role == "tool":
                wanted.discard(messages[j].tool_call_id)
                j += 1
            if wanted:
                return messages[:i]
            i = j
        elif message.role == "tool":
            # A tool result without its call right before it (stored out of order).
            return messages[:i]
        else:
            i += 1
    return messages


class Turn(ABC):
    """One intercepted call: what to recall with, what to send, and what to record after.

    Subclasses know one endpoint's argument shapes; they set `caller` (the caller's own
    messages, as `Message`s), `query`, and `resume_shape` (the caller sent no earlier turns).
    """

    def __init__(
        self,
        kwargs: dict[str, Any],
        *,
        stream: bool,
        caller: list[Message],
        query: str,
        resume_shape: bool,
        session_id: str,
        replay_token_budget: int,
    ) -> None:
        self.kwargs = kwargs
        self.stream = stream
        self.caller = caller
        self.query = query
        self.resume_shape = resume_shape
        self.session_id = session_id
        self.replay_token_budget = replay_token_budget
        self.resumed = False
        self.replayed = 0

    @property
    def wants_history(self) -> bool:
        """True if the session's transcript should be read (to replay it on resume)."""
        return self.resume_shape and self.replay_token_budget > 0

    @property
    def all_new(self) -> bool:
        """True if everything `to_record` returns is new (append it, no delta detection).

        The caller sent no earlier turns, so its user message is new even when it repeats the
        end of the transcript word for word ("yes" answered "ok" twice is two turns).
        """
        return self.resume_shape

    def prepare(self, block: str, history: Sequence[StoredMessage]) -> dict[str, Any]:
        """The keyword arguments to send: the caller's, plus the memory block and any replay."""
        self.resumed = bool(history) and self.resume_shape
        replay = select_replay(history, self.replay_token_budget) if self.resumed else []
        self.replayed = len(replay)
        if not block and not replay:
            return self.kwargs
        return self.build(block, replay)

    @abstractmethod
    def build(self, block: str, replay: list[Message]) -> dict[str, Any]:
        """The arguments with `block` injected and `replay` put before the caller's turn."""

    @abstractmethod
    def reply(self, result: Any) -> Message | None:
        """The assistant message in a non-streamed result (None if it holds none)."""

    @abstractmethod
    def accumulator(self) -> Accumulator:
        """A fresh accumulator for this endpoint's stream chunks."""

    def to_record(self, reply: Message | None) -> list[Message]:
        """The caller's messages and the reply; `Memori.record` skips what is already stored.

        On resume the caller's system prompt was stored with the session's first turn, so only
        the new user turn is recorded (otherwise each resumed call would store it again).
        """
        messages = self.caller
        if self.resumed:
            messages = [m for m in messages if m.role not in _INSTRUCTION_ROLES]
        return [*messages, reply] if reply is not None else list(messages)


def conversation_shape(messages: Sequence[Message]) -> tuple[str, bool]:
    """The query (text of the last user message) and whether the caller sent no earlier turns."""
    query = ""
    for message in reversed(messages):
        if message.role == "user":
            query = message.content
            break
    turns = [m for m in messages if m.role not in _INSTRUCTION_ROLES]
    resume_shape = len(turns) == 1 and turns[0].role == "user"
    return query, resume_shape
