"""The shipped default embedder: loads offline from installed packages and ranks sensibly."""

from __future__ import annotations

import numpy as np
import pytest

from memori_core.embedding import MiniLMEmbedder, check_vectors, resolve_embedder
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


def test_bad_vectors_are_refused() -> None:
    with pytest.raises(InvalidVectorError):
        check_vectors(np.full((1, 4), np.nan), 1, 4)
    with pytest.raises(InvalidVectorError):
        check_vectors(np.ones((1, 3)), 1, 4)
    with pytest.raises(InvalidVectorError):
        check_vectors(np.ones((2, 4)), 1, 4)
