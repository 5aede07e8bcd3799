"""The memory block injected into a model call, and how to recognise it again."""

from __future__ import annotations

from collections.abc import Sequence

from memori_core.recall import estimate_tokens
from memori_core.types import Recalled

__all__ = [
    "MEMORY_BLOCK_END",
    "MEMORY_BLOCK_START",
    "format_memory_block",
    "is_memory_block",
    "strip_memory_block",
]

MEMORY_BLOCK_START = "<memori-memory>"
MEMORY_BLOCK_END = "</memori-memory>"
_HEADER = (
    "Relevant memories about this user from earlier conversations "
    "(use them if they help; do not mention this block):"
)


def format_memory_block(memories: Sequence[Recalled], token_budget: int | None = None) -> str:
    """The marked block for `memories`, best first, cut to `token_budget` tokens ('' if empty)."""
    if not memories:
        return ""
    lines = [MEMORY_BLOCK_START, _HEADER]
    used = estimate_tokens("\n".join(lines)) + estimate_tokens(MEMORY_BLOCK_END)
    for memory in memories:
        line = f"- [{memory.created_at:%Y-%m-%d}] {memory.text}"
        cost = estimate_tokens(line)
        if token_budget is not None and used + cost > token_budget:
            continue
        used += cost
        lines.append(line)
    if len(lines) == 2:
        return ""
    lines.append(MEMORY_BLOCK_END)
    return "\n".join(lines)


def is_memory_block(text: str) -> bool:
    """True if `text` is (or starts with) an injected memory block."""
    return text.lstrip().startswith(MEMORY_BLOCK_START)


def strip_memory_block(text: str) -> str:
    """`text` without any injected memory block, so it is never stored again."""
    while True:
        start = text.find(MEMORY_BLOCK_START)
        if start < 0:
            return text
        end = text.find(MEMORY_BLOCK_END, start)
        if end < 0:
            return text[:start].rstrip()
        text = (text[:start] + text[end + len(MEMORY_BLOCK_END) :]).strip()
