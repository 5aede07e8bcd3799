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
    assert names == ["0001_initial", "0002_lexical_index", "0003_extraction_backlog"]


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
