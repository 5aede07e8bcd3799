"""The attribution scope: who said it (entity), to which agent (process), in which session."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass

from memori_core.errors import InvalidScopeError

__all__ = ["MAX_ID_LENGTH", "Scope", "validate_id", "validate_session_id"]

MAX_ID_LENGTH = 255


def validate_id(value: object, field: str) -> str:
    """Return `value` NFC-normalised, or raise `InvalidScopeError` saying what is wrong with it."""
    if not isinstance(value, str):
        raise InvalidScopeError(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidScopeError(f"{field} must not be empty")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise InvalidScopeError(f"{field} contains a lone surrogate")
    normalised = unicodedata.normalize("NFC", value)
    if len(normalised) > MAX_ID_LENGTH:
        raise InvalidScopeError(
            f"{field} is {len(normalised)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in normalised):
        raise InvalidScopeError(f"{field} contains a control character")
    if not normalised.strip():
        raise InvalidScopeError(f"{field} must not be only whitespace")
    return normalised


def validate_session_id(value: object) -> str:
    """Return a session id in canonical UUID text form; accepts `uuid.UUID` or its string."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidScopeError(f"session_id must be a UUID or str, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidScopeError(f"session_id {value!r} is not a UUID") from None


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a memory belongs to. Frozen and validated; every store method takes one.

    `entity_id` is the end user (required). `process_id` is the agent or workflow; `None`
    means "no particular agent", and is a scope of its own, never a wildcard. `session_id`
    is one conversation thread.
    """

    entity_id: str
    process_id: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entity_id", validate_id(self.entity_id, "entity_id"))
        if self.process_id is not None:
            object.__setattr__(self, "process_id", validate_id(self.process_id, "process_id"))
        if self.session_id is not None:
            object.__setattr__(self, "session_id", validate_session_id(self.session_id))

    def with_session(self, session_id: str | uuid.UUID | None) -> Scope:
        """The same entity and process, in another session."""
        return Scope(
            self.entity_id, self.process_id, None if session_id is None else str(session_id)
        )
