"""Tables and the named, append-only schema migrations.

A migration is never edited once released: add a new one at the end of `MIGRATIONS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)

from memori_core.errors import MigrationError

__all__ = [
    "FTS_TABLE",
    "MIGRATIONS",
    "extraction_backlog",
    "memories",
    "messages",
    "metadata",
    "migrations",
    "sessions",
]

metadata = MetaData()

migrations = Table(
    "memori_migrations",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("applied_at", Float, nullable=False),
)

sessions = Table(
    "memori_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("entity_id", String(255), nullable=False),
    Column("process_id", String(255), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_active_at", Float, nullable=False),
    Column("metadata", Text, nullable=True),
    Index("ix_memori_sessions_scope", "entity_id", "process_id", "last_active_at"),
)

messages = Table(
    "memori_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        String(36),
        ForeignKey("memori_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("entity_id", String(255), nullable=False),
    Column("process_id", String(255), nullable=True),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("name", String(255), nullable=True),
    Column("tool_calls", Text, nullable=True),
    Column("tool_call_id", String(255), nullable=True),
    Column("payload", Text, nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("session_id", "seq", name="uq_memori_messages_session_seq"),
    Index("ix_memori_messages_entity", "entity_id", "process_id"),
)

memories = Table(
    "memori_memories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entity_id", String(255), nullable=False),
    # NULL = entity-wide: visible to every process of the entity when sharing is allowed.
    Column("process_id", String(255), nullable=True),
    Column("session_id", String(36), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False),
    # A short hash of (entity, process). The lexical index of 0002 filtered by it; since 0005
    # the index words carry their scope (`lexical_text`) and nothing reads it any more. Still
    # written: the column is NOT NULL in every existing file.
    Column("scope_key", String(24), nullable=False),
    # SQLite: the words the lexical index stores, each prefixed by its scope (store/lexical.py).
    Column("lexical_text", Text, nullable=True),
    Column("fact_key", String(255), nullable=True),
    Column("source_message_ids", Text, nullable=False, default="[]"),
    Column("created_at", Float, nullable=False),
    Column("valid_from", Float, nullable=False),
    Column("valid_to", Float, nullable=True),
    Column("superseded_by", Integer, nullable=True),
    Column("salience", Float, nullable=False, default=0.5),
    Column("times_seen", Integer, nullable=False, default=1),
    Column("embedding", LargeBinary, nullable=True),
    Column("embedding_model", String(128), nullable=True),
    Column("embed_attempts", Integer, nullable=False, default=0),
    Index("ix_memori_memories_scope", "entity_id", "process_id", "valid_to"),
    Index("ix_memori_memories_dedupe", "entity_id", "process_id", "text_hash"),
    Index("ix_memori_memories_pending", "embedding_model", "embed_attempts"),
)

extraction_backlog = Table(
    "memori_extraction_backlog",
    metadata,
    Column(
        "message_id",
        Integer,
        ForeignKey("memori_messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

FTS_TABLE = "memori_memories_fts"


def _initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=[sessions, messages, memories])


def _lexical_index(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        # External-content FTS5 index (no second copy of the text) kept in step by triggers,
        # so every writer, in any process, keeps it consistent with the memories table.
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5("
            "text, scope_key, content='memori_memories', content_rowid='id', "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        # `ORDER BY rank` then ranks by the text alone (the scope key is a filter).
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('rank', 'bm25(1.0, 0.0)')"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER memori_memories_ai AFTER INSERT ON memori_memories BEGIN "
            f"INSERT INTO {FTS_TABLE}(rowid, text, scope_key) "
            "VALUES (new.id, new.text, new.scope_key); END"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER memori_memories_ad AFTER DELETE ON memori_memories BEGIN "
            f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text, scope_key) "
            "VALUES ('delete', old.id, old.text, old.scope_key); END"
        )
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "ALTER TABLE memori_memories ADD COLUMN text_tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
        )
        conn.exec_driver_sql(
            "CREATE INDEX ix_memori_memories_tsv ON memori_memories USING GIN (text_tsv)"
        )
    else:
        raise MigrationError(f"no lexical index for dialect {conn.dialect.name!r}")


def _extraction_backlog(conn: Connection) -> None:
    metadata.create_all(conn, tables=[extraction_backlog])


CHANGE_COUNTERS_TABLE = "memori_change_counters"


def _change_counters(conn: Connection) -> None:
    # SQLite only: counters that triggers move on in the writer's own transaction, so that a
    # process can trust what it cached for as long as they stand still. `memories` moves on
    # every delete of a memory and every update of what a recall reads from one (inserts leave
    # it alone: a new row is never in a cache); `vectors` on every vector written. On
    # PostgreSQL one counter row would serialise every writer of every app server, so there
    # recall re-checks what it cached each time instead.
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql(
        f"CREATE TABLE {CHANGE_COUNTERS_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "memories INTEGER NOT NULL, vectors INTEGER NOT NULL)"
    )
    conn.exec_driver_sql(
        f"INSERT INTO {CHANGE_COUNTERS_TABLE} (id, memories, vectors) VALUES (1, 0, 0)"
    )

    def bump(counter: str) -> str:
        return (
            f"BEGIN UPDATE {CHANGE_COUNTERS_TABLE} SET {counter} = {counter} + 1 WHERE id = 1; END"
        )

    conn.exec_driver_sql(
        f"CREATE TRIGGER memori_memories_counter_ad AFTER DELETE ON memori_memories "
        f"{bump('memories')}"
    )
    conn.exec_driver_sql(
        "CREATE TRIGGER memori_memories_counter_au AFTER UPDATE OF entity_id, process_id, "
        "session_id, kind, text, text_hash, created_at, salience, times_seen, "
        f"source_message_ids, valid_to ON memori_memories {bump('memories')}"
    )
    conn.exec_driver_sql(
        "CREATE TRIGGER memori_vectors_counter_au AFTER UPDATE OF embedding, embedding_model "
        f"ON memori_memories {bump('vectors')}"
    )


def _scoped_lexical_index(conn: Connection) -> None:
    # Index each word under its scope's prefix, so that a search reads only its scope's
    # postings (store/lexical.py); the index is rebuilt from the memories once.
    from memori_core.store.lexical import scope_prefix, scoped_text

    columns = {c["name"] for c in inspect(conn).get_columns("memori_memories")}
    if "lexical_text" not in columns:
        conn.exec_driver_sql("ALTER TABLE memori_memories ADD COLUMN lexical_text TEXT")
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS memori_memories_ai")
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS memori_memories_ad")
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    rows = conn.exec_driver_sql(
        "SELECT id, entity_id, process_id, text FROM memori_memories"
    ).fetchall()
    prefixes: dict[tuple[str, str | None], str] = {}
    updates = []
    for memory_id, entity_id, process_id, text_ in rows:
        key = (entity_id, process_id)
        prefix = prefixes.get(key) or prefixes.setdefault(key, scope_prefix(*key))
        updates.append((scoped_text(prefix, text_), memory_id))
    if updates:
        conn.exec_driver_sql("UPDATE memori_memories SET lexical_text = ? WHERE id = ?", updates)
    conn.exec_driver_sql(
        f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5("
        "lexical_text, content='memori_memories', content_rowid='id', "
        "tokenize='porter unicode61 remove_diacritics 2')"
    )
    conn.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')")
    conn.exec_driver_sql(
        f"CREATE TRIGGER memori_memories_ai AFTER INSERT ON memori_memories BEGIN "
        f"INSERT INTO {FTS_TABLE}(rowid, lexical_text) VALUES (new.id, new.lexical_text); END"
    )
    conn.exec_driver_sql(
        f"CREATE TRIGGER memori_memories_ad AFTER DELETE ON memori_memories BEGIN "
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, lexical_text) "
        "VALUES ('delete', old.id, old.lexical_text); END"
    )


Migration = tuple[str, Callable[[Connection], None]]

MIGRATIONS: tuple[Migration, ...] = (
    ("0001_initial", _initial),
    ("0002_lexical_index", _lexical_index),
    ("0003_extraction_backlog", _extraction_backlog),
    ("0004_change_counters", _change_counters),
    ("0005_scoped_lexical_index", _scoped_lexical_index),
)


def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations inside the caller's write transaction; return their names."""
    metadata.create_all(conn, tables=[migrations])
    done = set(conn.execute(select(migrations.c.name)).scalars())
    applied: list[str] = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        try:
            step(conn)
        except Exception as e:
            raise MigrationError(f"migration {name} failed: {e}") from e
        conn.execute(migrations.insert().values(name=name, applied_at=time.time()))
        applied.append(name)
    return applied
