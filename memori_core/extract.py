"""Turning stored turns into memories.

Offline default (`RuleExtractor`): every user and assistant turn is kept as an episodic `event`
memory, and durable first-person statements (preferences, identity, plans, facts) become
`preference`/`fact` memories, deduplicated by the store (`times_seen`) and superseded when a newer
statement sets the same attribute ("my email is ..." twice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from memori_core.store.sql import MemoryDraft
from memori_core.types import StoredMessage

__all__ = ["Extractor", "RuleExtractor", "episodic_drafts"]


@runtime_checkable
class Extractor(Protocol):
    """Derives durable memories from newly stored messages (episodic turns are kept anyway)."""

    def extract(self, messages: Sequence[StoredMessage]) -> list[MemoryDraft]: ...


# A sentence ends at . ! or ? followed by white space, so "a@b.c" or "3.5" stay whole.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")

_PREFERENCE = re.compile(
    r"\b(?:i|we)\s+(?:really\s+|do\s+not\s+|don't\s+|dont\s+)?"
    r"(?:prefer|like|love|enjoy|hate|dislike|can't stand|cannot stand|would rather|want)\b",
    re.IGNORECASE,
)
_FACT = re.compile(
    r"\b(?:my\s+(?:name|email|e-mail|phone|address|birthday|job|role|title|company|team|"
    r"wife|husband|partner|son|daughter|kids?|dog|cat|favou?rite\s+\w+|timezone|time zone)\b"
    r"|i\s+(?:am|'m|was)\s+(?:a|an|the|from|based|allergic|vegan|vegetarian|\d)"
    r"|i\s+(?:live|work|grew up|moved|study|studied)\b"
    r"|i\s+have\s+(?:a|an|two|three|\d)\b"
    r"|call\s+me\b)",
    re.IGNORECASE,
)
_PLAN = re.compile(
    r"\b(?:i\s+(?:am|'m)\s+(?:planning|going|thinking|hoping|about)|i\s+plan\s+to|"
    r"i\s+will|i'll|we're\s+planning|we\s+are\s+planning|i\s+intend|i\s+need\s+to)\b",
    re.IGNORECASE,
)
_ATTRIBUTE = re.compile(r"\bmy\s+((?:favou?rite\s+)?\w+(?:\s+\w+)?)\s+(?:is|are)\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^\s*(?:what|who|where|when|why|how|which|do|does|did|can|could|would|should|is|are)\b",
    re.IGNORECASE,
)


class RuleExtractor:
    """First-person statements of the user become facts and preferences; no model, no network."""

    max_chars = 300

    def extract(self, messages: Sequence[StoredMessage]) -> list[MemoryDraft]:
        drafts: list[MemoryDraft] = []
        for stored in messages:
            if stored.role != "user" or not stored.content:
                continue
            for piece in _SENTENCE_BREAK.split(stored.content):
                sentence = piece.strip()
                if len(sentence) < 8 or len(sentence) > self.max_chars:
                    continue
                if sentence.endswith("?") or _QUESTION_START.match(sentence):
                    continue
                kind: str | None = None
                salience = 0.0
                if _PREFERENCE.search(sentence):
                    kind, salience = "preference", 0.9
                elif _FACT.search(sentence):
                    kind, salience = "fact", 0.85
                elif _PLAN.search(sentence):
                    kind, salience = "fact", 0.75
                if kind is None:
                    continue
                attribute = _ATTRIBUTE.search(sentence)
                fact_key = f"my {attribute.group(1).lower()}" if attribute else None
                drafts.append(
                    MemoryDraft(
                        kind=kind,
                        text=sentence,
                        salience=salience,
                        source_seq=(stored.seq,),
                        fact_key=fact_key,
                    )
                )
        return drafts


def episodic_drafts(messages: Sequence[StoredMessage]) -> list[MemoryDraft]:
    """Every user and assistant turn with text, as an `event` memory of that turn."""
    drafts = []
    for stored in messages:
        if stored.role not in {"user", "assistant"} or not stored.content.strip():
            continue
        speaker = stored.message.name or stored.role
        drafts.append(
            MemoryDraft(
                kind="event",
                text=f"{speaker}: {stored.content}" if stored.message.name else stored.content,
                salience=0.5 if stored.role == "user" else 0.3,
                source_seq=(stored.seq,),
            )
        )
    return drafts
