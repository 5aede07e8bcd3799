"""A compact onnxruntime graph of the shipped MiniLM encoder that multiplies in int8.

The package's ONNX export stores int8 weights that are widened to float32 at load (`Cast ->
Mul(scale) -> MatMul`), and spells attention out in ~40 small nodes per layer (reshapes,
transposes, mask arithmetic, NaN guards). For a 15-token query the per-node overhead outweighs
the arithmetic. `compact_int8_encoder` rebuilds the same encoder from the same weights in 10
nodes per layer, using onnxruntime's own kernels: one quantized attention node (the Q, K and V
weights side by side, so the input is quantized once for all three), `DynamicQuantizeMatMul`
for the other products (input quantized per call, bias added in the kernel), `Gelu`, and
`Add` + `LayerNormalization`. Numbers are in docs/embeddings.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from memori_core.store.vectors import CODE_OFFSET

__all__ = ["compact_int8_encoder"]

_PRODUCTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def compact_int8_encoder(model_path: Path, num_heads: int) -> bytes | None:
    """The BERT encoder at `model_path` as a compact graph with int8 products: the same inputs
    (`input_ids`, `attention_mask`, `token_type_ids`), plus `rows` and `scales` (cached vectors
    as `Int8Rows` keeps them; empty when only vectors are wanted), and two outputs:
    `sentence_embedding` (mean-pooled, unit length) and `similarities` (`[rows, texts]`).

    None if the `onnx` package is missing or the model is not a BERT export with int8-stored
    weights named as the shipped one's (`<prefix>encoder.layer.<n>.attention.self.query.bias`, ...).
    """
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(model_path))
    weights = _Weights(model)
    prefix = weights.prefix()
    if prefix is None:
        return None
    layers = weights.layers(prefix)
    if not layers:
        return None
    try:
        return _Builder(weights, prefix, num_heads, model).build(layers)
    except KeyError:  # a weight the builder needs is not where a BERT export keeps it
        return None


class _Weights:
    """The shipped graph's initializers, with each int8 product found by the name of its bias."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self._arrays = {i.name: i for i in graph.initializer}
        self._to_array = numpy_helper.to_array
        producer = {output: node for node in graph.node for output in node.output}
        self.products: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.epsilon = 1e-12
        for node in graph.node:
            if node.op_type == "LayerNormalization":
                for attribute in node.attribute:
                    if attribute.name == "epsilon":
                        self.epsilon = attribute.f
            if node.op_type != "Add" or len(node.input) != 2:
                continue
            bias, other = node.input[1], node.input[0]
            if bias not in self._arrays:
                bias, other = other, bias
            if not bias.endswith(".bias") or bias not in self._arrays:
                continue
            product = self._int8_product(producer.get(other), producer)
            if product is not None:
                self.products[bias.removesuffix(".bias")] = (*product, self.array(bias))

    def array(self, name: str) -> np.ndarray:
        result: np.ndarray = self._to_array(self._arrays[name])
        return result

    def prefix(self) -> str | None:
        table: str = "embeddings.word_embeddings.weight_q"
        for name in self._arrays:
            if name.endswith(table):
                prefix: str = name[: -len(table)]
                return prefix
        return None

    def layers(self, prefix: str) -> list[int]:
        found = []
        layer = 0
        while all(f"{prefix}encoder.layer.{layer}.{p}" in self.products for p in _PRODUCTS):
            found.append(layer)
            layer += 1
        return found

    def dequantized(self, name: str) -> np.ndarray:
        """An int8-stored embedding table times its per-row scale, as the export computes it."""
        table = self.array(f"{name}_q").astype(np.float32) * self.array(f"{name}_scale")
        result: np.ndarray = table.astype(np.float32)
        return result

    def _int8_product(
        self, matmul: Any, producer: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(int8 weight, per-column scale) of `MatMul(x, Cast(weight) * scale)`, else None."""
        if matmul is None or matmul.op_type != "MatMul":
            return None
        mul = producer.get(matmul.input[1])
        if mul is None or mul.op_type != "Mul" or mul.input[1] not in self._arrays:
            return None
        cast = producer.get(mul.input[0])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in self._arrays:
            return None
        weight, scale = self.array(cast.input[0]), self.array(mul.input[1])
        if weight.dtype != np.int8 or weight.ndim != 2 or scale.size != weight.shape[1]:
            return None
        return weight, scale.reshape(-1).astype(np.float32)


class _Builder:
    def __init__(self, weights: _Weights, prefix: str, num_heads: int, source: Any) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._from_array = numpy_helper.from_array
        self._weights = weights
        self._prefix = prefix
        self._num_heads = num_heads
        self._source = source
        self._nodes: list[Any] = []
        self._initializers: list[Any] = []

    def build(self, layers: list[int]) -> bytes:
        from onnx import TensorProto

        helper, eps, emb = self._helper, self._weights.epsilon, f"{self._prefix}embeddings."
        self._node("Cast", ["input_ids"], ["ids"], to=TensorProto.INT32)
        self._node("Cast", ["token_type_ids"], ["segments"], to=TensorProto.INT32)
        self._node("Cast", ["attention_mask"], ["mask"], to=TensorProto.INT32)
        tables = [
            self._const("word_table", self._weights.dequantized(f"{emb}word_embeddings.weight")),
            self._const(
                "position_table", self._weights.dequantized(f"{emb}position_embeddings.weight")
            ),
            self._copy(f"{emb}token_type_embeddings.weight"),
            self._copy(f"{emb}LayerNorm.weight"),
            self._copy(f"{emb}LayerNorm.bias"),
        ]
        self._node(
            "EmbedLayerNormalization",
            ["ids", "segments", *tables, "mask"],
            ["hidden_0", "mask_index"],
            domain="com.microsoft",
            epsilon=eps,
        )
        hidden = "hidden_0"
        for layer in layers:
            hidden = self._layer(layer, hidden, f"hidden_{layer + 1}")
        self._pool(hidden)
        self._score("sentence_embedding")
        source = self._source
        dimension = self._weights.array(f"{emb}LayerNorm.bias").shape[0]
        graph = helper.make_graph(
            self._nodes,
            "minilm_int8",
            [
                *source.graph.input,
                helper.make_tensor_value_info("rows", TensorProto.UINT8, ["rows", dimension]),
                helper.make_tensor_value_info("scales", TensorProto.FLOAT, ["rows"]),
            ],
            [
                helper.make_tensor_value_info(
                    "sentence_embedding", TensorProto.FLOAT, ["batch", dimension]
                ),
                helper.make_tensor_value_info("similarities", TensorProto.FLOAT, ["rows", "batch"]),
            ],
            self._initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        )
        model.ir_version = source.ir_version
        serialized: bytes = model.SerializeToString()
        return serialized

    def _layer(self, layer: int, hidden: str, out: str) -> str:
        name = f"{self._prefix}encoder.layer.{layer}."
        q, k, v = (
            self._weights.products[f"{name}attention.self.{p}"] for p in ("query", "key", "value")
        )
        # Q, K and V share their input: side by side they need it quantized once, not thrice.
        qkv = f"{name}qkv"
        self._node(
            "DynamicQuantizeLinear", [hidden], [f"{qkv}.x", f"{qkv}.x_scale", f"{qkv}.x_zero"]
        )
        self._node(
            "QAttention",
            [
                f"{qkv}.x",
                self._const(f"{qkv}.weight", np.concatenate([q[0], k[0], v[0]], axis=1)),
                self._const(f"{qkv}.bias", np.concatenate([q[2], k[2], v[2]]).astype(np.float32)),
                f"{qkv}.x_scale",
                self._const(f"{qkv}.scale", np.concatenate([q[1], k[1], v[1]])),
                "mask",
                f"{qkv}.x_zero",
                self._const(f"{qkv}.zero", np.zeros(3 * q[0].shape[1], np.int8)),
            ],
            [f"{name}attention"],
            domain="com.microsoft",
            num_heads=self._num_heads,
        )
        attended = self._residual_norm(
            self._product(f"{name}attention.output.dense", f"{name}attention"),
            hidden,
            f"{name}attention.output.LayerNorm",
        )
        inner = self._product(f"{name}intermediate.dense", attended)
        self._node("Gelu", [inner], [f"{inner}.gelu"], domain="com.microsoft")
        return self._residual_norm(
            self._product(f"{name}output.dense", f"{inner}.gelu"),
            attended,
            f"{name}output.LayerNorm",
            out,
        )

    def _pool(self, hidden: str) -> None:
        """`sentence_embedding`: the mean of each text's token states (padding left out),
        scaled to unit length, as sentence-transformers pools this model."""
        from onnx import TensorProto

        self._node("Cast", ["attention_mask"], ["pool.mask"], to=TensorProto.FLOAT)
        self._node("Unsqueeze", ["pool.mask", self._ints("pool.axis2", [2])], ["pool.mask3"])
        self._node("Mul", [hidden, "pool.mask3"], ["pool.masked"])
        tokens = self._ints("pool.axis1", [1])
        self._node("ReduceSum", ["pool.masked", tokens], ["pool.sum"], keepdims=0)
        self._node("ReduceSum", ["pool.mask", tokens], ["pool.count"], keepdims=1)
        self._node("Max", ["pool.count", self._floats("pool.min_count", 1e-9)], ["pool.n"])
        self._node("Div", ["pool.sum", "pool.n"], ["pool.mean"])
        # At opset 17 only ReduceSum takes its axes as an input; the others take an attribute.
        self._node("ReduceL2", ["pool.mean"], ["pool.norm"], axes=[1], keepdims=1)
        self._node("Max", ["pool.norm", self._floats("pool.min_norm", 1e-12)], ["pool.length"])
        self._node("Div", ["pool.mean", "pool.length"], ["sentence_embedding"])

    def _score(self, vectors: str) -> None:
        """`similarities`: each of `rows` (8-bit codes + 128, a scale each, as `Int8Rows`
        keeps them) dotted with each text's vector, computed as `Int8Rows.similarities` does
        (the vector quantized to int8 with one scale, an integer product, the offset taken out
        exactly). In the encoder's run, a query's scoring costs no second call and no hand-over
        between threads."""
        from onnx import TensorProto

        axis1 = self._ints("score.axis1", [1])
        self._node("Abs", [vectors], ["score.abs"])
        self._node("ReduceMax", ["score.abs"], ["score.max"], axes=[1], keepdims=1)
        self._node("Div", ["score.max", self._floats("score.levels", 127.0)], ["score.step"])
        self._node("Max", ["score.step", self._floats("score.min_step", 1e-30)], ["score.scale"])
        self._node("Div", [vectors, "score.scale"], ["score.ratio"])
        self._node("Round", ["score.ratio"], ["score.rounded"])
        self._node("Cast", ["score.rounded"], ["score.code"], to=TensorProto.INT8)
        self._node("Transpose", ["score.code"], ["score.code_t"], perm=[1, 0])
        self._node("MatMulInteger", ["rows", "score.code_t"], ["score.products"])
        self._node("Cast", ["score.code"], ["score.code32"], to=TensorProto.INT32)
        # Per-text values as [1, texts] rows: broadcast against the [rows, texts] products as a
        # 1-D [texts] they take onnxruntime's slow general path (0.1 ms instead of 6 us).
        self._node("ReduceSum", ["score.code32", axis1], ["score.code_sums"], keepdims=1)
        self._node("Transpose", ["score.code_sums"], ["score.code_sum"], perm=[1, 0])
        offset = self._const("score.offset", np.array(CODE_OFFSET, dtype=np.int32))
        self._node("Mul", ["score.code_sum", offset], ["score.offset_sum"])
        self._node("Sub", ["score.products", "score.offset_sum"], ["score.exact"])
        self._node("Cast", ["score.exact"], ["score.exact_f"], to=TensorProto.FLOAT)
        self._node("Unsqueeze", ["scales", axis1], ["score.row_scales"])
        self._node("Mul", ["score.exact_f", "score.row_scales"], ["score.scaled"])
        self._node("Transpose", ["score.scale"], ["score.text_scales"], perm=[1, 0])
        self._node("Mul", ["score.scaled", "score.text_scales"], ["similarities"])

    def _ints(self, name: str, values: list[int]) -> str:
        return self._const(name, np.array(values, dtype=np.int64))

    def _floats(self, name: str, value: float) -> str:
        return self._const(name, np.array(value, dtype=np.float32))

    def _product(self, name: str, x: str) -> str:
        weight, scale, bias = self._weights.products[name]
        self._node(
            "DynamicQuantizeMatMul",
            [
                x,
                self._const(f"{name}.weight", weight),
                self._const(f"{name}.scale", scale),
                self._const(f"{name}.zero", np.zeros(weight.shape[1], np.int8)),
                self._const(f"{name}.bias", bias.astype(np.float32)),
            ],
            [f"{name}.out"],
            domain="com.microsoft",
        )
        return f"{name}.out"

    def _residual_norm(self, x: str, residual: str, norm: str, out: str | None = None) -> str:
        # Add + LayerNormalization rather than the fused SkipLayerNormalization: the latter
        # measured slower here (1.5 vs 1.1 ms a query), so the session runs these as written.
        out = out or f"{norm}.out"
        self._node("Add", [x, residual], [f"{norm}.in"])
        self._node(
            "LayerNormalization",
            [f"{norm}.in", self._copy(f"{norm}.weight"), self._copy(f"{norm}.bias")],
            [out],
            axis=-1,
            epsilon=self._weights.epsilon,
        )
        return out

    def _node(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> None:
        self._nodes.append(self._helper.make_node(op, inputs, outputs, **attributes))

    def _const(self, name: str, value: np.ndarray) -> str:
        self._initializers.append(self._from_array(value, name))
        return name

    def _copy(self, name: str) -> str:
        return self._const(name, self._weights.array(name))
