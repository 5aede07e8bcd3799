"""Small helpers shared by the chat and responses adapters: reading SDK objects without the SDK."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["estimate_tokens", "field", "is_given_str", "plain", "text_of_content"]


def field(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` for mappings, `obj.name` for SDK objects (pydantic models), else `default`."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def plain(obj: Any) -> Any:
    """`obj` as plain JSON-like data: SDK models are dumped, mappings and lists copied."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            # `warnings=False`: generic SDK models (ParsedChatCompletionMessage) warn otherwise.
            return plain(dump(mode="json", exclude_none=True, warnings=False))
        except TypeError:
            return plain(dump())
    return obj


def text_of_content(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
                continue
            text = field(part, "text")
            if isinstance(text, str):
                parts.append(text)
            elif isinstance(field(part, "refusal"), str):
                parts.append(field(part, "refusal"))
        return "\n".join(parts)
    return ""


def is_given_str(value: Any) -> bool:
    """True if an optional SDK argument holds a string (not missing, None or `omit`)."""
    return isinstance(value, str)


def estimate_tokens(text: str) -> int:
    """About four characters a token, plus a few for the message frame; good enough for budgets."""
    return max(1, math.ceil(len(text) / 4)) + 4
