"""`MemoriMemoryBlock`: memori-core recall as a block of LlamaIndex's `Memory`."""

from __future__ import annotations

import uuid
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock
from pydantic import Field

from memori_llamaindex._settings import MemoriSettings, session_uuid
from memori_llamaindex.messages import query_text, to_memori_all

__all__ = ["MemoriMemoryBlock"]


def _by_session(messages: list[ChatMessage], default: str) -> dict[str, list[ChatMessage]]:
    """Group flushed messages by the `Memory` session they came from, keeping their order.

    `Memory` tags each flushed message with `additional_kwargs["session_id"]`; that tag is an
    artefact of the flush, so it is dropped from the stored copy.
    """
    groups: dict[str, list[ChatMessage]] = {}
    for message in messages:
        extra = dict(message.additional_kwargs)
        tag = extra.pop("session_id", None)
        sid = session_uuid(tag if isinstance(tag, str) and tag else default)
        groups.setdefault(sid, []).append(message.model_copy(update={"additional_kwargs": extra}))
    return groups


class MemoriMemoryBlock(MemoriSettings, BaseMemoryBlock[str]):
    """Long-term memory from memori-core as a block of `llama_index.core.memory.Memory`.

    `Memory` keeps the recent chat itself and hands this block the messages it flushes out of
    its short-term window; they are recorded in memori-core under the `Memory`'s session, for
    this user and agent. On every `get`, the block recalls memories with the latest user
    message as the query and returns the memory block text, which `Memory` puts in its system
    message.

    Example::

        memory = Memory.from_defaults(
            session_id="chat-42",
            memory_blocks=[MemoriMemoryBlock("user-123", "support-agent")],
        )

    Like `MemoriMemory`, the block is rebuildable from its fields (see there for `memori=`).
    """

    name: str = Field(default="memori", description="The block's name in the memory template.")
    description: str | None = Field(
        default="Memories about the user recalled by memori-core.",
        description="A description of the memory block.",
    )
    session_id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="Session for messages that arrive without a Memory session id.",
    )

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """The memory block recalled for the latest user message ('' when nothing matches)."""
        query = query_text(messages)
        if not query:
            return ""
        mem = await self._aopen()
        return await mem.acontext(query)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Record messages flushed from the short-term memory in memori-core."""
        groups = _by_session(messages, self.session_id)
        if not groups:
            return
        mem = await self._aopen()
        for sid, group in groups.items():
            new = to_memori_all(group)
            if new:
                # record, not append: a re-flushed tail that is already stored is skipped.
                await mem.arecord(new, session_id=sid)
