"""Responses API: read `input`, prepend the memory block to `instructions`, rebuild the reply."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from memori_core.llm._common import field, is_given_str, text_of_content
from memori_core.llm._turn import Turn, conversation_shape
from memori_core.types import Message

__all__ = ["ResponsesAccumulator", "ResponsesTurn", "items_to_messages"]

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _AssistantGroup:
    """Consecutive assistant output (text and function calls) that forms one assistant turn."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def message(self, payload: Any = None) -> Message:
        return Message(
            role="assistant",
            content="\n".join(t for t in self.text if t),
            tool_calls=self.calls or None,
            payload=payload,
        )


def _function_call(item: Any) -> dict[str, Any]:
    return {
        "id": field(item, "call_id"),
        "type": "function",
        "function": {
            "name": field(item, "name") or "",
            "arguments": field(item, "arguments") or "",
        },
    }


def items_to_messages(items: Iterable[Any]) -> list[Message]:
    """Responses input or output items as chat-shaped `Message`s.

    A run of assistant message items and function calls becomes one assistant message, so the
    reply stored after a call equals what the app later resends as `input += response.output`.
    Items without a chat equivalent (reasoning, built-in tool calls) are skipped.
    """
    out: list[Message] = []
    group: _AssistantGroup | None = None

    def flush() -> None:
        nonlocal group
        if group is not None:
            out.append(group.message())
            group = None

    for item in items:
        kind = field(item, "type")
        role = field(item, "role")
        if kind in (None, "message") and role in _MESSAGE_ROLES:
            text = text_of_content(field(item, "content"))
            if role == "assistant":
                group = group or _AssistantGroup()
                group.text.append(text)
            else:
                flush()
                out.append(Message(role=role, content=text))
        elif kind == "function_call":
            group = group or _AssistantGroup()
            group.calls.append(_function_call(item))
        elif kind == "function_call_output":
            flush()
            output = field(item, "output")
            out.append(
                Message(
                    role="tool",
                    content=output if isinstance(output, str) else text_of_content(output),
                    tool_call_id=field(item, "call_id"),
                )
            )
    flush()
    return out


def _has_server_history(kwargs: dict[str, Any]) -> bool:
    """True if the server already holds the earlier turns (so replaying them would duplicate)."""
    previous = kwargs.get("previous_response_id")
    conversation = kwargs.get("conversation")
    return is_given_str(previous) or isinstance(conversation, str | Mapping)


class ResponsesTurn(Turn):
    """A `responses.create`/`parse` call."""

    def __init__(
        self,
        kwargs: dict[str, Any],
        *,
        stream: bool,
        session_id: str,
        replay_token_budget: int,
    ) -> None:
        raw = kwargs.get("input")
        if isinstance(raw, str):
            caller = [Message(role="user", content=raw)]
            items: list[Any] | None = None
        elif isinstance(raw, list | tuple):
            items = list(raw)
            caller = items_to_messages(items)
        else:
            # No input (e.g. only a stored prompt) or an unknown shape: nothing to recall with.
            items = None
            caller = []
        query, resume_shape = conversation_shape(caller)
        super().__init__(
            kwargs,
            stream=stream,
            caller=caller,
            query=query,
            resume_shape=resume_shape and not _has_server_history(kwargs),
            session_id=session_id,
            replay_token_budget=replay_token_budget,
        )
        self._items = items

    def build(self, block: str, replay: list[Message]) -> dict[str, Any]:
        out = dict(self.kwargs)
        if block:
            instructions = out.get("instructions")
            given = is_given_str(instructions) and instructions
            out["instructions"] = f"{block}\n\n{instructions}" if given else block
        # Text turns only: replaying function calls would need their call ids to stay valid.
        turns = [
            {"role": m.role, "content": m.content}
            for m in replay
            if m.role in ("user", "assistant") and m.content
        ]
        if turns:
            current = (
                self._items
                if self._items is not None
                else [{"role": "user", "content": out["input"]}]
            )
            out["input"] = [*turns, *current]
        return out

    def reply(self, result: Any) -> Message | None:
        output = field(result, "output")
        if not output:
            return None
        return _merge_assistant(items_to_messages(output))

    def accumulator(self) -> ResponsesAccumulator:
        return ResponsesAccumulator()


def _merge_assistant(messages: list[Message], payload: Any = None) -> Message | None:
    group = _AssistantGroup()
    for message in messages:
        if message.role == "assistant":
            group.text.append(message.content)
            group.calls.extend(message.tool_calls or [])
    if not group.text and not group.calls:
        return None
    return group.message(payload)


class ResponsesAccumulator:
    """Rebuilds the reply of a streamed response from its events."""

    def __init__(self) -> None:
        self._final: Any = None
        self._text: list[str] = []
        self._done_items: list[Any] = []

    def add(self, item: Any) -> None:
        kind = field(item, "type")
        if kind == "response.output_text.delta":
            delta = field(item, "delta")
            if isinstance(delta, str):
                self._text.append(delta)
        elif kind == "response.output_item.done":
            done = field(item, "item")
            if done is not None:
                self._done_items.append(done)
        elif kind in _FINAL_EVENTS:
            self._final = field(item, "response")

    def reply(self, partial: bool) -> Message | None:
        payload = {"partial": True} if partial else None
        output = field(self._final, "output") if self._final is not None else None
        if output:
            return _merge_assistant(items_to_messages(output), payload)
        calls = [_function_call(i) for i in self._done_items if field(i, "type") == "function_call"]
        text = "".join(self._text)
        if not text and not calls:
            return None
        return Message(role="assistant", content=text, tool_calls=calls or None, payload=payload)
