"""The `memori-core` command through its installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memori_core import Memori

# The console script installed beside this interpreter (a venv need not be on PATH).
EXE = shutil.which("memori-core", path=str(Path(sys.executable).parent)) or shutil.which(
    "memori-core"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert EXE, "the memori-core console script is not installed"
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def filled(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    mem = Memori(url, embedder=None).attribution("alice", "support")
    mem.record([{"role": "user", "content": "I prefer email notifications."}])
    Memori(url, embedder=None).attribution("bob", "support").record(
        [{"role": "user", "content": "My name is Bob."}]
    )
    return url


def test_demo_runs_offline_and_shows_why(tmp_path: Path) -> None:
    out = run("--database-url", f"sqlite:///{tmp_path / 'demo.db'}", "demo")
    assert out.returncode == 0, out.stderr
    assert "why: lexical=" in out.stdout and "dense=" in out.stdout
    assert "AX3000" in out.stdout  # the support agent recalls alice's router


def test_sessions_recall_stats(filled: str) -> None:
    sessions = run(
        "--database-url", filled, "sessions", "--entity", "alice", "--process", "support"
    )
    assert sessions.returncode == 0 and "messages=1" in sessions.stdout
    recall = run(
        "--database-url",
        filled,
        "--lexical",
        "recall",
        "--entity",
        "alice",
        "--process",
        "support",
        "--json",
        "email",
    )
    rows = [json.loads(line) for line in recall.stdout.splitlines()]
    assert rows and all("email" in r["text"] for r in rows)
    assert set(rows[0]["parts"]) == {"lexical", "dense", "recency", "salience"}
    stats = run("--database-url", filled, "stats")
    assert "entities   2" in stats.stdout


def test_export_and_forget(filled: str, tmp_path: Path) -> None:
    target = tmp_path / "alice.jsonl"
    assert (
        run("--database-url", filled, "export", "--entity", "alice", "-o", str(target)).returncode
        == 0
    )
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert {r["type"] for r in rows} == {"session", "message", "memory"}
    assert all(r["entity_id"] == "alice" for r in rows)
    refused = run("--database-url", filled, "forget", "--entity", "alice")
    assert refused.returncode == 2
    done = run("--database-url", filled, "forget", "--entity", "alice", "--yes")
    assert done.returncode == 0 and "messages=1" in done.stdout
    assert Memori(filled, embedder=None).attribution("alice", "support").sessions() == []
    assert Memori(filled, embedder=None).attribution("bob", "support").sessions()


def test_bad_input_is_a_clean_error(filled: str) -> None:
    out = run("--database-url", filled, "sessions", "--entity", "")
    assert out.returncode == 1 and "error:" in out.stderr and "Traceback" not in out.stderr
    out = run("--database-url", "mysql://nope", "stats")
    assert out.returncode == 1 and "unsupported database" in out.stderr
