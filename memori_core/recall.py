"""Hybrid recall: lexical (FTS5 bm25 / tsvector) and dense (cosine) relevance, each scaled by
its best hit and mixed, lifted by the neighbouring turns of the conversation, then recency and
salience, near-duplicate removal and a token budget.

Why this shape (measured on LoCoMo, see benchmarks/README.md): mixing the two scores keeps
how far ahead a strong lexical match is, which reciprocal-rank fusion throws away; function
words in a question only add noise to the lexical query; and a turn is often understood only
with its neighbours ("Yeah, glad to be part of it." answers the turn before it), so a turn
next to a strong match inherits part of that match's relevance, and a session holding a strong
match lends its other turns part of it. A query that names a speaker favours that speaker's
turns, one that names a date or month favours what was said around then, and a turn of a few
words (a pleasantry, an aside) counts for less than one that tells something.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from memori_core.embedding import Embedder, check_vectors, embed_and_score
from memori_core.scope import Scope
from memori_core.store.sql import MemoryRow, SQLStore
from memori_core.store.vectors import Int8Rows
from memori_core.types import Recalled, ScoreParts
from memori_core.vector import VectorIndex

__all__ = ["RankingConfig", "estimate_tokens", "lexical_terms", "rank"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")

# English function words and question words: they match nearly every turn, so in an OR query
# they only reorder long turns by chance. Content words ("Tokyo", "paint", "adopt") stay. The
# tails of "Jolene's", "don't", "we'll" are words of their own to the tokenizer; "s" alone
# matched a third of LoCoMo's memories (3,139 of 10k), and bm25 scored each of them.
_STOPWORDS = frozenset(
    """s t d ll m re ve
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    ever kind sort""".split()  # noqa: SIM905 - a word list reads better as text
)


@dataclass(frozen=True, slots=True)
class RankingConfig:
    """Weights of the final score.

    Relevance = `lexical_weight` x (bm25 / best bm25) + `dense_weight` x (cosine / best cosine),
    the weights scaled to sum to 1 over the legs that ran; a turn then gains `neighbour_weight`
    of its best adjacent turn's relevance (`second_neighbour_weight` two turns away) and
    `session_weight` of the best turn of its session. When the query names a speaker of the
    conversation, turns of other speakers keep `other_speaker_factor` of their relevance; when
    it names a date or month, memories from outside that span (widened by `period_days_before`
    and `period_days_after`, since people tell of things days after and plan them weeks ahead)
    keep `outside_period_factor`. 1.0 switches either off. An episodic turn shorter than
    `short_turn_words` words keeps (words / short_turn_words) ** `short_turn_power` of its
    relevance (0 switches this off). Recency and salience are small nudges on top.

    The neighbour weight is lower (0.35) and the session weight higher (0.75) since turns are
    embedded after the turn before them (`EmbeddingIndexer.turn_context`): a reply's own
    vector already holds part of what the neighbour lift used to add.

    Neighbours are looked for around the `neighbour_seeds` best matches (`neighbour_probe` ids
    either side). 20 seeds rather than 30 read a third fewer rows (~0.2 ms a recall in the
    call loop) for LoCoMo R@10 0.804 -> 0.803, hit@10 0.878 -> 0.877, R@5 0.723 -> 0.724
    (1,536 questions; differences within what re-ingesting the same data moves).
    """

    lexical_weight: float = 0.5
    dense_weight: float = 0.5
    neighbour_weight: float = 0.35
    second_neighbour_weight: float = 0.25
    neighbour_seeds: int = 20
    neighbour_probe: int = 3
    recency_weight: float = 0.05
    salience_weight: float = 0.05
    recency_half_life_days: float = 30.0
    session_weight: float = 0.75
    other_speaker_factor: float = 0.7
    outside_period_factor: float = 0.5
    period_days_before: float = 7.0
    period_days_after: float = 30.0
    candidates: int = 100
    duplicate_jaccard: float = 0.9
    short_turn_words: int = 40
    short_turn_power: float = 0.2


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token for English) for budgets."""
    return max(1, math.ceil(len(text) / 4))


def lexical_terms(query: str) -> list[str]:
    """The words of `query` worth matching lexically: without function words, unless the query
    has nothing else ("who are you")."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
    content = [w for w in words if w not in _STOPWORDS]
    return content or words


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
    while_waiting: Callable[[], object] | None = None,
) -> list[Recalled]:
    """The `limit` best memories of `scope` for `query`, each with its score parts.

    `while_waiting` is called in this thread after the lexical leg, while the query's embedding
    usually still runs on the other core: work the caller would do next anyway (the resume
    check's transcript read) then costs the call nothing."""
    # The query's embedding and its similarity to every vector of the scope (the slowest
    # steps) run on another core while the lexical leg runs here: ONNX inference and SQLite
    # release the GIL. The pool thread makes one model call that embeds and scores, and needs
    # the GIL only to start and to finish; it starts at once with the vectors cached so far,
    # and the few stored since are scored here once the query's vector is known.
    dense_embedder = embedder if query.strip() else None
    scope_ids: np.ndarray | None = None
    scope_rows: Int8Rows | None = None
    cached_ids: np.ndarray | None = None
    pending: _DenseLeg | None = None
    if dense_embedder is not None and vector_index is None:
        model_id = dense_embedder.model_id
        cached_ids, cached_rows = store.cached_scope_vectors(
            scope, model_id, share_across_processes
        )
        if cached_rows is not None:
            pending = _DenseLeg(dense_embedder, query, cached_rows)
        scope_ids, scope_rows = store.scope_vectors(scope, model_id, share_across_processes)
        if pending is None:  # nothing cached yet: embed and score what was just read
            cached_ids = scope_ids
            pending = _DenseLeg(dense_embedder, query, scope_rows)
    elif dense_embedder is not None:
        pending = _DenseLeg(dense_embedder, query, None)
    try:
        terms = lexical_terms(query)
        lexical = (
            store.lexical_search(scope, " ".join(terms), config.candidates, share_across_processes)
            if terms
            else []
        )
        if while_waiting is not None:
            while_waiting()
    finally:
        vector, scores = pending.result() if pending is not None else (None, None)
    dense = _DenseScores.empty()
    if embedder is not None and vector is not None:
        if vector_index is None:
            # Every vector of the scope is at hand: neighbours get their exact similarity.
            if scope_ids is not None and scope_rows is not None and scores is not None:
                scores = _all_scores(scores, cached_ids, scope_ids, scope_rows, vector)
                dense = _DenseScores(scope_ids, scores)
        else:
            hits = store.dense_search(
                scope,
                embedder.model_id,
                vector,
                config.candidates,
                share_across_processes,
                vector_index,
            )
            dense = _DenseScores(
                np.asarray([i for i, _ in hits], dtype=np.int64),
                np.asarray([s for _, s in hits], dtype=np.float32),
            )
    if not lexical and not dense.ids.size:
        return []

    weight_sum = (config.lexical_weight if lexical else 0.0) + (
        config.dense_weight if dense.ids.size else 0.0
    )
    if weight_sum <= 0:
        return []
    lexical_scale = config.lexical_weight / weight_sum / max(lexical[0][1], 1e-9) if lexical else 0
    dense_scale = config.dense_weight / weight_sum / dense.best if dense.best > 0 else 0.0
    lexical_by_id = dict(lexical)

    candidate_set = set(lexical_by_id) | set(dense.top(config.candidates))
    candidates = list(candidate_set)
    base = relevance_of(candidates, lexical_by_id, lexical_scale, dense, dense_scale).sum(axis=1)
    by_base = [candidates[i] for i in np.argsort(-base, kind="stable")]
    wanted = set(by_base[: max(config.neighbour_seeds, 3 * limit)])
    for seed in by_base[: config.neighbour_seeds]:
        wanted.update(range(seed - config.neighbour_probe, seed + config.neighbour_probe + 1))
    rows = {
        memory_id: row
        for memory_id, row in store.get_memories(sorted(wanted)).items()
        if _visible(row, scope, share_across_processes)
    }
    ids = list(rows)
    parts_of = dict(
        zip(
            ids,
            relevance_of(ids, lexical_by_id, lexical_scale, dense, dense_scale).tolist(),
            strict=True,
        )
    )
    neighbours = _neighbours(rows.values())
    # A session that holds a strong match is about the query's topic: its other turns (the
    # details around the match, often worded differently) gain part of that match.
    totals = {memory_id: lexical + dense for memory_id, (lexical, dense) in parts_of.items()}
    session_best: dict[str | None, tuple[float, float, float]] = {}
    if config.session_weight > 0:
        for memory_id, row in rows.items():
            known = session_best.get(row.session_id)
            total = totals[memory_id]
            if row.session_id is not None and (known is None or total > known[2]):
                lexical_here, dense_here = parts_of[memory_id]
                session_best[row.session_id] = (lexical_here, dense_here, total)
    # Memories carry the time they were said: "in August 2023" favours what was said then.
    period = query_period(query) if config.outside_period_factor != 1.0 else None
    if period is not None:
        period = (
            period[0] - config.period_days_before * 86400.0,
            period[1] + config.period_days_after * 86400.0,
        )
    # "What does Melanie do?" is answered by what Melanie said far more often than by what was
    # said to her; the others' turns still lift her answers as neighbours, then count less.
    query_words = set(_WORD.findall(query.lower()))
    named = {
        name
        for name in {row.speaker for row in rows.values()}
        if name is not None and name.lower().split()[0] in query_words
    }

    current = time.time() if now is None else now
    half_life = config.recency_half_life_days * 86400.0
    neighbour_hops = [
        (near, weight)
        for near, weight in zip(
            neighbours, (config.neighbour_weight, config.second_neighbour_weight), strict=True
        )
        if weight > 0
    ]
    # Score parts are built only for what is returned; here a row carries plain floats, behind
    # its sort key (best score first, then the newest memory).
    scored: list[tuple[float, int, float, float, float, float, MemoryRow]] = []
    # The loop runs over ~150 rows a recall: the settings it reads are taken out of `config`
    # once, not per row.
    session_weight = config.session_weight
    other_speaker_factor = config.other_speaker_factor
    short_turn_words = config.short_turn_words
    short_turn_power = config.short_turn_power
    outside_period_factor = config.outside_period_factor
    recency_weight = config.recency_weight
    salience_weight = config.salience_weight
    for memory_id, row in rows.items():
        lexical_part, dense_part = parts_of[memory_id]
        for near, weight in neighbour_hops:
            near_ids = near.get(memory_id)
            if near_ids:
                # The stronger of the (at most two) turns `hop` away; the earlier one on a tie.
                best = near_ids[0]
                if len(near_ids) > 1 and totals[near_ids[1]] > totals[best]:
                    best = near_ids[1]
                best_lexical, best_dense = parts_of[best]
                lexical_part += weight * best_lexical
                dense_part += weight * best_dense
        session_lift = session_best.get(row.session_id)
        if session_lift is not None:
            lexical_part += session_weight * session_lift[0]
            dense_part += session_weight * session_lift[1]
        if lexical_part + dense_part <= 0 and memory_id not in candidate_set:
            continue  # a probed row that nothing relevant sits next to
        speaker = row.speaker
        if named and speaker is not None and speaker not in named:
            lexical_part *= other_speaker_factor
            dense_part *= other_speaker_factor
        # "Thanks, sounds great!" rarely holds what a question asks for, yet BM25's length
        # normalisation and the neighbour lift push such turns up. Facts are short on purpose
        # (one extracted statement), so only turns are judged by length.
        if short_turn_words > 0 and row.kind == "event":
            word_count = row.word_count
            if word_count < short_turn_words:
                length = (word_count / short_turn_words) ** short_turn_power
                lexical_part *= length
                dense_part *= length
        if period is not None and not period[0] <= row.created_at < period[1]:
            lexical_part *= outside_period_factor
            dense_part *= outside_period_factor
        age = max(0.0, current - row.created_at)
        recency = recency_weight * 0.5 ** (age / half_life)
        salience = salience_weight * min(1.0, row.salience + 0.05 * (row.times_seen - 1))
        score = lexical_part + dense_part + recency + salience
        scored.append((-score, -memory_id, lexical_part, dense_part, recency, salience, row))
    scored.sort()  # ids are unique: rows themselves are never compared

    results: list[Recalled] = []
    seen: list[frozenset[str]] = []
    used_tokens = 0
    for negated_score, _, lexical_part, dense_part, recency, salience, row in scored:
        words = _word_set(row.text)
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
                score=-negated_score,
                parts=ScoreParts(
                    lexical=lexical_part, dense=dense_part, recency=recency, salience=salience
                ),
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


def relevance_of(
    ids: list[int],
    lexical: dict[int, float],
    lexical_scale: float,
    dense: _DenseScores,
    dense_scale: float,
) -> np.ndarray:
    """`(len(ids), 2)`: the scaled lexical and dense relevance of each memory (0 if unknown)."""
    out = np.zeros((len(ids), 2), dtype=np.float64)
    if not ids:
        return out
    out[:, 0] = [lexical.get(i, 0.0) for i in ids]
    out[:, 0] *= lexical_scale
    out[:, 1] = dense.lookup(np.asarray(ids, dtype=np.int64)) * dense_scale
    return np.clip(out, 0.0, None)


def _all_scores(
    scores: np.ndarray,
    scored_ids: np.ndarray | None,
    ids: np.ndarray,
    rows: Int8Rows,
    vector: np.ndarray,
) -> np.ndarray:
    """Similarities of all `rows`, given `scores` of the rows `scored_ids` (the pool thread's,
    from the cache before it was refreshed): usually a prefix, and only the rest is scored."""
    if scored_ids is ids:
        return scores
    done = 0 if scored_ids is None else len(scored_ids)
    if scored_ids is not None and 0 < done <= len(ids) and np.array_equal(ids[:done], scored_ids):
        if done == len(ids):
            return scores
        return np.concatenate([scores, rows[done:].similarities(vector)])
    return rows.similarities(vector)  # the cache changed otherwise (evicted, shared scope)


class _DenseScores:
    """Cosine similarities by memory id (every vector of the scope, or an index's top hits)."""

    def __init__(self, ids: np.ndarray, similarities: np.ndarray) -> None:
        similarities = np.asarray(similarities, dtype=np.float32)
        # A scope's cached ids usually come in order already (sorting 10k costs ~0.07 ms).
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, similarities = ids[order], similarities[order]
        self.ids = ids
        self.similarities = similarities
        self.best = float(self.similarities.max()) if self.ids.size else 0.0

    @classmethod
    def empty(cls) -> _DenseScores:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Similarity of each id (0 for ids without a vector here)."""
        if not self.ids.size:
            return np.zeros(ids.size, dtype=np.float64)
        at = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        found = self.ids[at] == ids
        return np.where(found, self.similarities[at], 0.0).astype(np.float64)

    def top(self, n: int) -> list[int]:
        if self.ids.size <= n:
            return [int(i) for i in self.ids]
        best = np.argpartition(-self.similarities, n)[:n]
        return [int(i) for i in self.ids[best]]


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_ORDINAL = r"(\d{1,2})(?:st|nd|rd|th)?"
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATE = re.compile(
    rf"\b(?:{_ORDINAL}\s+(?:of\s+)?)?{_MONTH}(?:\s+{_ORDINAL})?,?\s+((?:19|20)\d\d)\b"
    r"|\b((?:19|20)\d\d)-(\d\d)-(\d\d)\b",
    re.IGNORECASE,
)


def query_period(query: str) -> tuple[float, float] | None:
    """The span of time a query names ("in August 2023", "on 10 April 2022", "2023-08-14"),
    as UTC timestamps [start, end), or None. Several dates give the span covering them all."""
    spans: list[tuple[datetime, datetime]] = []
    for match in _DATE.finditer(query):
        day_before, month_name, day_after, year, iso_year, iso_month, iso_day = match.groups()
        try:
            if iso_year is not None:
                start = datetime(int(iso_year), int(iso_month), int(iso_day), tzinfo=UTC)
                spans.append((start, start + timedelta(days=1)))
                continue
            month = _MONTHS[month_name.lower()]
            day = day_before or day_after
            if day is not None:
                start = datetime(int(year), month, int(day), tzinfo=UTC)
                spans.append((start, start + timedelta(days=1)))
            else:
                start = datetime(int(year), month, 1, tzinfo=UTC)
                end = datetime(int(year) + month // 12, month % 12 + 1, 1, tzinfo=UTC)
                spans.append((start, end))
        except ValueError:  # "31 February 2023"
            continue
    if not spans:
        return None
    return min(s for s, _ in spans).timestamp(), max(e for _, e in spans).timestamp()


def _visible(row: MemoryRow, scope: Scope, share_across_processes: bool) -> bool:
    # Probed rows come from an id range, so the scope is checked here (the store's searches
    # filter by scope themselves; this keeps probing from ever crossing entity or process).
    if row.entity_id != scope.entity_id:
        return False
    if row.process_id == scope.process_id:
        return True
    return share_across_processes and scope.process_id is not None and row.process_id is None


def _neighbours(rows: Iterable[MemoryRow]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """For hops 1 and 2: memory id -> the turns that many places before and after it in its
    session.

    Turns are the episodic `event` memories; their order is their source message's id. Only
    rows at hand count (probed around the strongest matches), which is where it matters.
    """
    by_session: dict[str | None, list[tuple[int, int]]] = {}
    for row in rows:
        if row.kind == "event" and row.source_message_ids:
            by_session.setdefault(row.session_id, []).append((row.source_message_ids[0], row.id))
    out: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
    for turns in by_session.values():
        turns.sort()
        for position, (message_id, memory_id) in enumerate(turns):
            for hop, at_hop in ((1, out[0]), (2, out[1])):
                near = []
                for other in (position - hop, position + hop):
                    # A gap in message ids larger than the hop (plus tool or system messages
                    # in between) means the real neighbour was not fetched: do not skip over it.
                    if 0 <= other < len(turns) and abs(turns[other][0] - message_id) <= 3 * hop:
                        near.append(turns[other][1])
                if near:
                    at_hop[memory_id] = near
    return out


_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _query_pool() -> ThreadPoolExecutor:
    """Threads that run the dense leg of recalls, made on first use (and again in a forked
    child)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            # Embedding is CPU-bound: more threads than cores would only queue in the OS.
            workers = max(2, os.cpu_count() or 2)
            _pool = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="memori-query"))
        return _pool[1]


class _DenseLeg:
    """The query's vector and its similarity to each of the scope's vectors (`rows`; None:
    only the vector is wanted), computed on a pool thread from construction on; `result()`
    waits for them. A failing embedder gives (None, None): recall then stays lexical.
    """

    def __init__(self, embedder: Embedder, query: str, rows: Int8Rows | None) -> None:
        self._embedder = embedder
        self._query = query
        self._rows = rows
        self._done: Future[tuple[np.ndarray | None, np.ndarray | None]] | None
        try:
            self._done = _query_pool().submit(self._embed_and_score)
        except RuntimeError:  # interpreter shutting down: run it inline in result()
            self._done = None

    def _embed_and_score(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        try:
            if self._rows is None:
                vector = self._embedder.embed([self._query])
                return check_vectors(vector, 1, self._embedder.dimension)[0], None
            return embed_and_score(self._embedder, self._query, self._rows)
        except Exception:
            log.warning("embedding the query failed; recalling lexically", exc_info=True)
            return None, None

    def result(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(vector, similarities to every row), either None if unavailable."""
        return self._embed_and_score() if self._done is None else self._done.result()


@functools.lru_cache(maxsize=4096)
def _word_set(text: str) -> frozenset[str]:
    """The distinct lower-cased words of `text`, remembered: the same rows come back recall
    after recall (and a cached row's text is the same string, whose hash Python keeps)."""
    return frozenset(_WORD.findall(text.lower()))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
