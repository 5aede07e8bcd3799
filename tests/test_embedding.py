"""The shipped default embedder: loads offline from installed packages and ranks sensibly."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memori_core import Memori
from memori_core.embedding import (
    MiniLMEmbedder,
    _LazyEmbedder,
    check_vectors,
    resolve_embedder,
)
from memori_core.errors import ConfigurationError, InvalidVectorError
from memori_core.testing import HashEmbedder


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_minilm_vectors_are_normalised_and_semantic(minilm: MiniLMEmbedder) -> None:
    texts = [
        "I'm planning a trip to Tokyo.",
        "My printer is out of toner.",
        "Which city am I travelling to?",
    ]
    vectors = minilm.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    question = vectors[2]
    assert question @ vectors[0] > question @ vectors[1] + 0.1


def test_batching_order_does_not_change_vectors(minilm: MiniLMEmbedder) -> None:
    texts = ["short", "a much longer sentence about gardening and tomatoes", "mid length text"]
    together = minilm.embed(texts)
    alone = np.vstack([minilm.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)


def test_default_is_lazy_and_shared() -> None:
    first = resolve_embedder("default")
    assert first is resolve_embedder("default")
    assert first is not None and first.dimension == 384
    assert resolve_embedder(None) is None
    custom = HashEmbedder()
    assert resolve_embedder(custom) is custom
    with pytest.raises(ConfigurationError):
        resolve_embedder("gpt-embeddings-from-the-cloud")
    with pytest.raises(ConfigurationError):
        resolve_embedder(42)


def test_default_embedder_reuses_vectors_of_recent_texts() -> None:
    """A user message embedded as the recall query is not embedded again when stored."""
    model = HashEmbedder()
    seen: list[list[str]] = []

    class Counting:
        model_id, dimension = model.model_id, model.dimension

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            seen.append(list(texts))
            return model.embed(texts)

    lazy = _LazyEmbedder(Counting, model.model_id, model.dimension)
    first = lazy.embed(["I live in Oslo", "I like skiing"])
    again = lazy.embed(["I like skiing", "new text", "I live in Oslo"])
    assert seen == [["I live in Oslo", "I like skiing"], ["new text"]]
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    assert np.allclose(again[1], model.embed(["new text"])[0])
    assert lazy.embed([]).shape == (0, model.dimension)


def test_bad_vectors_are_refused() -> None:
    with pytest.raises(InvalidVectorError):
        check_vectors(np.full((1, 4), np.nan), 1, 4)
    with pytest.raises(InvalidVectorError):
        check_vectors(np.ones((1, 3)), 1, 4)
    with pytest.raises(InvalidVectorError):
        check_vectors(np.ones((2, 4)), 1, 4)


def test_new_memories_are_embedded_in_the_background(tmp_path: Path) -> None:
    """Without `flush()`: a new memory is found by meaning soon after the writes pause, and the
    embedding thread yields the CPU to the app's own threads."""
    mem = Memori(f"sqlite:///{tmp_path / 'm.db'}", embedder=HashEmbedder()).attribution("u", "p")
    mem.record([{"role": "user", "content": "I keep bees on the roof"}])
    deadline = time.monotonic() + 10
    hits = mem.recall("bees roof")
    while not (hits and hits[0].parts.dense > 0) and time.monotonic() < deadline:
        time.sleep(0.02)
        hits = mem.recall("bees roof")
    assert hits and hits[0].parts.dense > 0
    workers = [t for t in threading.enumerate() if t.name == "memori-embedder"]
    assert workers
    if sys.platform == "linux":
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for worker in workers:
            assert worker.native_id is not None
            assert os.getpriority(os.PRIO_PROCESS, worker.native_id) > mine
