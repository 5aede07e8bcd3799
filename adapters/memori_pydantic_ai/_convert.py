"""Turn pydantic-ai messages into memori-core messages and back.

Each `ModelMessage` becomes one or more core `Message`s in the OpenAI shape (text for recall,
tool calls as `tool_calls`, tool returns as role `"tool"`). The first of them carries the exact
pydantic-ai JSON of the message in its payload, so the message can be rebuilt unchanged; the
others are marked as continuations so a reader skips them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    RetryPromptPart,
    SystemPromptPart,
    TextContent,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from memori_core import Message, StoredMessage

__all__ = [
    "CONTINUED_KEY",
    "MESSAGE_KEY",
    "dump_message",
    "load_message",
    "message_json",
    "prompt_text",
    "session_id_for",
    "to_core_messages",
]

MESSAGE_KEY = "pydantic_ai"
"""Payload key holding `ModelMessagesTypeAdapter.dump_python([message], mode="json")`."""

CONTINUED_KEY = "pydantic_ai_continued"
"""Payload key of the extra core messages one pydantic-ai message was split into."""

# Fixed so that every process maps a conversation to the same memori session.
_SESSION_NAMESPACE = uuid.UUID("5d0c6d3e-8a4e-4f55-9a57-0c7f3b1e2a61")


def session_id_for(entity_id: str, process_id: str | None, conversation_id: str) -> str:
    """The memori session that holds pydantic-ai conversation `conversation_id` for this scope.

    Derived (UUID5) from the entity, the process and the conversation id, so the same
    conversation continued by another agent or user lands in that scope's own session instead
    of colliding with a session another scope owns.
    """
    key = json.dumps([entity_id, process_id, conversation_id], ensure_ascii=False)
    return str(uuid.uuid5(_SESSION_NAMESPACE, key))


def dump_message(message: ModelMessage) -> list[dict[str, Any]]:
    """The exact JSON form of one message, as stored in a payload."""
    dumped: list[dict[str, Any]] = ModelMessagesTypeAdapter.dump_python([message], mode="json")
    return dumped


def load_message(dumped: Any) -> ModelMessage:
    """Rebuild one message from its stored JSON form."""
    return ModelMessagesTypeAdapter.validate_python(dumped)[0]


def message_json(stored: StoredMessage) -> list[dict[str, Any]] | None:
    """The pydantic-ai JSON a stored message carries, or None if it carries none."""
    payload = stored.message.payload
    if isinstance(payload, dict) and isinstance(payload.get(MESSAGE_KEY), list):
        dumped: list[dict[str, Any]] = payload[MESSAGE_KEY]
        return dumped
    return None


def to_core_messages(messages: Iterable[ModelMessage]) -> list[Message]:
    """Core messages for `messages`, in order; see the module docstring for the mapping."""
    out: list[Message] = []
    for message in messages:
        out.extend(_one(message))
    return out


def _one(message: ModelMessage) -> list[Message]:
    drafts = _request(message) if isinstance(message, ModelRequest) else _response(message)
    if not drafts:
        # A message with no text (only instructions, thinking, native tool parts...) still
        # needs a row to carry its payload.
        drafts = [{"role": "user" if isinstance(message, ModelRequest) else "assistant"}]
    payload: dict[str, Any] = {MESSAGE_KEY: dump_message(message)}
    out = []
    for index, draft in enumerate(drafts):
        out.append(Message(**draft, payload=payload if index == 0 else {CONTINUED_KEY: index}))
    return out


def _request(message: ModelRequest) -> list[dict[str, Any]]:
    drafts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, SystemPromptPart):
            drafts.append({"role": "system", "content": part.content})
        elif isinstance(part, UserPromptPart):
            drafts.append({"role": "user", "content": prompt_text(part.content)})
        elif isinstance(part, ToolReturnPart):
            drafts.append(
                {
                    "role": "tool",
                    "content": part.model_response_str(),
                    "name": part.tool_name,
                    "tool_call_id": part.tool_call_id,
                }
            )
        elif isinstance(part, RetryFeedbackPart | RetryPromptPart):
            # RetryPromptPart is legacy (translated on load) but may still be built by hand.
            drafts.append({"role": "user", "content": part.model_response()})
    return drafts


def _response(message: ModelResponse) -> list[dict[str, Any]]:
    texts = [part.content for part in message.parts if isinstance(part, TextPart)]
    calls = [
        {
            "id": part.tool_call_id,
            "type": "function",
            "function": {"name": part.tool_name, "arguments": part.args_as_json_str()},
        }
        for part in message.parts
        # Native (provider-run) tool calls are not ToolCallParts: the provider answered them.
        if isinstance(part, ToolCallPart)
    ]
    if not texts and not calls:
        return []
    draft: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if calls:
        draft["tool_calls"] = calls
    return [draft]


def prompt_text(content: str | Sequence[Any]) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for item in content:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, TextContent):
            texts.append(item.content)
    return "\n".join(texts)
