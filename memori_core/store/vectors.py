"""An in-process cache of each scope's memory vectors, so dense search does not re-read them.

Entries grow incrementally (only memories newer than the entry's high-water mark are read on
the next search) and are evicted least-recently-used beyond a total vector budget. Deleted or
superseded memories may linger in an entry; dense search re-checks its hits against the store,
so they are never returned.

Cached vectors are kept as 8-bit codes with a scale per row (`Int8Rows`): a quarter of the
memory of float32, and the query's similarity to 10k of them takes 0.27 ms instead of 0.67
(100k: 2.0 vs 11.4 ms) through onnxruntime's int8 product. The similarity is within ~0.002 of
the float32 cosine; LoCoMo R@10 0.802 -> 0.803 (benchmarks/README.md).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Int8Rows", "ScopeVectors", "VectorCache"]

CacheKey = tuple[str, str | None, str]

# onnxruntime's fastest int8 product takes an unsigned left operand: a row's int8 code is
# stored plus 128, and the query's code sum times 128 subtracted after (exact integers).
CODE_OFFSET = 128
# Up to this many rows are scored with numpy, more with onnxruntime's int8 product.
_FEW_ROWS = 64


@dataclass(frozen=True, slots=True)
class Int8Rows:
    """Rows of vectors as 8-bit codes (`codes`, uint8 = code + 128) and a scale each
    (`scales`): row i is approximately `(codes[i] - 128) * scales[i]`."""

    codes: np.ndarray
    scales: np.ndarray

    @classmethod
    def quantize(cls, vectors: np.ndarray) -> Int8Rows:
        vectors = np.asarray(vectors, dtype=np.float32)
        scales = np.abs(vectors).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        codes = np.rint(vectors / scales[:, None]).astype(np.int16) + CODE_OFFSET
        return cls(codes.astype(np.uint8), scales.astype(np.float32))

    @classmethod
    def empty(cls, dimension: int) -> Int8Rows:
        return cls(np.zeros((0, dimension), dtype=np.uint8), np.zeros(0, dtype=np.float32))

    @classmethod
    def concat(cls, parts: Sequence[Int8Rows]) -> Int8Rows:
        return cls(np.vstack([p.codes for p in parts]), np.concatenate([p.scales for p in parts]))

    def __len__(self) -> int:
        return int(self.scales.shape[0])

    def __getitem__(self, rows: slice) -> Int8Rows:
        return Int8Rows(self.codes[rows], self.scales[rows])

    def similarities(self, vector: np.ndarray) -> np.ndarray:
        """Each row's dot product with `vector` (cosine similarity of unit vectors), float32.

        The same row gives the same score whatever rows surround it (integer arithmetic, then
        one scaling per row), so a matrix may be scored in slices."""
        vector = np.asarray(vector, dtype=np.float32)
        if not len(self):
            return np.zeros(0, dtype=np.float32)
        scale = max(float(np.abs(vector).max()) / 127.0, 1e-30)
        code = np.rint(vector / scale).astype(np.int8)
        if len(self) <= _FEW_ROWS:
            # A handful (the vectors a recall's refresh adds): numpy's integer product gives
            # the same integers without the cost of calling into onnxruntime.
            exact = self.codes.astype(np.int32) @ code.astype(np.int32)
        else:
            (products,) = _int8_product().run(None, {"rows": self.codes, "vector": code[:, None]})
            exact = products[:, 0]
        exact = exact - CODE_OFFSET * int(code.sum(dtype=np.int64))
        out: np.ndarray = exact.astype(np.float32) * self.scales * np.float32(scale)
        return out


_session: tuple[int, Any] | None = None
_session_lock = threading.Lock()


def _int8_product() -> Any:
    """An onnxruntime session computing `rows (uint8, n x d) @ vector (int8, d x 1)` as int32,
    made on first use (and again in a forked child)."""
    global _session
    with _session_lock:
        if _session is None or _session[0] != os.getpid():
            import onnxruntime as ort
            from onnx import TensorProto, helper

            from memori_core.embedding import session_options

            graph = helper.make_graph(
                [helper.make_node("MatMulInteger", ["rows", "vector"], ["products"])],
                "int8_product",
                [
                    helper.make_tensor_value_info("rows", TensorProto.UINT8, ["n", "d"]),
                    helper.make_tensor_value_info("vector", TensorProto.INT8, ["d", 1]),
                ],
                [helper.make_tensor_value_info("products", TensorProto.INT32, ["n", 1])],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 9
            _session = (
                os.getpid(),
                ort.InferenceSession(
                    model.SerializeToString(),
                    session_options(),
                    providers=["CPUExecutionProvider"],
                ),
            )
        return _session[1]


@dataclass
class ScopeVectors:
    """The vectors of one (entity, process, model), in buffers that grow by doubling."""

    dimension: int
    # Every memory up to `high_water` is cached or not wanted; up to `looked_up_to` was read
    # when the store's vectors counter stood at `vectors_version` (-1: not known).
    high_water: int = 0
    looked_up_to: int = 0
    vectors_version: int = -1
    size: int = 0
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rows: Int8Rows = field(default_factory=lambda: Int8Rows.empty(0))
    seen: set[int] = field(default_factory=set)

    def append(self, ids: list[int], vectors: np.ndarray) -> None:
        if self.dimension == 0:
            self.dimension = int(vectors.shape[1])
            self.rows = Int8Rows.empty(self.dimension)
        needed = self.size + len(ids)
        if needed > len(self.ids):
            capacity = max(needed, 2 * len(self.ids), 64)
            grown_ids = np.zeros(capacity, dtype=np.int64)
            grown = Int8Rows(
                np.zeros((capacity, self.dimension), dtype=np.uint8),
                np.zeros(capacity, dtype=np.float32),
            )
            grown_ids[: self.size] = self.ids[: self.size]
            grown.codes[: self.size] = self.rows.codes[: self.size]
            grown.scales[: self.size] = self.rows.scales[: self.size]
            self.ids, self.rows = grown_ids, grown
        new = Int8Rows.quantize(vectors)
        self.ids[self.size : needed] = ids
        self.rows.codes[self.size : needed] = new.codes
        self.rows.scales[self.size : needed] = new.scales
        self.size = needed
        self.seen.update(ids)

    def view(self) -> tuple[np.ndarray, Int8Rows]:
        # Views stay valid after a later append reallocates: they keep the old buffers alive.
        return self.ids[: self.size], self.rows[: self.size]


class VectorCache:
    """LRU over scopes, bounded by the total number of cached vectors."""

    def __init__(self, max_vectors: int = 250_000) -> None:
        self.max_vectors = max_vectors
        self._entries: OrderedDict[CacheKey, ScopeVectors] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: CacheKey, dimension: int) -> ScopeVectors:
        """The entry for `key` (created empty if missing); call with `lock` held.

        `dimension` 0 means "not known yet": taken from the first vectors appended."""
        entry = self._entries.get(key)
        if entry is None or (dimension and entry.dimension and entry.dimension != dimension):
            entry = self._entries[key] = ScopeVectors(dimension)
        self._entries.move_to_end(key)
        return entry

    def peek(self, key: CacheKey) -> ScopeVectors | None:
        """The entry for `key` if there is one, unchanged; call with `lock` held."""
        return self._entries.get(key)

    def evict(self) -> None:
        """Drop least recently used entries beyond the budget; call with `lock` held."""
        total = sum(e.size for e in self._entries.values())
        while total > self.max_vectors and len(self._entries) > 1:
            _, oldest = self._entries.popitem(last=False)
            total -= oldest.size

    def forget_entity(self, entity_id: str) -> None:
        with self.lock:
            for key in [k for k in self._entries if k[0] == entity_id]:
                del self._entries[key]

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()
