"""The store contract on the embedded SQLite engine, plus what only SQLite has to prove."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from store_contract import StoreContract

from memori_core import Memori


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'memori.db'}"


def test_file_is_in_wal_mode_with_named_migrations(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Memori(f"sqlite:///{path}", embedder=None).attribution("u").record(
        [{"role": "user", "content": "x"}]
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = [r[0] for r in conn.execute("SELECT name FROM memori_migrations ORDER BY name")]
    assert names == [
        "0001_initial",
        "0002_lexical_index",
        "0003_extraction_backlog",
        "0004_change_counters",
        "0005_scoped_lexical_index",
    ]


def test_default_url_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    script = textwrap.dedent(
        """
        from memori_core import Memori
        mem = Memori(embedder=None).attribution("u")
        mem.record([{"role": "user", "content": "hello from env"}])
        print(mem.database_url)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={"MEMORI_DATABASE_URL": f"sqlite:///{path}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"sqlite:///{path}"
    assert path.exists()


def test_two_processes_write_concurrently_without_losing_a_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Memori(url, embedder=None).attribution("warmup").record([{"role": "user", "content": "x"}])
    script = textwrap.dedent(
        f"""
        import sys
        from memori_core import Memori
        worker = sys.argv[1]
        for i in range(40):
            mem = Memori({url!r}, embedder=None).attribution("shared-user", "agent-" + worker)
            mem.record([{{"role": "user", "content": f"worker {{worker}} turn {{i}}"}}])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], stderr=subprocess.PIPE)
        for n in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    for n in range(3):
        mem = Memori(url, embedder=None).attribution("shared-user", f"agent-{n}")
        total = sum(s.message_count for s in mem.sessions())
        assert total == 40


def test_commits_are_synced_at_checkpoints_unless_the_url_asks_for_every_commit(
    tmp_path: Path,
) -> None:
    from sqlalchemy import text

    from memori_core.errors import ConfigurationError
    from memori_core.store.engine import create_store_engine

    path = tmp_path / "sync.db"
    levels = {}
    for option, url in (
        ("default", f"sqlite:///{path}"),
        ("full", f"sqlite:///{path}?synchronous=full"),
        ("NORMAL", f"sqlite:///{path}?synchronous=NORMAL"),
    ):
        with create_store_engine(url).connect() as conn:
            levels[option] = conn.execute(text("PRAGMA synchronous")).scalar()
    assert levels == {"default": 1, "full": 2, "NORMAL": 1}  # 1 NORMAL, 2 FULL
    # The option configures the connection; it is not part of the file's name.
    Memori(f"sqlite:///{path}?synchronous=full", embedder=None).attribution("u").record(
        [{"role": "user", "content": "kept in sync.db"}]
    )
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["sync.db"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT content FROM memori_messages").fetchall() == [
            ("kept in sync.db",)
        ]
    with pytest.raises(ConfigurationError, match="synchronous"):
        Memori(f"sqlite:///{path}?synchronous=sometimes", embedder=None)


def test_a_recorded_turn_survives_the_process_dying_right_after(tmp_path: Path) -> None:
    """`synchronous=NORMAL` still makes each commit durable against a crash of the process."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    script = textwrap.dedent(
        f"""
        import os, signal
        from memori_core import Memori
        mem = Memori({url!r}, embedder=None).attribution("u", "agent")
        mem.record([{{"role": "user", "content": "I moved to Bergen"}}])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    mem = Memori(url, embedder=None).attribution("u", "agent")
    assert [r.text for r in mem.recall("Bergen")] == ["I moved to Bergen"]


def test_rows_cached_by_recall_follow_changes_made_by_another_connection(tmp_path: Path) -> None:
    """Recall trusts its cached rows only while no memory was deleted or changed: a delete or
    an update by another process (here a plain sqlite3 connection) is seen at once."""
    path = tmp_path / "shared.db"
    mem = Memori(f"sqlite:///{path}", embedder=None).attribution("u", "agent")
    mem.record([{"role": "user", "content": "My locker code is 4417."}])
    mem.record([{"role": "user", "content": "The locker is next to the gym door."}])
    for _ in range(2):  # cached, then served from the cache
        assert {r.text for r in mem.recall("locker")} == {
            "My locker code is 4417.",
            "The locker is next to the gym door.",
        }
    with sqlite3.connect(path) as other:
        other.execute("UPDATE memori_memories SET times_seen = 7 WHERE text LIKE '%gym%'")
    assert {r.text: r.times_seen for r in mem.recall("locker")} == {
        "My locker code is 4417.": 1,
        "The locker is next to the gym door.": 7,
    }
    with sqlite3.connect(path) as other:
        other.execute("DELETE FROM memori_memories WHERE text LIKE '%4417%'")
    assert [r.text for r in mem.recall("locker")] == ["The locker is next to the gym door."]
    # Writing an embedding changes nothing a recall reads: the counter stays where it was.
    with sqlite3.connect(path) as other:
        before = other.execute("SELECT memories FROM memori_change_counters").fetchone()
        other.execute(
            "UPDATE memori_memories SET embedding = NULL, embedding_model = NULL, "
            "embed_attempts = embed_attempts + 1"
        )
        assert other.execute("SELECT memories FROM memori_change_counters").fetchone() == before


def test_memories_stored_before_the_scoped_index_are_found_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """Migration 0005 re-indexes what a database already holds under each memory's scope."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    Memori(url, embedder=None).attribution("u", "agent").record(
        [{"role": "user", "content": "My locker code is 4417."}]
    )
    Memori(url, embedder=None).attribution("v", "agent").record(
        [{"role": "user", "content": "I lost my locker key."}]
    )
    # Put the file back as a version before 0005 left it: the old index, no scoped words.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER memori_memories_ai")
        conn.execute("DROP TRIGGER memori_memories_ad")
        conn.execute("DROP TABLE memori_memories_fts")
        conn.execute("UPDATE memori_memories SET lexical_text = NULL")
        conn.execute("DELETE FROM memori_migrations WHERE name = '0005_scoped_lexical_index'")
        conn.execute(
            "CREATE VIRTUAL TABLE memori_memories_fts USING fts5(text, scope_key, "
            "content='memori_memories', content_rowid='id', "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        conn.execute("INSERT INTO memori_memories_fts(memori_memories_fts) VALUES ('rebuild')")
    script = textwrap.dedent(
        f"""
        from memori_core import Memori
        mem = Memori({url!r}, embedder=None).attribution("u", "agent")
        print([r.text for r in mem.recall("locker")])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['My locker code is 4417.']"
    with sqlite3.connect(path) as conn:
        assert conn.execute(
            "SELECT count(*) FROM memori_memories WHERE lexical_text IS NULL"
        ).fetchone() == (0,)


def test_a_statement_the_driver_rejects_is_a_storage_error(tmp_path: Path) -> None:
    """Recall's and recording's statements run on the driver's cursor; what the driver raises
    still reaches the caller as `StorageError`, and a failed write leaves earlier turns whole."""
    from memori_core.errors import StorageError

    path = tmp_path / "m.db"
    mem = Memori(f"sqlite:///{path}", embedder=None).attribution("u", "agent")
    mem.record([{"role": "user", "content": "My locker code is 4417."}])
    with sqlite3.connect(path) as conn:
        # Recording a memory now fails inside the transaction, after its message was inserted.
        conn.execute("ALTER TABLE memori_memories RENAME COLUMN lexical_text TO gone")
    with pytest.raises(StorageError, match="write failed"):
        mem.record([{"role": "user", "content": "My bike is blue."}])
    assert [m.content for m in mem.messages()] == ["My locker code is 4417."]
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE memori_memories RENAME COLUMN gone TO lexical_text")
        conn.execute("ALTER TABLE memori_messages RENAME TO memori_messages_gone")
    with pytest.raises(StorageError, match="read failed"):
        mem.messages()
    assert [r.text for r in mem.recall("locker")] == ["My locker code is 4417."]
