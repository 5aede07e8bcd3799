"""Recall quality the LoCoMo benchmark measured, pinned on small made-up conversations.

Each test is a case the previous ranking got wrong: a reply that only makes sense next to the
question it answers, a question whose function words matched every distractor, and the
neighbour probing that must never cross entities or processes.
"""

from __future__ import annotations

from pathlib import Path

from memori_core import Memori, Message
from memori_core.recall import lexical_terms
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
