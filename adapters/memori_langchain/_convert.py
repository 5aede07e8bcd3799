"""Conversion between LangChain messages and memori-core `Message`s, shared by every class here.

A LangChain message is stored as a core `Message` whose `role`/`content` are the OpenAI
equivalents (so recall and the OpenAI path read it) and whose `payload` holds the message's
`message_to_dict` form under the key `"langchain"` (so it is rebuilt exactly). Messages written
by other paths (no such payload) are rebuilt from their OpenAI fields.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.tool import ToolCall

from memori_core import Message, StoredMessage

__all__ = [
    "PAYLOAD_KEY",
    "from_core",
    "message_text",
    "session_uuid",
    "to_core",
]

PAYLOAD_KEY = "langchain"

# Fixed namespace for deriving session UUIDs from names that are not UUIDs (thread ids, the
# session strings people pass to RunnableWithMessageHistory). Never change it: stored sessions
# are found again through it.
_SESSION_NAMESPACE = uuid.UUID("5d3c1f0e-6f43-4b8e-9a52-6d1f0c7e2a41")

_ROLE_OF_TYPE = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "developer",
    "tool": "tool",
    "function": "tool",
}
_CORE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def session_uuid(name: str, entity_id: str, process_id: str | None) -> str:
    """The memori session id for `name`: itself if it is a UUID, else one derived from it.

    Derived ids include the entity and process, so two users (or two agents) who both call
    their thread "main" get two distinct sessions instead of a `ScopeError`.
    """
    try:
        return str(uuid.UUID(name))
    except ValueError:
        key = json.dumps([entity_id, process_id, name])
        return str(uuid.uuid5(_SESSION_NAMESPACE, key))


def message_text(message: BaseMessage) -> str:
    """The plain text of a message (text blocks joined), without images or tool blocks."""
    return str(message.text)


def _role(message: BaseMessage) -> str:
    if isinstance(message, ChatMessage):
        if message.role in _CORE_ROLES:
            return message.role
        return _ROLE_OF_TYPE.get(message.role, "user")
    return _ROLE_OF_TYPE.get(message.type, "user")


def _payload(message: BaseMessage) -> dict[str, Any]:
    as_dict = message_to_dict(message)
    try:
        json.dumps(as_dict, allow_nan=False)
    except (TypeError, ValueError):
        # A tool artifact or metadata value that JSON cannot hold: keep pydantic's JSON form
        # (bytes become base64 text, datetimes ISO text) rather than refuse the message.
        as_dict = {"type": message.type, "data": message.model_dump(mode="json")}
    return {PAYLOAD_KEY: as_dict}


def to_core(message: BaseMessage) -> Message:
    """The core `Message` for a LangChain message (OpenAI role and text, exact payload)."""
    tool_calls: list[dict[str, Any]] | None = None
    if isinstance(message, AIMessage) and message.tool_calls:
        tool_calls = [
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
            }
            for call in message.tool_calls
        ]
    return Message(
        role=_role(message),
        content=message_text(message),
        name=message.name,
        tool_calls=tool_calls,
        tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
        payload=_payload(message),
    )


def to_core_list(messages: Sequence[BaseMessage]) -> list[Message]:
    """`to_core` over a sequence."""
    return [to_core(m) for m in messages]


def _tool_call(raw: dict[str, Any]) -> ToolCall:
    function = raw.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except ValueError:
        args = {"__raw_arguments__": arguments}
    if not isinstance(args, dict):
        args = {"__raw_arguments__": args}
    return ToolCall(name=str(function.get("name", "")), args=args, id=raw.get("id"))


def from_core(stored: StoredMessage | Message) -> BaseMessage:
    """Rebuild the LangChain message stored as `stored` (exactly, when it was written here)."""
    message = stored.message if isinstance(stored, StoredMessage) else stored
    payload = message.payload
    if isinstance(payload, dict) and isinstance(payload.get(PAYLOAD_KEY), dict):
        return messages_from_dict([payload[PAYLOAD_KEY]])[0]
    # Written by another path (the OpenAI interceptor, another adapter): use the OpenAI fields.
    if message.role == "user":
        return HumanMessage(content=message.content, name=message.name)
    if message.role == "assistant":
        calls = [_tool_call(c) for c in message.tool_calls or []]
        return AIMessage(content=message.content, name=message.name, tool_calls=calls)
    if message.role == "tool":
        return ToolMessage(
            content=message.content, tool_call_id=message.tool_call_id or "", name=message.name
        )
    return SystemMessage(content=message.content, name=message.name)
