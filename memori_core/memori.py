"""The facade: `Memori` holds one caller's attribution and session over the shared store."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from memori_core._foreground import foreground
from memori_core.context import format_memory_block, is_memory_block, strip_memory_block
from memori_core.embedding import Embedder, resolve_embedder
from memori_core.errors import (
    ConfigurationError,
    InvalidMessageError,
    StorageError,
    UsageError,
)
from memori_core.extract import Extractor, RuleExtractor, episodic_drafts
from memori_core.indexer import indexer_for
from memori_core.recall import RankingConfig, rank
from memori_core.scope import Scope, validate_id, validate_session_id
from memori_core.store.engine import create_store_engine, resolve_database_url
from memori_core.store.sql import MemoryDraft, SQLStore, text_hash
from memori_core.types import ForgetReport, Message, Recalled, SessionInfo, StoredMessage
from memori_core.vector import VectorIndex

if TYPE_CHECKING:
    from memori_core.llm import LLMRegistry

__all__ = ["Memori", "MemoriConfig"]

log = logging.getLogger("memori_core")

MessageLike = Message | Mapping[str, Any]

_stores: dict[str, SQLStore] = {}
_stores_lock = threading.Lock()


def _shared_store(url: str) -> SQLStore:
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = SQLStore(create_store_engine(url))
        return store


class MemoriConfig:
    """The current attribution of one `Memori`: entity, process and session."""

    __slots__ = ("_session_id", "entity_id", "process_id")

    def __init__(self) -> None:
        self.entity_id: str | None = None
        self.process_id: str | None = None
        self._session_id: uuid.UUID | None = None

    @property
    def session_id(self) -> uuid.UUID:
        """The current session; a new UUID is generated on first use."""
        if self._session_id is None:
            self._session_id = uuid.uuid4()
        return self._session_id

    def __repr__(self) -> str:
        return (
            f"MemoriConfig(entity_id={self.entity_id!r}, process_id={self.process_id!r}, "
            f"session_id={self._session_id!s})"
        )


class Memori:
    """Memory for one caller: who is speaking (`attribution`), in which thread (sessions).

    Cheap to create (one per web request is fine): the database engine and the embedder are
    shared process-wide by URL. An instance is not meant to be shared between threads that
    change its attribution; give each request its own.

    Async methods (`arecord`, `arecall`, ...) run the same implementation in a worker thread
    (`asyncio.to_thread`), because the embedded SQLite driver is synchronous.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        embedder: Embedder | str | None = "default",
        extractor: Extractor | str | None = "default",
        recall_limit: int = 5,
        share_across_processes: bool = False,
        context_token_budget: int = 600,
        ranking: RankingConfig | None = None,
        vector_index: VectorIndex | None = None,
    ) -> None:
        if not isinstance(recall_limit, int) or recall_limit < 1:
            raise ConfigurationError("recall_limit must be a positive int")
        if not isinstance(context_token_budget, int) or context_token_budget < 1:
            raise ConfigurationError("context_token_budget must be a positive int")
        self.database_url = resolve_database_url(database_url)
        self._store = _shared_store(self.database_url)
        self._embedder = resolve_embedder(embedder)
        if vector_index is not None and not isinstance(vector_index, VectorIndex):
            raise ConfigurationError("vector_index must be a VectorIndex (e.g. ChromaIndex)")
        self.vector_index = vector_index
        if extractor == "default":
            self._extractor: Extractor | None = RuleExtractor()
        elif extractor is None or isinstance(extractor, Extractor):
            self._extractor = extractor
        else:
            raise ConfigurationError("extractor must be 'default', None or an Extractor")
        self.recall_limit = recall_limit
        self.share_across_processes = share_across_processes
        self.context_token_budget = context_token_budget
        self.ranking = ranking or RankingConfig()
        self.config = MemoriConfig()
        self._counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._llm: LLMRegistry | None = None

    # -- the user's API -------------------------------------------------------------------------

    @property
    def llm(self) -> LLMRegistry:
        """Register LLM clients: `Memori().llm.register(client)` returns this `Memori`."""
        if self._llm is None:
            from memori_core.llm import LLMRegistry

            self._llm = LLMRegistry(self)
        return self._llm

    def attribution(self, entity_id: str, process_id: str | None = None) -> Memori:
        """Attribute what follows to `entity_id` (the user) and `process_id` (the agent).

        Switching to another entity or process starts a new session. Returns `self`.
        """
        scope = Scope(entity_id, process_id)
        if (scope.entity_id, scope.process_id) != (self.config.entity_id, self.config.process_id):
            if self.config.entity_id is not None:
                self.config._session_id = None
            self.config.entity_id = scope.entity_id
            self.config.process_id = scope.process_id
        return self

    def new_session(self) -> uuid.UUID:
        """Start a new conversation thread and return its id."""
        self.config._session_id = uuid.uuid4()
        return self.config._session_id

    def set_session(self, session_id: uuid.UUID | str) -> None:
        """Continue an existing thread. Raises `ScopeError` if it belongs to another entity or
        process (checked again on every write, so an unreachable database cannot bypass it)."""
        scope = self._require_scope().with_session(validate_session_id(session_id))
        try:
            owner = self._ready().session_owner(scope.session_id or "")
        except StorageError:
            self._count("storage_failures")
            log.warning("could not check the owner of session %s", scope.session_id, exc_info=True)
            owner = None
        if owner is not None and owner != (scope.entity_id, scope.process_id):
            from memori_core.errors import ScopeError

            raise ScopeError(
                f"session {scope.session_id} belongs to another entity or process; "
                "call attribution() with its owner, or new_session()"
            )
        self.config._session_id = uuid.UUID(scope.session_id)

    def scoped(self, entity_id: str, process_id: str | None = None) -> Memori:
        """A new `Memori` with the same database, embedder and settings, attributed to
        `entity_id`/`process_id`; this instance is left as it is."""
        clone = Memori.__new__(Memori)
        clone.database_url = self.database_url
        clone._store = self._store
        clone._embedder = self._embedder
        clone.vector_index = self.vector_index
        clone._extractor = self._extractor
        clone.recall_limit = self.recall_limit
        clone.share_across_processes = self.share_across_processes
        clone.context_token_budget = self.context_token_budget
        clone.ranking = self.ranking
        clone.config = MemoriConfig()
        clone._counters = Counter()
        clone._counters_lock = threading.Lock()
        clone._llm = None
        return clone.attribution(entity_id, process_id)

    @property
    def embedder(self) -> Embedder | None:
        """The embedder in use (None: lexical recall only)."""
        return self._embedder

    @property
    def scope(self) -> Scope:
        """The current attribution and session as a frozen `Scope`."""
        return self._require_scope().with_session(self.config.session_id)

    # -- writing --------------------------------------------------------------------------------

    def record(
        self,
        messages: Iterable[MessageLike],
        *,
        session_id: uuid.UUID | str | None = None,
        at: datetime | None = None,
    ) -> list[StoredMessage]:
        """Store a turn; only the part not already stored.

        Apps often resend their whole history: leading messages that repeat the end of the
        session's transcript are skipped. Injected memory blocks are stripped. Returns the
        messages actually stored.
        """
        return self._write(messages, session_id, at, dedupe_prefix=True)

    def append(
        self,
        messages: Iterable[MessageLike],
        *,
        session_id: uuid.UUID | str | None = None,
        at: datetime | None = None,
    ) -> list[StoredMessage]:
        """Append messages to the session as they are (chat-history semantics, no delta check)."""
        return self._write(messages, session_id, at, dedupe_prefix=False)

    def clear_session(self, session_id: uuid.UUID | str | None = None) -> int:
        """Delete a session's transcript and the memories made from it; return the count."""
        deleted, memory_ids = self._ready().clear_session(self._session_scope(session_id))
        if self.vector_index is not None:
            self.vector_index.delete(memory_ids)
        return deleted

    def forget(self, entity_id: str) -> ForgetReport:
        """Delete everything stored about `entity_id`: sessions, messages, memories and vectors."""
        entity = validate_id(entity_id, "entity_id")
        report = self._ready().forget(entity)
        if self.vector_index is not None:
            removed = self.vector_index.delete_entity(entity)
            report = replace(report, extra={**report.extra, "index_vectors": removed})
        if entity == self.config.entity_id:
            self.config._session_id = None
        return report

    # -- reading --------------------------------------------------------------------------------

    def messages(
        self, session_id: uuid.UUID | str | None = None, *, limit: int | None = None
    ) -> list[StoredMessage]:
        """The session's transcript, oldest first; `limit` keeps the last N messages."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise UsageError("limit must be a non-negative int or None")
        return self._ready().get_messages(self._session_scope(session_id), limit)

    def sessions(self) -> list[SessionInfo]:
        """Sessions of the current entity and process, most recently active first."""
        return self._ready().list_sessions(self._require_scope())

    def recall(self, query: str, *, limit: int | None = None) -> list[Recalled]:
        """The memories of the current entity (and process) most relevant to `query`."""
        return self._recall(query, limit, None)

    def _recall(
        self, query: str, limit: int | None, while_waiting: Callable[[], object] | None
    ) -> list[Recalled]:
        if not isinstance(query, str):
            raise InvalidMessageError(f"query must be a str, got {type(query).__name__}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UsageError("limit must be a positive int or None")
        store = self._ready()
        with foreground(), store.snapshot():
            results = rank(
                store,
                self._require_scope(),
                query,
                embedder=self._embedder,
                limit=limit or self.recall_limit,
                share_across_processes=self.share_across_processes,
                config=self.ranking,
                vector_index=self.vector_index,
                while_waiting=while_waiting,
            )
        self._count("recalls")
        return results

    def context(
        self, query: str, *, limit: int | None = None, token_budget: int | None = None
    ) -> str:
        """The marked memory block to inject for `query` ('' when nothing is relevant)."""
        return self._context(query, limit=limit, token_budget=token_budget)

    def _context(
        self,
        query: str,
        *,
        limit: int | None = None,
        token_budget: int | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> str:
        """`context()`, calling `while_waiting` once while recall waits for the query's
        embedding (in the recall's read transaction)."""
        return format_memory_block(
            self._recall(query, limit, while_waiting), token_budget or self.context_token_budget
        )

    def stats(self) -> dict[str, int]:
        """Counters of this instance: calls, failures that were logged and survived."""
        with self._counters_lock:
            out = dict(self._counters)
        if self._embedder is not None:
            indexer = indexer_for(self._store, self._embedder, self.vector_index)
            out["embedding_failures"] = indexer.failures
        if self._llm is not None:
            for key, value in self._llm.stats().items():
                out[key] = out.get(key, 0) + value
        return out

    def flush(self, timeout: float | None = None) -> None:
        """Retry failed extractions and embed everything still pending, in this thread
        (tests, benchmarks, before shutdown)."""
        self._retry_extraction()
        if self._embedder is not None:
            indexer_for(self._ready(), self._embedder, self.vector_index).flush(timeout)

    def reindex(self) -> int:
        """Rebuild every embedding (and the vector index) from the stored text; return the count.

        Use after changing the embedder or vector index. Runs in the calling thread."""
        store = self._ready()
        if self.vector_index is not None:
            self.vector_index.reset()
        count = store.reset_embeddings()
        self.flush()
        return count

    def close(self) -> None:
        """Unregister LLM clients. The shared engine stays open for other instances."""
        if self._llm is not None:
            self._llm.unregister()

    def __enter__(self) -> Memori:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async twins (same implementation, run in a worker thread) -------------------------------

    async def arecord(
        self,
        messages: Iterable[MessageLike],
        *,
        session_id: uuid.UUID | str | None = None,
        at: datetime | None = None,
    ) -> list[StoredMessage]:
        """Async `record`."""
        return await asyncio.to_thread(self.record, list(messages), session_id=session_id, at=at)

    async def aappend(
        self,
        messages: Iterable[MessageLike],
        *,
        session_id: uuid.UUID | str | None = None,
        at: datetime | None = None,
    ) -> list[StoredMessage]:
        """Async `append`."""
        return await asyncio.to_thread(self.append, list(messages), session_id=session_id, at=at)

    async def aclear_session(self, session_id: uuid.UUID | str | None = None) -> int:
        """Async `clear_session`."""
        return await asyncio.to_thread(self.clear_session, session_id)

    async def aforget(self, entity_id: str) -> ForgetReport:
        """Async `forget`."""
        return await asyncio.to_thread(self.forget, entity_id)

    async def amessages(
        self, session_id: uuid.UUID | str | None = None, *, limit: int | None = None
    ) -> list[StoredMessage]:
        """Async `messages`."""
        return await asyncio.to_thread(self.messages, session_id, limit=limit)

    async def asessions(self) -> list[SessionInfo]:
        """Async `sessions`."""
        return await asyncio.to_thread(self.sessions)

    async def arecall(self, query: str, *, limit: int | None = None) -> list[Recalled]:
        """Async `recall`."""
        return await asyncio.to_thread(self.recall, query, limit=limit)

    async def acontext(
        self, query: str, *, limit: int | None = None, token_budget: int | None = None
    ) -> str:
        """Async `context`."""
        return await asyncio.to_thread(self.context, query, limit=limit, token_budget=token_budget)

    async def aflush(self, timeout: float | None = None) -> None:
        """Async `flush`."""
        await asyncio.to_thread(self.flush, timeout)

    # -- internals ------------------------------------------------------------------------------

    def _ready(self) -> SQLStore:
        self._store.migrate()
        return self._store

    def _count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self._counters[name] += n

    def _require_scope(self) -> Scope:
        if self.config.entity_id is None:
            raise UsageError("call attribution(entity_id=..., process_id=...) first")
        return Scope(self.config.entity_id, self.config.process_id)

    def _session_scope(self, session_id: uuid.UUID | str | None) -> Scope:
        scope = self._require_scope()
        if session_id is None:
            return scope.with_session(self.config.session_id)
        return scope.with_session(validate_session_id(session_id))

    def _write(
        self,
        messages: Iterable[MessageLike],
        session_id: uuid.UUID | str | None,
        at: datetime | None,
        *,
        dedupe_prefix: bool,
    ) -> list[StoredMessage]:
        if isinstance(messages, (str, bytes, Mapping, Message)):
            raise InvalidMessageError("messages must be a list of messages, not a single one")
        coerced = _clean([_coerce(m) for m in messages])
        if not coerced:
            return []
        if at is not None and not isinstance(at, datetime):
            raise UsageError("at must be a datetime")
        with foreground():
            stored = self._ready().write_turn(
                self._session_scope(session_id),
                coerced,
                dedupe_prefix=dedupe_prefix,
                at=None if at is None else at.timestamp(),
                drafts_for=self._drafts,
            )
        self._count("messages_stored", len(stored))
        if stored and self._embedder is not None:
            indexer_for(self._store, self._embedder, self.vector_index).notify()
        return stored

    def _drafts(self, stored: Sequence[StoredMessage]) -> tuple[list[MemoryDraft], bool]:
        """Memories of newly stored messages, and whether extraction failed (to retry later)."""
        drafts = episodic_drafts(stored)
        if self._extractor is None:
            return drafts, False
        try:
            extracted = self._extractor.extract(stored)
        except Exception:
            # The turn is stored regardless; extraction is an enrichment, retried by flush().
            self._count("extraction_failures")
            log.warning("memory extraction failed; the turn is stored", exc_info=True)
            return drafts, True
        return _merge(drafts, extracted), False

    def _retry_extraction(self) -> None:
        if self._extractor is None:
            return
        store = self._ready()
        for scope, stored in store.extraction_backlog(limit=200, max_attempts=5):
            try:
                extracted = self._extractor.extract(stored)
            except Exception:
                self._count("extraction_failures")
                log.warning("extraction retry failed", exc_info=True)
                store.extraction_failed_again([m.id for m in stored])
                continue
            store.resolve_extraction(scope, stored, extracted)


def _merge(episodic: list[MemoryDraft], extracted: list[MemoryDraft]) -> list[MemoryDraft]:
    # A turn that is a single durable statement is kept once, as the fact.
    facts = {text_hash(d.text) for d in extracted}
    return [d for d in episodic if text_hash(d.text) not in facts] + list(extracted)


def _coerce(message: MessageLike) -> Message:
    if isinstance(message, Message):
        return message
    if isinstance(message, Mapping):
        return Message.from_openai(message)
    raise InvalidMessageError(
        f"a message must be a memori_core.Message or a mapping, got {type(message).__name__}"
    )


def _clean(messages: list[Message]) -> list[Message]:
    """Drop injected memory blocks so they are never stored again."""
    out = []
    for message in messages:
        if message.role in {"system", "developer"} and is_memory_block(message.content):
            remainder = strip_memory_block(message.content)
            if not remainder:
                continue
            message = Message(
                role=message.role,
                content=remainder,
                name=message.name,
                tool_calls=message.tool_calls,
                tool_call_id=message.tool_call_id,
                payload=message.payload,
            )
        out.append(message)
    return out
