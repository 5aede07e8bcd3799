"""Serialisable identity and options shared by both LlamaIndex integrations; the lazy `Memori`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from memori_core import Memori, Scope

__all__ = ["MemoriSettings", "session_uuid"]

# "Not given" for the positional ids, which may legitimately be None (process_id).
_UNSET: Any = object()

# Fixed namespace so that a non-UUID session name maps to the same memori session everywhere.
_SESSION_NAMESPACE = uuid.UUID("0b5c4f4e-8a57-4c2e-9a63-4d1c0f6f9a11")


def session_uuid(session_id: str) -> str:
    """The memori session id for a LlamaIndex session id.

    memori-core keys sessions by UUID; LlamaIndex lets users name them freely (`"chat-42"`).
    A UUID string is used as it is; any other name maps to a stable UUID (uuid5), so the same
    name always continues the same thread.
    """
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return str(uuid.uuid5(_SESSION_NAMESPACE, session_id))


class MemoriSettings(BaseModel):
    """Who the memory belongs to and how to open the store: all plain, serialisable fields.

    LlamaIndex rebuilds memory objects from their JSON (`model_dump`) between runs, so nothing
    that matters lives outside these fields: the `Memori` instance is opened lazily from them
    and can always be reopened, because all state is in the store.
    """

    entity_id: str = Field(description="The end user the memories belong to.")
    process_id: str | None = Field(
        description="The agent or workflow; memories are kept apart per process_id."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the memori store; None means MEMORI_DATABASE_URL or "
        "the default file in the user data dir.",
    )
    embedder: Literal["default"] | None = Field(
        default="default",
        description='"default" for the bundled embedding model, None for lexical recall only.',
    )
    recall_limit: int | None = Field(
        default=None, ge=1, description="Memories recalled per query (None: memori's default)."
    )
    context_token_budget: int | None = Field(
        default=None, ge=1, description="Token budget of the memory block (None: memori's default)."
    )
    share_across_processes: bool = Field(
        default=False, description="Also recall the user's entity-wide memories of other processes."
    )

    _memori: Memori | None = PrivateAttr(default=None)

    # `MemoriMemory("alice", "chef")` reads like the other adapters; keywords and JSON
    # round-trips (`model_validate`) work too, and `memori=` lends a caller's instance.
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

    @model_validator(mode="after")
    def _check_scope(self) -> MemoriSettings:
        # Fail at construction, not at the agent's first call, on an unusable id.
        Scope(self.entity_id, self.process_id)
        return self

    def _attach(self, memori: Memori | None) -> None:
        """Use a caller's `Memori` (custom embedder or extractor) instead of opening one.

        A scoped clone is kept, so the caller's instance keeps its own attribution. Options
        given to this object win over the instance's; the rest, with the database URL and a
        lexical-only choice, are copied into the fields, so a copy rebuilt from JSON opens the
        same store with the same settings.
        """
        if memori is None:
            return
        clone = memori.scoped(self.entity_id, self.process_id)
        if self.database_url is None:
            self.database_url = clone.database_url
        if clone.embedder is None:
            self.embedder = None
        for option in ("recall_limit", "context_token_budget", "share_across_processes"):
            if option in self.model_fields_set:
                setattr(clone, option, getattr(self, option))
            else:
                setattr(self, option, getattr(clone, option))
        self._memori = clone

    def _open(self) -> Memori:
        """The `Memori` for this scope, opened from the fields on first use."""
        mem = self._memori
        if mem is None:
            options: dict[str, Any] = {
                "embedder": self.embedder,
                "share_across_processes": self.share_across_processes,
            }
            if self.recall_limit is not None:
                options["recall_limit"] = self.recall_limit
            if self.context_token_budget is not None:
                options["context_token_budget"] = self.context_token_budget
            mem = Memori(self.database_url, **options)
            self._memori = mem
        config = mem.config
        if (config.entity_id, config.process_id) != (self.entity_id, self.process_id):
            mem.attribution(self.entity_id, self.process_id)
        return mem

    async def _aopen(self) -> Memori:
        if self._memori is None:
            # Opening runs migrations and may load the embedding model: keep it off the loop.
            return await asyncio.to_thread(self._open)
        return self._open()

    @property
    def memori(self) -> Memori:
        """The underlying `Memori`, attributed to this entity and process (for recall, stats)."""
        return self._open()

    def __getstate__(self) -> dict[Any, Any]:
        # Private attributes are caches (the live Memori, a tokenizer): never pickle them, they
        # are rebuilt from the fields. Swapped out around the base call because llama-index's
        # BaseComponent would otherwise try to pickle them and edit the live object's dict.
        saved = self.__pydantic_private__
        if saved:
            self.__pydantic_private__ = dict.fromkeys(saved)
        try:
            return super().__getstate__()
        finally:
            self.__pydantic_private__ = saved

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # Fields are immutable values; the copy opens its own Memori and caches on first use.
        clone = self.model_copy()
        if clone.__pydantic_private__:
            clone.__pydantic_private__ = dict.fromkeys(clone.__pydantic_private__)
        return clone
