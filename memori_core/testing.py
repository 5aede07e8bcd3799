"""Test doubles shipped with the library, so users' tests need no model and no network."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["FailingEmbedder", "HashEmbedder"]

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """A deterministic bag-of-words embedder: texts sharing words get similar vectors.

    Each lower-cased word is hashed to a few signed buckets, so results are stable across
    processes and machines, and similarity behaves enough like a real model for tests.
    """

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension
        self.model_id = f"hash-bow-{dimension}"
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                for i in range(2):
                    bucket = int.from_bytes(digest[i * 3 : i * 3 + 3], "little") % self.dimension
                    out[row, bucket] += 1.0 if digest[6 + i] & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm:
                out[row] /= norm
            else:
                out[row, 0] = 1.0
        return out


class FailingEmbedder(HashEmbedder):
    """Raises on `embed` until `fail` is set False: for testing that failures lose nothing."""

    def __init__(self, dimension: int = 64) -> None:
        super().__init__(dimension)
        self.fail = True

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail:
            self.calls += 1
            raise RuntimeError("embedding service unavailable")
        return super().embed(texts)
