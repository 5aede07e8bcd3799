"""chromadb as the vector index, embedded and as a real Chroma server.

The server test uses the `chroma` command that the chromadb package installs, started on a free
loopback port; the index must give the same isolation guarantees as the in-store search.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memori_core import Memori
from memori_core.testing import HashEmbedder
from memori_core.vector.chroma import ChromaIndex


def _exercise(index: ChromaIndex, url: str) -> None:
    embedder = HashEmbedder()
    support = Memori(url, embedder=embedder, vector_index=index).attribution("alice", "support")
    sales = Memori(url, embedder=embedder, vector_index=index).attribution("alice", "sales")
    bob = Memori(url, embedder=embedder, vector_index=index).attribution("bob", "support")
    support.record([{"role": "user", "content": "My router model is AX3000 and it drops."}])
    sales.record([{"role": "user", "content": "I want the fibre plan with the router."}])
    bob.record([{"role": "user", "content": "My router is fine, thanks."}])
    support.flush()

    top = support.recall("router model drops")[0]
    assert "AX3000" in top.text and top.parts.dense > 0
    assert all(r.process_id == "support" for r in support.recall("router", limit=10))
    assert all("bob" not in r.text and "fine" not in r.text for r in support.recall("router fine"))
    assert all("AX3000" not in r.text for r in sales.recall("router model", limit=10))

    # Superseded and deleted memories never come back, even while the index still has them.
    support.record([{"role": "user", "content": "My email is old@example.com."}])
    support.record([{"role": "user", "content": "My email is new@example.com."}])
    support.flush()
    facts = [r.text for r in support.recall("email example", limit=10) if r.kind == "fact"]
    assert facts == ["My email is new@example.com."]

    report = Memori(url, embedder=embedder, vector_index=index).forget("alice")
    assert report.extra["index_vectors"] >= 3
    assert support.recall("router") == []
    assert bob.recall("router")


def test_embedded_chroma_index(tmp_path: Path) -> None:
    index = ChromaIndex(path=str(tmp_path / "chroma"))
    _exercise(index, f"sqlite:///{tmp_path / 'm.db'}")


def test_reindex_rebuilds_the_index_from_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    embedder = HashEmbedder()
    mem = Memori(url, embedder=embedder).attribution("u", "p")  # no index yet
    mem.record([{"role": "user", "content": "I collect vintage typewriters."}])
    mem.flush()
    index = ChromaIndex(path=str(tmp_path / "chroma"))
    with_index = Memori(url, embedder=embedder, vector_index=index).attribution("u", "p")
    assert with_index.recall("typewriters collection")[0].parts.dense == 0
    assert with_index.reindex() >= 1
    assert with_index.recall("typewriters collection")[0].parts.dense > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[int]:
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    assert exe, "the chroma command (from the chromadb package) is not installed"
    port = _free_port()
    log = open(tmp_path / "chroma.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            exe,
            "run",
            "--path",
            str(tmp_path / "server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "chroma.log").read_text()
                time.sleep(0.2)
        else:
            raise AssertionError("the chroma server did not start in 60 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_chroma_server_index(chroma_server: int, tmp_path: Path) -> None:
    index = ChromaIndex(host="127.0.0.1", port=chroma_server)
    _exercise(index, f"sqlite:///{tmp_path / 'm.db'}")
