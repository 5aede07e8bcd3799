"""Value objects that cross the public API: messages in, recalled memories and reports out."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from memori_core.errors import InvalidMessageError

__all__ = [
    "ROLES",
    "ForgetReport",
    "MemoryKind",
    "Message",
    "Recalled",
    "ScoreParts",
    "SessionInfo",
    "StoredMessage",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MemoryKind = Literal["fact", "preference", "event", "summary"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message in the OpenAI shape, plus an opaque `payload` for adapters.

    `content` is the text used for recall. `payload` is any JSON-serialisable value an adapter
    needs to rebuild its own message type exactly (LangChain content blocks, pydantic-ai parts).
    """

    role: str
    content: str = ""
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    payload: Any = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidMessageError(f"role must be one of {sorted(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise InvalidMessageError(
                f"content must be str, got {type(self.content).__name__}; "
                "flatten multimodal content to text first (see Message.from_openai)"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise InvalidMessageError("name must be a str or None")
        if self.payload is not None:
            try:
                json.dumps(self.payload, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InvalidMessageError(f"payload is not JSON-serialisable: {e}") from None

    @classmethod
    def from_openai(cls, message: Mapping[str, Any]) -> Message:
        """Build from an OpenAI chat message dict; list content is flattened to its text parts."""
        if not isinstance(message, Mapping):
            raise InvalidMessageError(f"a message must be a mapping, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidMessageError("a message needs a string 'role'")
        content = message.get("content")
        text: str
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts: list[str] = []
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif isinstance(part, str):
                    parts.append(part)
            text = "\n".join(parts)
        else:
            raise InvalidMessageError(
                f"content must be str, list or None, got {type(content).__name__}"
            )
        tool_calls = message.get("tool_calls")
        return cls(
            role=role,
            content=text,
            name=message.get("name"),
            tool_calls=[dict(c) for c in tool_calls] if tool_calls else None,
            tool_call_id=message.get("tool_call_id"),
            payload=message.get("payload"),
        )

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat message dict for this message (payload dropped)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored in a session's append-only transcript."""

    id: int
    session_id: str
    entity_id: str
    process_id: str | None
    seq: int
    message: Message
    created_at: datetime

    @property
    def role(self) -> str:
        return self.message.role

    @property
    def content(self) -> str:
        return self.message.content


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """Why a memory was recalled: each component of its final score."""

    lexical: float = 0.0
    dense: float = 0.0
    recency: float = 0.0
    salience: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "lexical": self.lexical,
            "dense": self.dense,
            "recency": self.recency,
            "salience": self.salience,
        }


@dataclass(frozen=True, slots=True)
class Recalled:
    """One recalled memory with its score and the parts the score is made of."""

    id: int
    text: str
    score: float
    parts: ScoreParts
    kind: str
    created_at: datetime
    session_id: str | None
    source_message_ids: tuple[int, ...]
    process_id: str | None = None
    times_seen: int = 1

    def __post_init__(self) -> None:
        if not math.isfinite(self.score):
            raise ValueError("score must be finite")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A conversation thread and how much it holds."""

    id: str
    entity_id: str
    process_id: str | None
    created_at: datetime
    last_active_at: datetime
    message_count: int


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What `Memori.forget` deleted."""

    entity_id: str
    sessions: int = 0
    messages: int = 0
    memories: int = 0
    vectors: int = 0
    extra: dict[str, int] = field(default_factory=dict)
