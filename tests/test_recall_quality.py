"""Recall quality the LoCoMo benchmark measured, pinned on small made-up conversations.

Each test is a case an earlier ranking got wrong: a reply that only makes sense next to the
question it answers, a question whose function words matched every distractor, a question about
one speaker answered by the other's wordier turn, a month named in the question, a short aside
outranking the turn that tells something, a detail found only through its session, a reply
embedded without the question it answers; and the neighbour probing that must never cross
entities or processes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memori_core import Memori, Message
from memori_core.indexer import EmbeddingIndexer
from memori_core.recall import lexical_terms, query_period
from memori_core.testing import HashEmbedder

DISTRACTORS = [
    "I watched a documentary about octopuses last night.",
    "The printer in the office is jammed again.",
    "We should repaint the fence before winter.",
    "My cousin started a bakery downtown.",
    "Traffic on the bridge was terrible this morning.",
    "I finally finished that thousand-piece puzzle.",
]


def _chat(mem: Memori, turns: list[tuple[str, str]]) -> None:
    mem.record([Message(role="user", content=text, name=speaker) for speaker, text in turns])


def test_a_reply_is_found_through_the_question_it_answers(tmp_path: Path) -> None:
    # "It was the best weekend of my year" shares no word with the query; the turn before it
    # (the question it answers) does. The neighbour lifts the reply into the results.
    for embedder in (None, HashEmbedder()):
        mem = Memori(f"sqlite:///{tmp_path}/{embedder is None}.db", embedder=embedder)
        mem.attribution("ana")
        _chat(mem, [("Ben", d) for d in DISTRACTORS[:3]])
        _chat(
            mem,
            [
                ("Ben", "Did you enjoy the jazz festival in Montreal?"),
                ("Ana", "Honestly, it was the best weekend of my year."),
            ],
        )
        _chat(mem, [("Ben", d) for d in DISTRACTORS[3:]])
        mem.flush()
        texts = [r.text for r in mem.recall("How did Ana like the jazz festival?", limit=2)]
        assert sorted(texts) == [
            "Ana: Honestly, it was the best weekend of my year.",
            "Ben: Did you enjoy the jazz festival in Montreal?",
        ]


def test_function_words_do_not_outrank_the_content_word(tmp_path: Path) -> None:
    mem = Memori(f"sqlite:///{tmp_path}/m.db", embedder=None).attribution("ana")
    mem.record(
        [
            {"role": "user", "content": "What is the name of the thing that is on the shelf?"},
            {"role": "assistant", "content": "What is it that you are looking for, and where?"},
            {"role": "user", "content": "What was the name of the one we had before?"},
            {"role": "assistant", "content": "Is it the one that was by the door?"},
        ]
    )
    mem.new_session()
    mem.record([{"role": "user", "content": "We adopted a greyhound called Biscuit."}])
    top = mem.recall("What is the name of the greyhound we have?", limit=1)
    assert [r.text for r in top] == ["We adopted a greyhound called Biscuit."]
    assert lexical_terms("What is the name of the greyhound?") == ["name", "greyhound"]
    assert lexical_terms("who are you") == ["who", "are", "you"]  # nothing else to match


def test_neighbours_never_cross_entities_or_processes(tmp_path: Path) -> None:
    # Turns of three scopes written alternately sit next to each other in the store; the
    # neighbour probe around a strong match must still see only the caller's own turns.
    url = f"sqlite:///{tmp_path}/m.db"
    ana = Memori(url, embedder=HashEmbedder()).attribution("ana", "chat")
    bob = Memori(url, embedder=HashEmbedder()).attribution("bob", "chat")
    ana_billing = Memori(url, embedder=HashEmbedder()).attribution("ana", "billing")
    for i in range(6):
        ana.append([{"role": "user", "content": f"ana chat turn {i} about the sailing trip"}])
        bob.append([{"role": "user", "content": f"bob secret {i} about the sailing trip"}])
        ana_billing.append([{"role": "user", "content": f"invoice {i} for the sailing trip"}])
    for mem in (ana, bob, ana_billing):
        mem.flush()
    recalled = ana.recall("sailing trip", limit=20)
    assert len(recalled) == 6
    assert all(r.text.startswith("ana chat turn") for r in recalled)
    assert all(r.text.startswith("bob secret") for r in bob.recall("sailing trip", limit=20))


def test_a_named_speaker_is_answered_by_their_own_turns(tmp_path: Path) -> None:
    # Ben's turn says "Ana" and "cook" more often than Ana's own answer; the question is about
    # what Ana cooks, which Ana said.
    mem = Memori(f"sqlite:///{tmp_path}/m.db", embedder=None).attribution("chat")
    _chat(mem, [("Ben", d) for d in DISTRACTORS])
    _chat(
        mem,
        [
            ("Ben", "Ana, I cook lasagna and I cook it for Ana every Sunday."),
            ("Ana", "I cook a green curry when friends come over."),
        ],
    )
    mem.new_session()
    _chat(mem, [("Ben", d) for d in DISTRACTORS])
    top = mem.recall("What does Ana cook?", limit=1)
    assert [r.text for r in top] == ["Ana: I cook a green curry when friends come over."]


def test_a_month_in_the_query_favours_what_was_said_then(tmp_path: Path) -> None:
    mem = Memori(f"sqlite:///{tmp_path}/m.db", embedder=None).attribution("ana")
    for text, when in (
        ("I went hiking by the lake.", datetime(2023, 8, 12, 10, tzinfo=UTC)),
        ("I went hiking, hiking all day in the hills.", datetime(2023, 3, 10, 10, tzinfo=UTC)),
    ):
        mem.new_session()
        mem.record([Message(role="user", content=text, name="Ana")], at=when)
        mem.new_session()
        mem.record([Message(role="user", content=d, name="Ana") for d in DISTRACTORS], at=when)
    assert [r.text for r in mem.recall("Where did Ana go hiking in August 2023?", limit=1)] == [
        "Ana: I went hiking by the lake."
    ]
    assert [r.text for r in mem.recall("Where did Ana go hiking in March 2023?", limit=1)] == [
        "Ana: I went hiking, hiking all day in the hills."
    ]


def test_query_period_reads_dates_and_months() -> None:
    def days(query: str) -> tuple[str, str] | None:
        span = query_period(query)
        if span is None:
            return None
        start, end = (datetime.fromtimestamp(t, UTC).date().isoformat() for t in span)
        return start, end

    assert days("What did I do in the last two weeks of August 2023?") == (
        "2023-08-01",
        "2023-09-01",
    )
    assert days("How was John feeling on April 10, 2022?") == ("2022-04-10", "2022-04-11")
    assert days("on the 3rd of May, 2021") == ("2021-05-03", "2021-05-04")
    assert days("between 2023-08-14 and Dec 2023") == ("2023-08-14", "2024-01-01")
    assert days("When did we go hiking?") is None
    assert days("may I ask about 31 February 2023") is None


def test_a_turn_that_says_something_outranks_a_short_aside(tmp_path: Path) -> None:
    # BM25 favours short texts: "Concert tonight?" matches "concert" more densely than the turn
    # that tells what happened there. The turn that carries the content should come first.
    mem = Memori(f"sqlite:///{tmp_path}/m.db", embedder=None).attribution("ana")
    told = (
        "The concert was lovely: the choir sang for three hours, and after the concert we "
        "walked home along the river."
    )
    _chat(mem, [("Ben", d) for d in DISTRACTORS[:3]] + [("Ana", told)])
    mem.new_session()
    _chat(mem, [("Ben", "Concert tonight?")] + [("Ben", d) for d in DISTRACTORS[3:]])
    top = mem.recall("What happened at the concert?", limit=1)
    assert [r.text for r in top] == [f"Ana: {told}"]


def test_a_detail_is_found_through_the_session_it_belongs_to(tmp_path: Path) -> None:
    # The session that opens with the temples of Kyoto holds the answer turns later, beyond the
    # neighbour lift; a same-worded turn of an unrelated session must not outrank it.
    mem = Memori(f"sqlite:///{tmp_path}/m.db", embedder=None).attribution("ana")
    _chat(
        mem,
        [("Ben", "Tell me about the temples in Kyoto!")]
        + [("Ben", d) for d in DISTRACTORS[:4]]
        + [("Ana", "The temples were so beautiful.")],
    )
    mem.new_session()
    _chat(
        mem,
        [("Ben", d) for d in DISTRACTORS[4:]] + [("Ana", "The temples there were beautiful.")],
    )
    texts = [r.text for r in mem.recall("What did Ana think of the temples in Kyoto?", limit=3)]
    assert "Ana: The temples were so beautiful." in texts
    assert texts.index("Ana: The temples were so beautiful.") < texts.index(
        "Ana: The temples there were beautiful."
    )


def test_a_reply_is_embedded_with_the_turn_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ana's reply names nothing the query asks about; Ben's question before it does. Embedded
    # after that question, the reply outranks the question itself (Ana is the one asked
    # about); embedded alone, it only rises through the neighbour and session lifts, and Ben's
    # question stays first.
    reply = "Yes, twice a week, usually with my sister."

    def top(turn_context: bool) -> str:
        monkeypatch.setattr(EmbeddingIndexer, "turn_context", turn_context)
        mem = Memori(f"sqlite:///{tmp_path}/{turn_context}.db", embedder=HashEmbedder())
        mem.attribution("ana")
        _chat(mem, [("Ben", d) for d in DISTRACTORS[:3]])
        _chat(mem, [("Ben", "Do you still go bouldering at the old quarry?"), ("Ana", reply)])
        mem.new_session()
        _chat(mem, [("Ana", "Climbing gyms are crowded and loud these days.")])
        _chat(mem, [("Ben", d) for d in DISTRACTORS[3:]])
        mem.flush()
        return mem.recall("Does Ana go bouldering at the quarry?", limit=1)[0].text

    assert top(turn_context=True) == f"Ana: {reply}"
    assert top(turn_context=False) == "Ben: Do you still go bouldering at the old quarry?"


# 100: its halves are scored with numpy, the whole with onnxruntime (more than 64 rows).
@pytest.mark.parametrize("count", [1, 100, 300, 5000])
def test_cached_vectors_score_close_to_float32_and_the_same_in_any_slice(count: int) -> None:
    """The dense leg scores the scope's 8-bit cached vectors on a pool thread: within 0.005 of
    the float32 cosine, and a row scores the same whatever rows it is scored with."""
    from memori_core.recall import _DenseLeg
    from memori_core.store.vectors import Int8Rows
    from memori_core.testing import FailingEmbedder

    embedder = HashEmbedder()
    rng = np.random.default_rng(count)
    matrix = rng.normal(size=(count, embedder.dimension)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = Int8Rows.quantize(matrix)
    vector, scores = _DenseLeg(embedder, "trip to Tokyo", rows).result()
    assert vector is not None and scores is not None
    assert np.allclose(vector, embedder.embed(["trip to Tokyo"])[0])
    assert scores.dtype == np.float32 and scores.shape == (count,)
    assert np.abs(scores - matrix @ vector).max() < 0.005
    half = count // 2
    sliced = np.concatenate([rows[:half].similarities(vector), rows[half:].similarities(vector)])
    assert np.array_equal(sliced, scores)
    assert np.array_equal(Int8Rows.concat([rows[:half], rows[half:]]).similarities(vector), scores)

    # A failing embedder gives no vector and no scores.
    assert _DenseLeg(FailingEmbedder(), "trip to Tokyo", rows).result() == (None, None)
    assert _DenseLeg(FailingEmbedder(), "trip to Tokyo", None).result() == (None, None)
    # Without rows (a vector index searches instead) only the vector is computed.
    only_vector, no_scores = _DenseLeg(embedder, "trip to Tokyo", None).result()
    assert no_scores is None and np.array_equal(only_vector, vector)


def test_vectors_cached_after_the_pool_thread_started_are_scored_too() -> None:
    """The dense leg starts with the vectors cached so far; the ones the refresh adds are
    scored afterwards, and an entry that changed otherwise is scored again whole."""
    from memori_core.recall import _all_scores
    from memori_core.store.vectors import Int8Rows

    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(6, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    vector = matrix[4]
    rows = Int8Rows.quantize(matrix)
    ids = np.array([3, 5, 8, 9, 12, 20])
    expected = rows.similarities(vector)
    early = rows[:4].similarities(vector)
    assert np.array_equal(_all_scores(early, ids[:4], ids, rows, vector), expected)
    assert _all_scores(expected, ids, ids, rows, vector) is expected
    assert np.array_equal(_all_scores(expected, ids.copy(), ids, rows, vector), expected)
    # Cached rows that are not the refreshed ones' start (an evicted and refilled entry, a
    # shared scope whose first part grew): every row is scored again.
    stale = np.full(4, 9.0, dtype=np.float32)
    assert np.array_equal(_all_scores(stale, ids[1:5], ids, rows, vector), expected)
    assert np.array_equal(_all_scores(stale, np.arange(8), ids, rows, vector), expected)
    assert np.array_equal(_all_scores(stale, None, ids, rows, vector), expected)


def test_cached_vectors_handle_empty_scopes_and_zero_vectors() -> None:
    from memori_core.store.vectors import Int8Rows, ScopeVectors

    assert Int8Rows.empty(8).similarities(np.ones(8, np.float32)).shape == (0,)
    rows = Int8Rows.quantize(np.vstack([np.zeros(8), np.full(8, 0.5)]).astype(np.float32))
    assert rows.similarities(np.zeros(8, np.float32)).tolist() == [0.0, 0.0]
    assert rows.similarities(np.full(8, 0.5, np.float32)).tolist() == pytest.approx([0.0, 2.0])

    # The cache grows by doubling and keeps every row it was given, in order.
    entry = ScopeVectors(0)
    rng = np.random.default_rng(7)
    batches = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 70, 1, 200)]
    for start, batch in zip((0, 3, 73, 74), batches, strict=True):
        entry.append(list(range(start, start + len(batch))), batch)
    ids, cached = entry.view()
    assert ids.tolist() == list(range(274)) and len(cached) == 274
    query = rng.normal(size=8).astype(np.float32)
    exact = np.vstack(batches) @ query
    assert np.abs(cached.similarities(query) - exact).max() < 0.02 * np.abs(exact).max()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(min_value=1, max_value=40),
    dimension=st.integers(min_value=2, max_value=64),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
def test_cached_vector_scores_stay_within_the_quantization_bound(
    rows: int, dimension: int, seed: int, scale: float
) -> None:
    """Whatever the vectors, an 8-bit score is off by at most what rounding each code can cost:
    half a step of the row's scale on each query element, half a step of the query's scale on
    each row element, and their product."""
    from memori_core.store.vectors import Int8Rows

    rng = np.random.default_rng(seed)
    matrix = (rng.normal(size=(rows, dimension)) * scale).astype(np.float32)
    query = (rng.normal(size=dimension) * scale).astype(np.float32)
    got = Int8Rows.quantize(matrix).similarities(query).astype(np.float64)
    exact = matrix.astype(np.float64) @ query.astype(np.float64)
    row_step = np.abs(matrix).max(axis=1) / 127.0
    query_step = np.abs(query).max() / 127.0
    bound = (
        row_step / 2 * np.abs(query).sum()
        + query_step / 2 * np.abs(matrix).sum(axis=1)
        + dimension * row_step * query_step / 4
    )
    assert np.all(np.abs(got - exact) <= bound * 1.001 + 1e-6 * np.abs(exact) + 1e-30)
