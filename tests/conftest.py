"""Shared fixtures. Sockets are blocked for the whole suite (pytest-socket, see pyproject), except
loopback, where `.ci/run` starts the database servers the contract tests use."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A test that forgets its database_url must not write into the developer's real data dir.
os.environ.setdefault(
    "MEMORI_DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='memori-tests-')}/default.db"
)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from memori_core import Memori
from memori_core.testing import HashEmbedder


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'memori.db'}"


@pytest.fixture
def make_memori(db_url: str) -> Iterator[Callable[..., Memori]]:
    """Build `Memori` instances on the test's database with the deterministic test embedder."""
    embedder = HashEmbedder()
    created: list[Memori] = []

    def factory(**kwargs: object) -> Memori:
        kwargs.setdefault("embedder", embedder)
        mem = Memori(db_url, **kwargs)  # type: ignore[arg-type]
        created.append(mem)
        return mem

    yield factory
    for mem in created:
        mem.close()
