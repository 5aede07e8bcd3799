"""`MemoriCapability`: recall into an agent's instructions, record what each run added."""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import SystemPromptFunc

from memori_core import Memori, Scope
from memori_core.scope import validate_session_id
from memori_pydantic_ai._binding import bind_memori
from memori_pydantic_ai._convert import prompt_text, session_id_for, to_core_messages

__all__ = ["MemoriCapability"]

log = logging.getLogger("memori_pydantic_ai")

# Recall once per run, not once per model request: the query (the user prompt) is the same
# for every step of a run, and memory only changes when the run is recorded.
_MAX_CACHED_RUNS = 256


class MemoriCapability(AbstractCapability[Any]):
    """Give a pydantic-ai agent memory: recall into its instructions, record every run.

    ```python
    agent = Agent(model, capabilities=[MemoriCapability("user-123", "support-chat")])
    ```

    - Recall: the memories of `entity_id` (and `process_id`) most relevant to the run's user
      prompt are added to the instructions as a marked block. Instructions are evaluated for
      every run, so the block always reflects the current prompt and never becomes a message
      in the history.
    - Recording: after each run (`run`, `run_sync`, `run_stream` once the stream is consumed,
      `iter` once the run ends) the run's new messages are appended to a memori session: user
      prompts, assistant text, tool calls (`tool_calls`) and tool returns (role `"tool"`), each
      with its exact pydantic-ai JSON in `Message.payload`.
    - Session: `session_id` if given; otherwise one session per pydantic-ai conversation
      (`session_id_for(conversation_id)`), so continuing a conversation continues its session.

    Fails open: if recall or recording fails, the run still succeeds and the error is logged.

    Args:
        entity_id: The end user.
        process_id: The agent or workflow (memories are kept per process).
        session_id: Record every run into this session instead of one per conversation.
            Raises `ScopeError` if the session belongs to another entity or process.
        memori: The `Memori` whose database and settings to use; the capability works on a
            `memori.scoped(entity_id, process_id)` copy, so one `Memori` can serve many agents.
        database_url: Where to store, when `memori` is not given (default: `Memori()`'s).
        recall_limit: At most this many memories per run (default: the `Memori`'s).
    """

    def __init__(
        self,
        entity_id: str,
        process_id: str | None,
        *,
        session_id: uuid.UUID | str | None = None,
        memori: Memori | None = None,
        database_url: str | None = None,
        recall_limit: int | None = None,
        id: str | None = None,
    ) -> None:
        self.id = id
        self._scope = Scope(entity_id, process_id)
        self._memori = bind_memori(self._scope, memori=memori, database_url=database_url)
        self._session_id: str | None = None
        if session_id is not None:
            self._session_id = validate_session_id(session_id)
            # Refuse a session owned by another user or agent now, not at the first run.
            self._memori.set_session(self._session_id)
        self._recall_limit = recall_limit
        self._recalled: OrderedDict[str, str] = OrderedDict()

    @property
    def memori(self) -> Memori:
        """The `Memori` (attributed to this user and agent) this capability reads and writes."""
        return self._memori

    @property
    def entity_id(self) -> str:
        return self._scope.entity_id

    @property
    def process_id(self) -> str | None:
        return self._scope.process_id

    def session_id_for(self, conversation_id: str | None) -> str:
        """The memori session runs of pydantic-ai conversation `conversation_id` are recorded in."""
        if self._session_id is not None:
            return self._session_id
        if conversation_id is None:
            return str(self._memori.config.session_id)
        return session_id_for(self._scope.entity_id, self._scope.process_id, conversation_id)

    def get_instructions(self) -> SystemPromptFunc[Any]:
        """The recall step, evaluated by pydantic-ai for every run (see the class docstring)."""
        return self._instructions

    async def _instructions(self, ctx: RunContext[Any]) -> str:
        """The memory block for this run's user prompt ('' when nothing is relevant)."""
        key = ctx.run_id
        if key is not None and key in self._recalled:
            return self._recalled[key]
        query = _query(ctx.prompt, ctx.messages)
        block = ""
        if query.strip():
            try:
                block = await self._memori.acontext(query, limit=self._recall_limit)
            except Exception:
                log.warning("memori recall failed; running without memories", exc_info=True)
        if key is not None:
            self._recalled[key] = block
            while len(self._recalled) > _MAX_CACHED_RUNS:
                self._recalled.popitem(last=False)
        return block

    async def after_run(
        self, ctx: RunContext[Any], *, result: AgentRunResult[Any]
    ) -> AgentRunResult[Any]:
        """Record the run's new messages (fails open), and return the result unchanged."""
        if ctx.run_id is not None:
            self._recalled.pop(ctx.run_id, None)
        await self._record(ctx.conversation_id, result.new_messages())
        return result

    async def _record(self, conversation_id: str | None, messages: Sequence[ModelMessage]) -> None:
        if not messages:
            return
        try:
            await self._memori.aappend(
                to_core_messages(messages), session_id=self.session_id_for(conversation_id)
            )
        except Exception:
            log.warning("memori could not record the run; it is not stored", exc_info=True)


def _query(prompt: str | Sequence[Any] | None, history: Sequence[ModelMessage]) -> str:
    """The text to recall for: the run's user prompt, else the latest one in the history."""
    if prompt is not None:
        return prompt_text(prompt)
    # A run resumed without a new prompt (deferred tool results, say) is still about the
    # user's last question.
    for message in reversed(history):
        if isinstance(message, ModelRequest):
            for part in reversed(message.parts):
                if isinstance(part, UserPromptPart):
                    return prompt_text(part.content)
    return ""
