"""Hybrid recall: lexical (FTS5 bm25 / tsvector) and dense (cosine) fused by reciprocal rank,
then recency and salience, near-duplicate removal and a token budget."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from memori_core.embedding import Embedder, check_vectors
from memori_core.scope import Scope
from memori_core.store.sql import MemoryRow, SQLStore
from memori_core.types import Recalled, ScoreParts
from memori_core.vector import VectorIndex

log = logging.getLogger(__name__)

__all__ = ["RankingConfig", "estimate_tokens", "rank"]

_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class RankingConfig:
    """Weights of the final score. Fused relevance is in [0, 1]; the rest are small nudges."""

    rrf_k: int = 60
    lexical_weight: float = 1.0
    dense_weight: float = 1.0
    recency_weight: float = 0.05
    salience_weight: float = 0.05
    recency_half_life_days: float = 30.0
    candidates: int = 50
    duplicate_jaccard: float = 0.9


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token for English) for budgets."""
    return max(1, math.ceil(len(text) / 4))


def rank(
    store: SQLStore,
    scope: Scope,
    query: str,
    *,
    embedder: Embedder | None,
    limit: int,
    share_across_processes: bool,
    config: RankingConfig = RankingConfig(),
    token_budget: int | None = None,
    now: float | None = None,
    vector_index: VectorIndex | None = None,
) -> list[Recalled]:
    """The `limit` best memories of `scope` for `query`, each with its score parts."""
    lexical = store.lexical_search(scope, query, config.candidates, share_across_processes)
    dense: list[tuple[int, float]] = []
    vector = _embed_query(embedder, query) if embedder is not None and query.strip() else None
    if embedder is not None and vector is not None:
        dense = store.dense_search(
            scope,
            embedder.model_id,
            vector,
            config.candidates,
            share_across_processes,
            vector_index,
        )

    fused: dict[int, list[float]] = {}
    total_weight = (config.lexical_weight if lexical else 0.0) + (
        config.dense_weight if dense else 0.0
    )
    if total_weight == 0:
        return []
    scale = (config.rrf_k + 1) / total_weight
    for position, (memory_id, _) in enumerate(lexical):
        fused.setdefault(memory_id, [0.0, 0.0])[0] = (
            config.lexical_weight * scale / (config.rrf_k + position + 1)
        )
    for position, (memory_id, _) in enumerate(dense):
        fused.setdefault(memory_id, [0.0, 0.0])[1] = (
            config.dense_weight * scale / (config.rrf_k + position + 1)
        )

    rows = store.get_memories(list(fused))
    current = time.time() if now is None else now
    half_life = config.recency_half_life_days * 86400.0
    scored: list[tuple[float, ScoreParts, MemoryRow]] = []
    for memory_id, (lexical_part, dense_part) in fused.items():
        row = rows.get(memory_id)
        if row is None or row.entity_id != scope.entity_id:
            continue  # deleted meanwhile; the entity check is defence in depth
        age = max(0.0, current - row.created_at)
        recency = config.recency_weight * 0.5 ** (age / half_life)
        salience = config.salience_weight * min(1.0, row.salience + 0.05 * (row.times_seen - 1))
        parts = ScoreParts(
            lexical=lexical_part, dense=dense_part, recency=recency, salience=salience
        )
        score = lexical_part + dense_part + recency + salience
        scored.append((score, parts, row))
    scored.sort(key=lambda item: (-item[0], -item[2].id))

    results: list[Recalled] = []
    seen: list[set[str]] = []
    used_tokens = 0
    for score, parts, row in scored:
        words = set(_WORD.findall(row.text.lower()))
        if any(_jaccard(words, other) >= config.duplicate_jaccard for other in seen):
            continue
        cost = estimate_tokens(row.text)
        if token_budget is not None and used_tokens + cost > token_budget:
            continue
        used_tokens += cost
        seen.append(words)
        results.append(
            Recalled(
                id=row.id,
                text=row.text,
                score=score,
                parts=parts,
                kind=row.kind,
                created_at=datetime.fromtimestamp(row.created_at, tz=UTC),
                session_id=row.session_id,
                source_message_ids=row.source_message_ids,
                process_id=row.process_id,
                times_seen=row.times_seen,
            )
        )
        if len(results) >= limit:
            break
    return results


def _embed_query(embedder: Embedder, query: str) -> np.ndarray | None:
    """The query's vector, or None when the embedder fails: recall then stays lexical."""
    try:
        vector: np.ndarray = check_vectors(embedder.embed([query]), 1, embedder.dimension)[0]
    except Exception:
        log.warning("embedding the query failed; recalling lexically", exc_info=True)
        return None
    return vector


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
