"""The store: sessions, the append-only transcript and memories, on SQLite or PostgreSQL.

Every read takes a `Scope` and filters on its columns; ids are always bound parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from memori_core.errors import InvalidVectorError, ScopeError, StorageError
from memori_core.scope import Scope
from memori_core.store import schema
from memori_core.store._prepared import Prepared
from memori_core.store.lexical import scope_prefix, scoped_text, scoped_words
from memori_core.store.schema import (
    FTS_TABLE,
    extraction_backlog,
    memories,
    messages,
    sessions,
)
from memori_core.store.vectors import Int8Rows, VectorCache
from memori_core.types import ForgetReport, Message, SessionInfo, StoredMessage
from memori_core.vector import VectorIndex

__all__ = ["MemoryDraft", "MemoryRow", "SQLStore", "message_hash", "scope_key"]

_TOKEN = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=4096)
def scope_key(entity_id: str, process_id: str | None) -> str:
    """A hash of (entity, process), stored with each memory (the `scope_key` column)."""
    ids = json.dumps([entity_id, process_id]).encode()
    return "s" + hashlib.blake2b(ids, digest_size=10).hexdigest()


def message_hash(message: Message) -> str:
    """Identity of a message for detecting history an app resends."""
    if message.tool_calls or len(message.content) > _REMEMBERED_CHARS:
        return _hash_of(
            message.role, message.content, message.name, message.tool_calls, message.tool_call_id
        )
    # A resent conversation is hashed again at every call: messages without tool calls (most)
    # are remembered by their fields; long ones are not kept (the cache stays a few MB).
    return _plain_message_hash(message.role, message.content, message.name, message.tool_call_id)


_REMEMBERED_CHARS = 2000


@functools.lru_cache(maxsize=2048)
def _plain_message_hash(role: str, content: str, name: str | None, tool_call_id: str | None) -> str:
    return _hash_of(role, content, name, None, tool_call_id)


def _hash_of(
    role: str,
    content: str,
    name: str | None,
    tool_calls: list[dict[str, Any]] | None,
    tool_call_id: str | None,
) -> str:
    body = json.dumps([role, content, name, tool_calls, tool_call_id], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def text_hash(text_value: str) -> str:
    normalised = " ".join(_TOKEN.findall(text_value.lower()))
    return hashlib.sha256(normalised.encode()).hexdigest()


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _eq(column: Any, value: str | None) -> ColumnElement[bool]:
    """`column = value`, where None is its own value (IS NULL), never a wildcard."""
    return column.is_(None) if value is None else column == value  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class MemoryDraft:
    """A memory to store; `fact_key` lets a newer fact supersede an older one."""

    kind: str
    text: str
    salience: float
    source_seq: tuple[int, ...] = ()
    fact_key: str | None = None
    entity_wide: bool = False


@dataclass(frozen=True, slots=True)
class MemoryRow:
    id: int
    entity_id: str
    process_id: str | None
    session_id: str | None
    kind: str
    text: str
    created_at: float
    salience: float
    times_seen: int
    source_message_ids: tuple[int, ...]
    # Read off the text once when the row is fetched (rows are cached), not at every recall.
    word_count: int = 0
    speaker: str | None = None


# An episodic turn spoken by a named participant is stored as "Name: text" (episodic_drafts).
_SPEAKER = re.compile(r"([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,3}): ")


def turn_speaker(kind: str, text: str) -> str | None:
    """Who said an episodic turn (the "Name: " it starts with), else None."""
    if kind != "event":
        return None
    match = _SPEAKER.match(text)
    return match.group(1) if match else None


# ~0.5 KB a row: tens of MB at most, cleared whole when full (a recall refills it in ~1 ms).
ROW_CACHE_SIZE = 50_000


def _searched_processes(scope: Scope, share_across_processes: bool) -> list[str | None]:
    """The processes whose memories a search of `scope` reads: its own, and the entity-wide
    ones (process None) when those are shared."""
    if share_across_processes and scope.process_id is not None:
        return [scope.process_id, None]
    return [scope.process_id]


def _process_is(column: Any, entity_wide: bool) -> ColumnElement[bool]:
    """`column` equals the bound `process`, or IS NULL for an entity-wide scope.

    Two statements, not one with `(:process IS NULL AND ...) OR ...`: an index serves
    `process_id = :p` and `process_id IS NULL`, not a condition that handles both."""
    return column.is_(None) if entity_wide else column == bindparam("process")  # type: ignore[no-any-return]


_MEMORIES_VERSION = text(f"SELECT memories FROM {schema.CHANGE_COUNTERS_TABLE} WHERE id = 1")
_VECTORS_VERSION = text(f"SELECT vectors FROM {schema.CHANGE_COUNTERS_TABLE} WHERE id = 1")
# The columns a recorded message and an episodic memory are inserted with.
_MESSAGE_COLUMNS = (
    "session_id",
    "entity_id",
    "process_id",
    "seq",
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "payload",
    "content_hash",
    "created_at",
)
_MEMORY_COLUMNS = (
    "entity_id",
    "process_id",
    "session_id",
    "kind",
    "text",
    "text_hash",
    "scope_key",
    "lexical_text",
    "fact_key",
    "source_message_ids",
    "created_at",
    "valid_from",
    "salience",
    "times_seen",
    "embed_attempts",
)
_NOTHING_TRUSTED: frozenset[int] = frozenset()


class _Statements:
    """The hot statements of recording and recall, built once per dialect (values are bound),
    each in its variants for a scope with a process and an entity-wide one, and run on the
    driver (`Prepared`)."""

    def __init__(self, dialect: Dialect) -> None:
        name = dialect.name
        insert = pg_insert if name == "postgresql" else sqlite_insert
        upsert = insert(sessions)
        self.upsert_session = Prepared(
            upsert.on_conflict_do_update(
                index_elements=["id"], set_={"last_active_at": upsert.excluded.last_active_at}
            ).returning(sessions.c.entity_id, sessions.c.process_id),
            dialect,
        )
        self.insert_memory = memories.insert().returning(memories.c.id)
        self.insert_memories = Prepared(memories.insert(), dialect, _MEMORY_COLUMNS)
        self.insert_message = Prepared(
            messages.insert().returning(messages), dialect, _MESSAGE_COLUMNS
        )
        wide = (False, True)
        # A session's last `limit` messages' (seq, content_hash), newest first.
        self.tail = {
            w: Prepared(
                self._transcript(w, [messages.c.seq, messages.c.content_hash], limited=True),
                dialect,
            )
            for w in wide
        }
        # A session's messages, oldest first; or its last `limit` of them, newest first.
        self.transcript = {
            (w, limited): Prepared(self._transcript(w, [messages], limited), dialect)
            for w in wide
            for limited in wide
        }
        # Memories of a scope stored after the vector cache last looked.
        self.newer = {w: Prepared(self._newer(w), dialect) for w in wide}
        # Lexical search, also with entity-wide memories (`shared`) for a scope with a process.
        self.lexical = {
            (w, shared): Prepared(self._lexical(name, w, shared), dialect)
            for w in wide
            for shared in wide
        }
        self.memories_version = Prepared(_MEMORIES_VERSION, dialect)
        self.vectors_version = Prepared(_VECTORS_VERSION, dialect)

    @staticmethod
    def _transcript(entity_wide: bool, columns: list[Any], limited: bool) -> Any:
        query = select(*columns).where(
            messages.c.session_id == bindparam("session"),
            messages.c.entity_id == bindparam("entity"),
            _process_is(messages.c.process_id, entity_wide),
        )
        if limited:
            return query.order_by(messages.c.seq.desc()).limit(bindparam("limit"))
        return query.order_by(messages.c.seq)

    @staticmethod
    def _newer(entity_wide: bool) -> Any:
        return (
            select(
                memories.c.id,
                (memories.c.embedding_model == bindparam("model")).label("ready"),
            )
            .where(
                memories.c.entity_id == bindparam("entity"),
                _process_is(memories.c.process_id, entity_wide),
                memories.c.valid_to.is_(None),
                memories.c.id > bindparam("high_water"),
            )
            .order_by(memories.c.id)
        )

    @staticmethod
    def _lexical(dialect: str, entity_wide: bool, shared: bool) -> Any:
        process = _process_is(memories.c.process_id, entity_wide)
        if shared:
            process = or_(process, memories.c.process_id.is_(None))
        visible = and_(
            memories.c.entity_id == bindparam("entity"), process, memories.c.valid_to.is_(None)
        )
        if dialect == "sqlite":
            # ORDER BY bm25() rather than FTS5's `rank` column: the same scores, but SQLite's
            # sorter keeps only the top rows while FTS5's sorts every match (1.5 -> 1.1 ms
            # over ~1,100 matches).
            fts = (
                text(
                    f"SELECT rowid AS id, bm25({FTS_TABLE}) AS score FROM {FTS_TABLE} "
                    f"WHERE {FTS_TABLE} MATCH :match ORDER BY score LIMIT :inner_limit"
                )
                .columns(id=Integer, score=Float)
                .subquery("fts")
            )
            return (
                select(fts.c.id, fts.c.score.label("rank"))
                .join(memories, memories.c.id == fts.c.id)
                .where(visible)
                .order_by(fts.c.score)
                .limit(bindparam("limit"))
            )
        tsvector: ColumnElement[Any] = literal_column("memori_memories.text_tsv")
        tsquery = func.to_tsquery("english", bindparam("q"))
        rank = func.ts_rank_cd(tsvector, tsquery)
        return (
            select(memories.c.id, rank.label("rank"))
            .where(visible, tsvector.op("@@")(tsquery))
            .order_by(rank.desc())
            .limit(bindparam("limit"))
        )


class _ByIds:
    """Hot statements that take a list of memory ids, built once per dialect.

    The list is bound as ONE parameter (a JSON array read by `json_each` on SQLite, an array
    compared with `= ANY` on PostgreSQL): `column.in_(ids)` renders and binds every id anew,
    which was most of a recall's SQL time (~270 ids a recall).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.postgres = dialect.name == "postgresql"
        among: ColumnElement[bool]
        if self.postgres:
            among = memories.c.id == any_(bindparam("ids", type_=postgresql.ARRAY(Integer)))
        else:
            listed = func.json_each(bindparam("ids", type_=String)).table_valued("value")
            among = memories.c.id.in_(select(listed.c.value))
        self.vectors = Prepared(
            select(memories.c.id, memories.c.embedding).where(among).order_by(memories.c.id),
            dialect,
        )
        present = select(
            memories.c.id,
            memories.c.entity_id,
            memories.c.process_id,
            memories.c.text_hash,
            memories.c.times_seen,
            memories.c.source_message_ids,
        ).where(among)
        self.present = Prepared(present, dialect)
        self.present_current = Prepared(present.where(memories.c.valid_to.is_(None)), dialect)
        self.rows = Prepared(
            select(
                memories.c.id,
                memories.c.entity_id,
                memories.c.process_id,
                memories.c.session_id,
                memories.c.kind,
                memories.c.text,
                memories.c.text_hash,
                memories.c.created_at,
                memories.c.salience,
                memories.c.times_seen,
                memories.c.source_message_ids,
            ).where(among),
            dialect,
        )

        # One statement for a whole batch: each turn with the turn before it in its session.
        before = memories.alias("before")
        previous = (
            select(before.c.text)
            .where(
                before.c.session_id == memories.c.session_id,
                before.c.entity_id == memories.c.entity_id,
                before.c.process_id.is_not_distinct_from(memories.c.process_id),
                before.c.kind == "event",
                before.c.valid_to.is_(None),
                before.c.id < memories.c.id,
            )
            .order_by(before.c.id.desc())
            .limit(1)
            .correlate(memories)
            .scalar_subquery()
        )
        self.previous_turns = select(memories.c.id, previous.label("before")).where(
            among,
            memories.c.kind == "event",
            memories.c.session_id.is_not(None),
            memories.c.valid_to.is_(None),
        )

    def bind(self, ids: Sequence[int]) -> dict[str, Any]:
        listed = [int(i) for i in ids]
        return {"ids": listed if self.postgres else json.dumps(listed)}


class SQLStore:
    """Durable storage shared by every `Memori` on the same database URL in this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # The driver module (sqlite3, psycopg): `Prepared` statements raise its errors.
        self._driver_errors: Any = engine.dialect.loaded_dbapi
        self._migrated = False
        self._vectors = VectorCache()
        self._rows: dict[int, tuple[tuple[Any, ...], MemoryRow]] = {}
        self._trusted: tuple[int, set[int]] = (-1, set())
        self._trusted_lock = threading.Lock()
        self._by_ids = _ByIds(engine.dialect)
        self._statements = _Statements(engine.dialect)
        self._migrate_lock = threading.Lock()
        self._snapshot: ContextVar[Connection | None] = ContextVar(
            f"memori_core_snapshot_{id(self):x}", default=None
        )

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the reads inside this block in one read transaction of the calling thread.

        Recall reads several times (lexical hits, new vectors, the candidates' rows); one
        transaction gives them one consistent view of the database and checks a connection out
        of the pool once instead of each time."""
        if self._snapshot.get() is not None:
            yield
            return
        with self._fresh_read() as conn:
            token = self._snapshot.set(conn)
            try:
                yield
            finally:
                self._snapshot.reset(token)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        shared = self._snapshot.get()
        if shared is not None:
            yield shared
            return
        with self._fresh_read() as conn:
            yield conn

    @contextmanager
    def _fresh_read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except (SQLAlchemyError, self._driver_errors.Error) as e:
            raise StorageError(f"database read failed: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(memori_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except IntegrityError as e:
            raise StorageError(f"database write conflicted: {e.orig}") from e
        except self._driver_errors.IntegrityError as e:  # from a `Prepared` statement
            raise StorageError(f"database write conflicted: {e}") from e
        except (SQLAlchemyError, self._driver_errors.Error) as e:
            raise StorageError(f"database write failed: {e}") from e

    def migrate(self) -> list[str]:
        """Bring the schema up to date (idempotent, safe with several processes)."""
        with self._migrate_lock:
            if self._migrated:
                return []
            if self.dialect == "postgresql":
                with self._write() as conn:
                    # Serialise concurrent migrators across processes.
                    conn.execute(text("SELECT pg_advisory_xact_lock(727374)"))
                    applied = schema.migrate(conn)
            else:
                with self._write() as conn:
                    applied = schema.migrate(conn)
            self._migrated = True
            return applied

    # -- sessions -----------------------------------------------------------------------------

    def session_owner(self, session_id: str) -> tuple[str, str | None] | None:
        with self._read() as conn:
            row = conn.execute(
                select(sessions.c.entity_id, sessions.c.process_id).where(
                    sessions.c.id == session_id
                )
            ).first()
        return None if row is None else (row.entity_id, row.process_id)

    def _ensure_session(self, conn: Connection, scope: Scope, now: float) -> None:
        assert scope.session_id is not None
        # One statement creates or touches the session and says whose it is. Updating the row
        # also locks it on PostgreSQL, which serialises writers of one session (SQLite's
        # BEGIN IMMEDIATE already does), so sequence numbers never collide.
        (owner,) = self._statements.upsert_session.rows(
            conn,
            {
                "id": scope.session_id,
                "entity_id": scope.entity_id,
                "process_id": scope.process_id,
                "created_at": now,
                "last_active_at": now,
            },
        )
        if (owner.entity_id, owner.process_id) != (scope.entity_id, scope.process_id):
            raise ScopeError(f"session {scope.session_id} belongs to another entity or process")

    def list_sessions(self, scope: Scope) -> list[SessionInfo]:
        count = select(func.count()).where(messages.c.session_id == sessions.c.id).scalar_subquery()
        query = (
            select(sessions, count.label("n"))
            .where(
                sessions.c.entity_id == scope.entity_id,
                _eq(sessions.c.process_id, scope.process_id),
            )
            .order_by(sessions.c.last_active_at.desc(), sessions.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            SessionInfo(
                id=r.id,
                entity_id=r.entity_id,
                process_id=r.process_id,
                created_at=_ts(r.created_at),
                last_active_at=_ts(r.last_active_at),
                message_count=r.n,
            )
            for r in rows
        ]

    # -- transcript ---------------------------------------------------------------------------

    @staticmethod
    def _scope_filter_messages(scope: Scope) -> ColumnElement[bool]:
        return and_(
            messages.c.session_id == scope.session_id,
            messages.c.entity_id == scope.entity_id,
            _eq(messages.c.process_id, scope.process_id),
        )

    def get_messages(self, scope: Scope, limit: int | None = None) -> list[StoredMessage]:
        query = self._statements.transcript[(scope.process_id is None, limit is not None)]
        params = {
            "session": scope.session_id,
            "entity": scope.entity_id,
            "process": scope.process_id,
            "limit": limit,
        }
        with self._read() as conn:
            rows = query.rows(conn, params)
        if limit is not None:
            rows.reverse()
        return [self._stored(r) for r in rows]

    @staticmethod
    def _stored(r: Any) -> StoredMessage:
        return StoredMessage(
            id=r.id,
            session_id=r.session_id,
            entity_id=r.entity_id,
            process_id=r.process_id,
            seq=r.seq,
            message=Message(
                role=r.role,
                content=r.content,
                name=r.name,
                tool_calls=json.loads(r.tool_calls) if r.tool_calls else None,
                tool_call_id=r.tool_call_id,
                payload=json.loads(r.payload) if r.payload is not None else None,
            ),
            created_at=_ts(r.created_at),
        )

    def write_turn(
        self,
        scope: Scope,
        new_messages: Sequence[Message],
        *,
        dedupe_prefix: bool,
        at: float | None,
        drafts_for: Any,
    ) -> list[StoredMessage]:
        """Append messages to the session (skipping an already-stored prefix if asked) and the
        memories `drafts_for(stored_messages)` derives from them, in one write transaction."""
        now = time.time()
        created = at if at is not None else now
        hashes = [message_hash(m) for m in new_messages]
        with self._write() as conn:
            self._ensure_session(conn, scope, now)
            tail = self._statements.tail[scope.process_id is None].rows(
                conn,
                {
                    "session": scope.session_id,
                    "entity": scope.entity_id,
                    "process": scope.process_id,
                    "limit": max(len(new_messages), 1),
                },
            )
            last_seq = tail[0].seq if tail else 0
            skip = 0
            if dedupe_prefix and tail:
                stored_tail = [r.content_hash for r in reversed(tail)]
                skip = _overlap(stored_tail, hashes)
            rows = []
            for offset, (message, digest) in enumerate(
                zip(new_messages[skip:], hashes[skip:], strict=True), start=1
            ):
                rows.append(
                    {
                        "session_id": scope.session_id,
                        "entity_id": scope.entity_id,
                        "process_id": scope.process_id,
                        "seq": last_seq + offset,
                        "role": message.role,
                        "content": message.content,
                        "name": message.name,
                        "tool_calls": json.dumps(message.tool_calls)
                        if message.tool_calls
                        else None,
                        "tool_call_id": message.tool_call_id,
                        "payload": None
                        if message.payload is None
                        else json.dumps(message.payload, allow_nan=False),
                        "content_hash": digest,
                        "created_at": created,
                    }
                )
            if not rows:
                return []
            insert = self._statements.insert_message
            stored = [self._stored(insert.rows(conn, row)[0]) for row in rows]
            drafts, extraction_failed = drafts_for(stored)
            if drafts:
                by_seq = {m.seq: m.id for m in stored}
                self._add_memories(conn, scope, drafts, by_seq, created)
            if extraction_failed:
                # Kept with the turn, so a later retry (any process) can extract it.
                conn.execute(
                    extraction_backlog.insert(),
                    [{"message_id": m.id, "attempts": 1, "created_at": now} for m in stored],
                )
        return stored

    # -- extraction retries ---------------------------------------------------------------------

    def extraction_backlog(
        self, limit: int, max_attempts: int
    ) -> list[tuple[Scope, list[StoredMessage]]]:
        """Messages whose extraction failed, grouped by session, oldest first."""
        query = (
            select(messages)
            .join(extraction_backlog, extraction_backlog.c.message_id == messages.c.id)
            .where(extraction_backlog.c.attempts < max_attempts)
            .order_by(messages.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        groups: dict[str, tuple[Scope, list[StoredMessage]]] = {}
        for row in rows:
            stored = self._stored(row)
            if stored.session_id not in groups:
                scope = Scope(stored.entity_id, stored.process_id, stored.session_id)
                groups[stored.session_id] = (scope, [])
            groups[stored.session_id][1].append(stored)
        return list(groups.values())

    def resolve_extraction(
        self, scope: Scope, stored: Sequence[StoredMessage], drafts: Sequence[MemoryDraft]
    ) -> None:
        """Store the memories a retried extraction produced and clear the backlog rows."""
        with self._write() as conn:
            by_seq = {m.seq: m.id for m in stored}
            created = min(m.created_at.timestamp() for m in stored)
            self._add_memories(conn, scope, drafts, by_seq, created)
            conn.execute(
                delete(extraction_backlog).where(
                    extraction_backlog.c.message_id.in_([m.id for m in stored])
                )
            )

    def extraction_failed_again(self, ids: Sequence[int]) -> None:
        with self._write() as conn:
            conn.execute(
                update(extraction_backlog)
                .where(extraction_backlog.c.message_id.in_(list(ids)))
                .values(attempts=extraction_backlog.c.attempts + 1)
            )

    def clear_session(self, scope: Scope) -> tuple[int, list[int]]:
        """Delete a session's messages and derived memories: (messages deleted, memory ids)."""
        derived = and_(
            memories.c.session_id == scope.session_id,
            memories.c.entity_id == scope.entity_id,
            _eq(memories.c.process_id, scope.process_id),
        )
        with self._write() as conn:
            ids = [int(i) for i in conn.execute(select(memories.c.id).where(derived)).scalars()]
            conn.execute(delete(memories).where(derived))
            result = conn.execute(delete(messages).where(self._scope_filter_messages(scope)))
        return result.rowcount or 0, ids

    # -- memories -----------------------------------------------------------------------------

    def _add_memories(
        self,
        conn: Connection,
        scope: Scope,
        drafts: Sequence[MemoryDraft],
        by_seq: dict[int, int],
        created: float,
    ) -> None:
        # A turn's episodic memories are inserted by one statement (their ids are not needed);
        # a fact is inserted alone, in its place among them, since it may merge or supersede.
        events: list[dict[str, Any]] = []
        for draft in drafts:
            process_id = None if draft.entity_wide else scope.process_id
            digest = text_hash(draft.text)
            source_ids = [by_seq[s] for s in draft.source_seq if s in by_seq]
            values = {
                "entity_id": scope.entity_id,
                "process_id": process_id,
                "session_id": scope.session_id,
                "kind": draft.kind,
                "text": draft.text,
                "text_hash": digest,
                "scope_key": scope_key(scope.entity_id, process_id),
                "lexical_text": scoped_text(scope_prefix(scope.entity_id, process_id), draft.text)
                if self.dialect == "sqlite"
                else None,
                "fact_key": draft.fact_key,
                "source_message_ids": json.dumps(source_ids),
                "created_at": created,
                "valid_from": created,
                "salience": draft.salience,
                "times_seen": 1,
                "embed_attempts": 0,
            }
            if draft.kind == "event" and draft.fact_key is None:
                events.append(values)
                continue
            if events:
                self._statements.insert_memories.run_many(conn, events)
                events = []
            if draft.kind != "event":
                existing = conn.execute(
                    select(memories.c.id, memories.c.source_message_ids).where(
                        memories.c.entity_id == scope.entity_id,
                        _eq(memories.c.process_id, process_id),
                        memories.c.text_hash == digest,
                        memories.c.kind != "event",
                        memories.c.valid_to.is_(None),
                    )
                ).first()
                if existing is not None:
                    merged = json.loads(existing.source_message_ids) + source_ids
                    conn.execute(
                        update(memories)
                        .where(memories.c.id == existing.id)
                        .values(
                            times_seen=memories.c.times_seen + 1,
                            source_message_ids=json.dumps(merged[-50:]),
                            valid_from=created,
                        )
                    )
                    continue
            new_id = conn.execute(self._statements.insert_memory, values).scalar_one()
            if draft.fact_key is not None:
                conn.execute(
                    update(memories)
                    .where(
                        memories.c.entity_id == scope.entity_id,
                        _eq(memories.c.process_id, process_id),
                        memories.c.fact_key == draft.fact_key,
                        memories.c.valid_to.is_(None),
                        memories.c.id != new_id,
                    )
                    .values(valid_to=created, superseded_by=new_id)
                )
        if events:
            self._statements.insert_memories.run_many(conn, events)

    @staticmethod
    def _visible(scope: Scope, share_across_processes: bool) -> ColumnElement[bool]:
        process = _eq(memories.c.process_id, scope.process_id)
        if share_across_processes and scope.process_id is not None:
            process = or_(process, memories.c.process_id.is_(None))
        return and_(memories.c.entity_id == scope.entity_id, process, memories.c.valid_to.is_(None))

    def lexical_search(
        self, scope: Scope, query: str, limit: int, share_across_processes: bool
    ) -> list[tuple[int, float]]:
        """Memory ids with a lexical relevance score (higher is better), best first."""
        terms = list(dict.fromkeys(t.lower() for t in _TOKEN.findall(query)))[:32]
        if not terms:
            return []
        entity_wide = scope.process_id is None
        shared = share_across_processes and not entity_wide
        statement = self._statements.lexical[(entity_wide, shared)]
        params: dict[str, Any] = {
            "entity": scope.entity_id,
            "process": scope.process_id,
            "limit": limit,
        }
        if self.dialect == "sqlite":
            prefixes = [scope_prefix(scope.entity_id, scope.process_id)]
            if shared:
                prefixes.append(scope_prefix(scope.entity_id, None))
            words = scoped_words(prefixes, terms)
            if not words:
                return []
            # Only digits and letters reach the MATCH string: ids are never FTS syntax.
            params["match"] = " OR ".join(f'"{word}"' for word in words)
            # The index search keeps only its best rows; the margin covers superseded
            # memories that the join drops.
            params["inner_limit"] = limit + 32
            sign = -1.0  # FTS5's bm25() is negated (lower is better)
        else:
            params["q"] = " | ".join(_pg_lexeme(t) for t in terms)
            sign = 1.0
        with self._read() as conn:
            rows = statement.rows(conn, params)
        return [(int(r.id), sign * float(r.rank)) for r in rows]

    def _scope_vectors(
        self, entity_id: str, process_id: str | None, model_id: str, dimension: int
    ) -> tuple[np.ndarray, Int8Rows]:
        """(ids, matrix) of one (entity, process)'s vectors of `model_id`, from the cache,
        after reading only what was stored since the cache last looked."""
        key = (entity_id, process_id, model_id)
        statement = self._statements.newer[process_id is None]
        with self._read() as conn:
            # Memories still waiting for a vector are read again until they have one; on
            # SQLite only once a vector was written somewhere since the last look.
            version = (
                self._statements.vectors_version.scalar(conn) if self.dialect == "sqlite" else None
            )
            with self._vectors.lock:
                entry = self._vectors.get(key, dimension)
                high_water = entry.high_water
                start = high_water
                if version is not None and version == entry.vectors_version:
                    start = max(high_water, entry.looked_up_to)
            newer = statement.rows(
                conn,
                {
                    "entity": entity_id,
                    "process": process_id,
                    "model": model_id,
                    "high_water": start,
                },
            )
            with self._vectors.lock:
                seen = self._vectors.get(key, dimension).seen
                wanted = [int(r.id) for r in newer if r.ready and int(r.id) not in seen]
            blobs: list[Any] = []
            for chunk_start in range(0, len(wanted), 500):
                chunk = wanted[chunk_start : chunk_start + 500]
                blobs.extend(self._by_ids.vectors.rows(conn, self._by_ids.bind(chunk)))
        pending = [int(r.id) for r in newer if not r.ready]
        # Memories still waiting for a vector are read again next time; the rest are cached.
        if start > high_water:
            new_high_water = high_water  # the pending rows skipped over still wait
        elif pending:
            new_high_water = pending[0] - 1
        elif newer:
            new_high_water = int(newer[-1].id)
        else:
            new_high_water = high_water
        looked_up_to = int(newer[-1].id) if newer else start
        with self._vectors.lock:
            entry = self._vectors.get(key, dimension)
            fresh = [b for b in blobs if int(b.id) not in entry.seen]
            if fresh:
                vectors = np.vstack([np.frombuffer(b.embedding, dtype=np.float32) for b in fresh])
                if entry.dimension in (0, vectors.shape[1]):
                    entry.append([int(b.id) for b in fresh], vectors)
            entry.high_water = max(entry.high_water, new_high_water)
            if version is not None:
                if version > entry.vectors_version:
                    entry.vectors_version, entry.looked_up_to = version, looked_up_to
                elif version == entry.vectors_version:
                    entry.looked_up_to = max(entry.looked_up_to, looked_up_to)
            ids, matrix = entry.view()
            self._vectors.evict()
        return ids, matrix

    def scope_vectors(
        self, scope: Scope, model_id: str, share_across_processes: bool, dimension: int = 0
    ) -> tuple[np.ndarray, Int8Rows | None]:
        """Every cached vector of the scope: (memory ids, rows), or (empty ids, None).

        May include memories deleted or superseded since they were cached; `get_memories`
        drops those, so rank through it."""
        process_ids = _searched_processes(scope, share_across_processes)
        parts = [self._scope_vectors(scope.entity_id, p, model_id, dimension) for p in process_ids]
        return self._joined(parts)

    def cached_scope_vectors(
        self, scope: Scope, model_id: str, share_across_processes: bool
    ) -> tuple[np.ndarray, Int8Rows | None]:
        """`scope_vectors` as the cache holds them now, without reading the store: the
        memories embedded since it last looked are missing. The rows `scope_vectors` returns
        next start with these while the cache keeps the scope."""
        process_ids = _searched_processes(scope, share_across_processes)
        with self._vectors.lock:
            entries = [self._vectors.peek((scope.entity_id, p, model_id)) for p in process_ids]
            parts = [entry.view() for entry in entries if entry is not None]
        return self._joined(parts)

    @staticmethod
    def _joined(
        parts: list[tuple[np.ndarray, Int8Rows]],
    ) -> tuple[np.ndarray, Int8Rows | None]:
        parts = [(ids, matrix) for ids, matrix in parts if len(ids)]
        if not parts:
            return np.zeros(0, dtype=np.int64), None
        if len(parts) == 1:
            return parts[0]
        return (
            np.concatenate([ids for ids, _ in parts]),
            Int8Rows.concat([rows for _, rows in parts]),
        )

    def dense_search(
        self,
        scope: Scope,
        model_id: str,
        vector: np.ndarray,
        limit: int,
        share_across_processes: bool,
        index: VectorIndex | None = None,
    ) -> list[tuple[int, float]]:
        """Memory ids with cosine similarity to `vector`, best first, within the scope."""
        query_vector = np.asarray(vector, dtype=np.float32)
        process_ids = _searched_processes(scope, share_across_processes)
        if index is not None:
            hits = index.search(model_id, scope.entity_id, process_ids, query_vector, limit)
        else:
            hits = []
            for process_id in process_ids:
                ids, matrix = self._scope_vectors(
                    scope.entity_id, process_id, model_id, len(query_vector)
                )
                if not len(ids):
                    continue
                scores = matrix.similarities(query_vector)
                # Over-fetch: a few cached hits may have been deleted or superseded since.
                k = min(len(ids), 2 * limit)
                top = np.argpartition(-scores, k - 1)[:k]
                hits.extend((int(ids[i]), float(scores[i])) for i in top)
            hits.sort(key=lambda hit: -hit[1])
            hits = hits[: 2 * limit]
        if not hits:
            return []
        # The cache and any external index are derived data: keep only what the store says is
        # visible in this scope now.
        with self._read() as conn:
            visible = set(
                conn.execute(
                    select(memories.c.id).where(
                        self._visible(scope, share_across_processes),
                        memories.c.id.in_([memory_id for memory_id, _ in hits]),
                    )
                ).scalars()
            )
        return [(i, score) for i, score in hits if i in visible][:limit]

    def get_memories(
        self, ids: Sequence[int], *, include_superseded: bool = False
    ) -> dict[int, MemoryRow]:
        """The memories with these ids that still exist (and are current, by default)."""
        if not ids:
            return {}
        wanted = list(ids)
        # Rows are kept in memory; each recall reads back only the columns that can change
        # (a fact's repeat count and sources) and the ones that identify the row: a rowid can
        # be reused after a delete, and must never bring back a forgotten memory's text. On
        # SQLite not even that while no memory was deleted or changed since the cached row
        # was last checked (a counter kept by migration 0004's triggers).
        by_ids = self._by_ids
        presence = by_ids.present if include_superseded else by_ids.present_current
        cache = self._rows
        counted = self.dialect == "sqlite" and not include_superseded
        out: dict[int, MemoryRow] = {}
        missing: list[int] = []
        with self._read() as conn:
            version = self._statements.memories_version.scalar(conn) if counted else None
            trusted = self._trusted_rows(version)
            unchecked: list[int] = []
            for memory_id in wanted:
                known = cache.get(memory_id) if memory_id in trusted else None
                if known is None:
                    unchecked.append(memory_id)
                else:
                    out[memory_id] = known[1]
            present = presence.rows(conn, by_ids.bind(unchecked)) if unchecked else []
            for check in present:
                known = cache.get(check.id)
                if known is not None and known[0] == tuple(check):
                    out[check.id] = known[1]
                else:
                    missing.append(check.id)
            if missing:
                rows = by_ids.rows.rows(conn, by_ids.bind(missing))
        self._trust_rows(version, [i for i in out if i not in trusted])
        if not missing:
            return out
        if len(cache) > ROW_CACHE_SIZE:
            cache.clear()
            with self._trusted_lock:
                self._trusted = (-1, set())
        for r in rows:
            row = MemoryRow(
                id=r.id,
                entity_id=r.entity_id,
                process_id=r.process_id,
                session_id=r.session_id,
                kind=r.kind,
                text=r.text,
                created_at=r.created_at,
                salience=r.salience,
                times_seen=r.times_seen,
                source_message_ids=tuple(json.loads(r.source_message_ids)),
                word_count=len(r.text.split()),
                speaker=turn_speaker(r.kind, r.text),
            )
            out[r.id] = row
            cache[row.id] = (
                (r.id, r.entity_id, r.process_id, r.text_hash, r.times_seen, r.source_message_ids),
                row,
            )
        self._trust_rows(version, missing)
        return out

    def _trusted_rows(self, version: int | None) -> frozenset[int] | set[int]:
        """Ids whose cached rows were checked current at memories-version `version`."""
        if version is None:
            return _NOTHING_TRUSTED
        with self._trusted_lock:
            checked_at, ids = self._trusted
        return ids if checked_at == version else _NOTHING_TRUSTED

    def _trust_rows(self, version: int | None, ids: Sequence[int]) -> None:
        """Remember that these rows were checked (or read) current at `version`."""
        if version is None or not ids:
            return
        with self._trusted_lock:
            checked_at, trusted = self._trusted
            if version > checked_at:
                # Something was deleted or changed: only rows checked since count.
                self._trusted = (version, set(ids))
            elif version == checked_at:
                trusted.update(ids)
            # An older version: a read that began before the change; its checks prove nothing now.

    def list_memories(
        self, scope: Scope, share_across_processes: bool, include_superseded: bool = False
    ) -> list[MemoryRow]:
        condition = self._visible(scope, share_across_processes)
        if include_superseded:
            condition = and_(
                memories.c.entity_id == scope.entity_id,
                _eq(memories.c.process_id, scope.process_id),
            )
        with self._read() as conn:
            ids = list(conn.execute(select(memories.c.id).where(condition)).scalars())
        rows = self.get_memories(ids, include_superseded=include_superseded)
        return [rows[i] for i in sorted(rows)]

    # -- embeddings ---------------------------------------------------------------------------

    def pending_embeddings(
        self, model_id: str, limit: int, max_attempts: int
    ) -> list[tuple[int, str, str, str | None]]:
        """(id, text, entity_id, process_id) of memories without a vector of `model_id`."""
        query = (
            select(memories.c.id, memories.c.text, memories.c.entity_id, memories.c.process_id)
            .where(
                or_(memories.c.embedding_model.is_(None), memories.c.embedding_model != model_id),
                memories.c.embed_attempts < max_attempts,
                memories.c.valid_to.is_(None),
            )
            .order_by(memories.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                (int(r.id), r.text, r.entity_id, r.process_id) for r in conn.execute(query).all()
            ]

    def previous_turns(self, ids: Sequence[int]) -> dict[int, str]:
        """For each episodic turn (`event` memory) among `ids`: the text of the turn before it
        in its session and scope, when there is one (the context it is embedded with)."""
        if not ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(self._by_ids.previous_turns, self._by_ids.bind(ids)).all()
        return {int(r.id): str(r.before) for r in rows if r.before is not None}

    def set_embeddings(
        self, model_id: str, dimension: int, items: Sequence[tuple[int, np.ndarray]]
    ) -> None:
        payload = []
        for memory_id, vector in items:
            array = np.asarray(vector, dtype=np.float32)
            if array.shape != (dimension,):
                raise InvalidVectorError(
                    f"embedding for memory {memory_id} has shape {array.shape}, "
                    f"expected ({dimension},)"
                )
            if not np.all(np.isfinite(array)):
                raise InvalidVectorError(f"embedding for memory {memory_id} has NaN or inf values")
            payload.append({"mid": memory_id, "emb": array.tobytes(), "model": model_id})
        if not payload:
            return
        stmt = (
            update(memories)
            .where(memories.c.id == _bind("mid"))
            .values(embedding=_bind("emb"), embedding_model=_bind("model"))
        )
        with self._write() as conn:
            conn.execute(stmt, payload)

    def mark_embedding_failed(self, ids: Sequence[int]) -> None:
        with self._write() as conn:
            conn.execute(
                update(memories)
                .where(memories.c.id.in_(list(ids)))
                .values(embed_attempts=memories.c.embed_attempts + 1)
            )

    def reset_embeddings(self) -> int:
        with self._write() as conn:
            result = conn.execute(
                update(memories).values(embedding=None, embedding_model=None, embed_attempts=0)
            )
        self._vectors.clear()
        return result.rowcount or 0

    # -- whole-entity operations ----------------------------------------------------------------

    def forget(self, entity_id: str) -> ForgetReport:
        with self._write() as conn:
            vectors = conn.execute(
                select(func.count()).where(
                    memories.c.entity_id == entity_id, memories.c.embedding.is_not(None)
                )
            ).scalar_one()
            n_memories = conn.execute(delete(memories).where(memories.c.entity_id == entity_id))
            n_messages = conn.execute(delete(messages).where(messages.c.entity_id == entity_id))
            n_sessions = conn.execute(delete(sessions).where(sessions.c.entity_id == entity_id))
        self._vectors.forget_entity(entity_id)
        return ForgetReport(
            entity_id=entity_id,
            sessions=n_sessions.rowcount or 0,
            messages=n_messages.rowcount or 0,
            memories=n_memories.rowcount or 0,
            vectors=int(vectors),
        )

    def export_entity(self, entity_id: str) -> Iterator[dict[str, Any]]:
        """Every session, message and memory of an entity as JSON-ready dicts."""
        with self._read() as conn:
            for r in conn.execute(
                select(sessions)
                .where(sessions.c.entity_id == entity_id)
                .order_by(sessions.c.created_at)
            ).mappings():
                yield {"type": "session", **dict(r)}
            for r in conn.execute(
                select(messages)
                .where(messages.c.entity_id == entity_id)
                .order_by(messages.c.session_id, messages.c.seq)
            ).mappings():
                row = dict(r)
                row["tool_calls"] = json.loads(row["tool_calls"]) if row["tool_calls"] else None
                row["payload"] = json.loads(row["payload"]) if row["payload"] else None
                yield {"type": "message", **row}
            columns = [c for c in memories.c if c.name not in {"embedding"}]
            for r in conn.execute(
                select(*columns).where(memories.c.entity_id == entity_id).order_by(memories.c.id)
            ).mappings():
                row = dict(r)
                row["source_message_ids"] = json.loads(row["source_message_ids"])
                yield {"type": "memory", **row}

    def entities(self) -> list[str]:
        with self._read() as conn:
            return list(
                conn.execute(
                    select(sessions.c.entity_id).distinct().order_by(sessions.c.entity_id)
                ).scalars()
            )

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                "entities": conn.execute(
                    select(func.count(func.distinct(sessions.c.entity_id)))
                ).scalar_one(),
                "sessions": conn.execute(select(func.count()).select_from(sessions)).scalar_one(),
                "messages": conn.execute(select(func.count()).select_from(messages)).scalar_one(),
                "memories": conn.execute(select(func.count()).select_from(memories)).scalar_one(),
                "vectors": conn.execute(
                    select(func.count()).where(memories.c.embedding.is_not(None))
                ).scalar_one(),
            }


def _overlap(stored_tail: Sequence[str], incoming: Sequence[str]) -> int:
    """How many leading `incoming` messages repeat the end of the stored transcript.

    Apps resend their history (all of it, or a window of its last turns); those messages are
    already stored. A lone message is always new: sending "yes" twice is two turns.
    """
    longest = min(len(stored_tail), len(incoming))
    for k in range(longest, 0, -1):
        if k == 1 and len(incoming) == 1:
            return 0
        if list(stored_tail[len(stored_tail) - k :]) == list(incoming[:k]):
            return k
    return 0


def _pg_lexeme(term: str) -> str:
    # to_tsquery syntax from a \w+ token: quote it as a literal so no operator can be injected.
    return "'" + term.replace("'", "''").replace("\\", "") + "'"


def _bind(name: str) -> Any:
    return bindparam(name)
