"""Convert LlamaIndex `ChatMessage`s to memori-core `Message`s and back, and count their tokens.

A `ChatMessage` is stored as an OpenAI-style role plus its plain text (what recall searches), and
its full `model_dump(mode="json")` in `Message.payload` under `PAYLOAD_KEY`, so tool-call blocks,
images, thinking blocks and `additional_kwargs` come back exactly. Messages written by other
adapters (no payload of ours) are rebuilt from their OpenAI shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from pydantic import BaseModel, ValidationError

from memori_core import Message, StoredMessage
from memori_core.context import is_memory_block, strip_memory_block

__all__ = [
    "PAYLOAD_KEY",
    "TokenCounter",
    "count_message_tokens",
    "default_token_counter",
    "from_memori",
    "is_memory_block_message",
    "message_text",
    "query_text",
    "to_memori",
    "to_memori_all",
    "window_start",
]

logger = logging.getLogger(__name__)

#: The key under which a `ChatMessage` dump is kept in `Message.payload`.
PAYLOAD_KEY = "llama_index.chat_message"

TokenCounter = Callable[[str], int]

# LlamaIndex knows provider-specific roles; memori-core stores the OpenAI set.
_ROLE_TO_MEMORI = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "developer",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
    MessageRole.CHATBOT: "assistant",  # Cohere's name for the assistant
    MessageRole.MODEL: "assistant",  # Gemini's name for the assistant
}

# Per-message framing tokens (role, separators), as in OpenAI's own counting recipe.
_MESSAGE_OVERHEAD_TOKENS = 4


def message_text(message: ChatMessage) -> str:
    """The plain text of a message: its text blocks joined by newlines."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def is_memory_block_message(message: ChatMessage) -> bool:
    """True if the message holds nothing but an injected memory block (ours, never stored)."""
    text = message_text(message)
    return bool(text) and is_memory_block(text) and not strip_memory_block(text).strip()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _tool_calls(message: ChatMessage) -> list[dict[str, Any]] | None:
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            calls.append(
                {
                    "id": block.tool_call_id or "",
                    "type": "function",
                    "function": {
                        "name": block.tool_name,
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
            )
    if not calls:
        # Older LLM integrations (llama-index-llms-openai) keep OpenAI tool calls here.
        legacy = message.additional_kwargs.get("tool_calls")
        if isinstance(legacy, list):
            for item in legacy:
                item = _jsonable(item)
                if isinstance(item, dict):
                    calls.append(item)
    return calls or None


def _dump(message: ChatMessage) -> dict[str, Any]:
    """The JSON dump of a message, with injected memory blocks and unserialisable extras removed."""
    blocks = [
        TextBlock(text=strip_memory_block(b.text))
        if isinstance(b, TextBlock) and is_memory_block(b.text)
        else b
        for b in message.blocks
    ]
    clean = message.model_copy(update={"blocks": blocks})
    try:
        dump = clean.model_dump(mode="json")
        json.dumps(dump, allow_nan=False)
        return dump
    except (TypeError, ValueError) as e:
        # additional_kwargs may hold provider objects that have no JSON form; keep the rest.
        kept: dict[str, Any] = {}
        for key, value in clean.additional_kwargs.items():
            try:
                json.dumps(ChatMessage(additional_kwargs={key: value}).model_dump(mode="json"))
            except (TypeError, ValueError):
                continue
            kept[key] = value
        logger.warning(
            "dropped additional_kwargs %s that are not JSON-serialisable: %s",
            sorted(set(clean.additional_kwargs) - set(kept)),
            e,
        )
        return clean.model_copy(update={"additional_kwargs": kept}).model_dump(mode="json")


def to_memori(message: ChatMessage) -> Message:
    """The memori-core `Message` for a LlamaIndex `ChatMessage` (lossless via its payload)."""
    extra = message.additional_kwargs
    tool_call_id = extra.get("tool_call_id")
    name = extra.get("name")
    return Message(
        role=_ROLE_TO_MEMORI.get(message.role, "user"),
        content=strip_memory_block(message_text(message)),
        name=name if isinstance(name, str) else None,
        tool_calls=_tool_calls(message),
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        payload={PAYLOAD_KEY: _dump(message)},
    )


def to_memori_all(messages: Iterable[ChatMessage]) -> list[Message]:
    """Convert messages for storing, leaving out injected memory-block messages."""
    return [to_memori(m) for m in messages if not is_memory_block_message(m)]


def _from_openai_shape(message: Message) -> ChatMessage:
    blocks: list[Any] = [TextBlock(text=message.content)] if message.content else []
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        raw_args = function.get("arguments", {})
        try:
            args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
        except ValueError:
            args = raw_args
        blocks.append(
            ToolCallBlock(
                tool_call_id=call.get("id") or None,
                tool_name=str(function.get("name", "")),
                tool_kwargs=args if isinstance(args, dict | str) else {},
            )
        )
    extra: dict[str, Any] = {}
    if message.tool_call_id is not None:
        extra["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        extra["name"] = message.name
    return ChatMessage(role=MessageRole(message.role), blocks=blocks, additional_kwargs=extra)


def from_memori(message: Message | StoredMessage) -> ChatMessage:
    """Rebuild the `ChatMessage` a stored message came from (or its OpenAI-shape equivalent)."""
    if isinstance(message, StoredMessage):
        message = message.message
    payload = message.payload
    if isinstance(payload, dict) and isinstance(payload.get(PAYLOAD_KEY), dict):
        try:
            return ChatMessage.model_validate(payload[PAYLOAD_KEY])
        except ValidationError as e:  # written by another llama-index version
            logger.warning("could not rebuild a stored ChatMessage, using its text: %s", e)
    return _from_openai_shape(message)


def query_text(messages: Sequence[ChatMessage] | None) -> str:
    """The text to recall with: the latest user message, else the latest message with text."""
    if not messages:
        return ""
    for role in (MessageRole.USER, None):
        for message in reversed(messages):
            if role is not None and message.role != role:
                continue
            if is_memory_block_message(message):
                continue
            text = strip_memory_block(message_text(message)).strip()
            if text:
                return text
    return ""


def count_message_tokens(message: ChatMessage, count: TokenCounter) -> int:
    """Estimated prompt tokens of one message: its text, its tool calls and a fixed overhead."""
    tokens = _MESSAGE_OVERHEAD_TOKENS + count(message_text(message))
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            tokens += count(block.tool_name) + count(str(block.tool_kwargs))
    return tokens


def window_start(messages: Sequence[ChatMessage], budget: int, count: TokenCounter) -> int:
    """Index where the most recent messages that fit in `budget` tokens begin.

    The current turn (the latest user message and everything after it) is kept even when it
    alone exceeds the budget, so the model always sees what it is answering. The window never
    opens with an assistant or tool message, whose tool call or question would be missing.
    """
    if not messages:
        return 0
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].role == MessageRole.USER),
        len(messages) - 1,
    )
    start = last_user
    used = sum(count_message_tokens(m, count) for m in messages[last_user:])
    while start > 0:
        cost = count_message_tokens(messages[start - 1], count)
        if used + cost > budget:
            break
        used += cost
        start -= 1
    while start < last_user and messages[start].role not in (
        MessageRole.USER,
        MessageRole.SYSTEM,
    ):
        start += 1
    return start


def _estimate(text: str) -> int:
    # About four characters per token for English; used only when no tokenizer can be loaded.
    return (len(text) + 3) // 4


def default_token_counter() -> TokenCounter:
    """Count tokens with LlamaIndex's global tokenizer (`Settings.tokenizer`).

    That tokenizer is tiktoken's cl100k_base, which llama-index-core ships in its package
    (`_static/tiktoken_cache`), so no download happens. If it cannot be loaded (for example
    `TIKTOKEN_CACHE_DIR` points elsewhere and the network is off), fall back to an estimate of
    four characters per token rather than failing the agent's call.
    """
    try:
        from llama_index.core import Settings

        tokenizer = Settings.tokenizer
        tokenizer("probe")
    except Exception as e:  # any failure to load a tokenizer must not break the agent
        logger.warning("no tokenizer available (%s); estimating 4 characters per token", e)
        return _estimate
    return lambda text: len(tokenizer(text))
