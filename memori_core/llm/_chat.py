"""Chat Completions: read the caller's `messages`, inject the memory block, rebuild the reply."""

from __future__ import annotations

from typing import Any

from memori_core.llm._common import field, plain, text_of_content
from memori_core.llm._turn import Turn, conversation_shape
from memori_core.types import ROLES, Message

__all__ = ["ChatAccumulator", "ChatTurn", "chat_message", "normalise_tool_call"]


def normalise_tool_call(call: Any) -> dict[str, Any]:
    """A tool call as a plain dict, alike whether it came from a dict, an SDK object or a stream."""
    kind = field(call, "type") or "function"
    if kind == "function":
        function = field(call, "function")
        return {
            "id": field(call, "id"),
            "type": "function",
            "function": {
                "name": field(function, "name") or "",
                "arguments": field(function, "arguments") or "",
            },
        }
    out = plain(call)
    return out if isinstance(out, dict) else {"type": kind}


def chat_message(raw: Any) -> Message | None:
    """A caller's chat message (dict or SDK object) as a `Message`; None for roles not kept."""
    role = field(raw, "role")
    if role not in ROLES:
        return None  # e.g. the legacy "function" role
    tool_calls = field(raw, "tool_calls")
    name = field(raw, "name")
    tool_call_id = field(raw, "tool_call_id")
    return Message(
        role=role,
        content=text_of_content(field(raw, "content")),
        name=name if isinstance(name, str) else None,
        tool_calls=[normalise_tool_call(c) for c in tool_calls] if tool_calls else None,
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
    )


def _replayed(message: Message) -> dict[str, Any]:
    out = message.to_openai()
    if out["role"] == "assistant" and message.tool_calls and not message.content:
        out["content"] = None
    return out


class ChatTurn(Turn):
    """A `chat.completions.create`/`parse` call."""

    def __init__(
        self,
        kwargs: dict[str, Any],
        *,
        stream: bool,
        session_id: str,
        replay_token_budget: int,
    ) -> None:
        raw = kwargs.get("messages")
        if raw is None:
            raise TypeError("chat.completions needs messages=")
        if not isinstance(raw, list):
            # Any iterable is allowed by the SDK; read it once and send the same items on.
            raw = list(raw)
            kwargs = {**kwargs, "messages": raw}
        caller = [m for m in (chat_message(r) for r in raw) if m is not None]
        query, resume_shape = conversation_shape(caller)
        super().__init__(
            kwargs,
            stream=stream,
            caller=caller,
            query=query,
            resume_shape=resume_shape,
            session_id=session_id,
            replay_token_budget=replay_token_budget,
        )
        self.raw_messages: list[Any] = raw

    def build(self, block: str, replay: list[Message]) -> dict[str, Any]:
        raw = self.raw_messages
        # After the caller's leading system/developer messages: many OpenAI-compatible servers
        # reject a system message in the middle of the conversation.
        lead = 0
        while lead < len(raw) and field(raw[lead], "role") in ("system", "developer"):
            lead += 1
        inserted: list[Any] = []
        if block:
            inserted.append({"role": "system", "content": block})
        inserted.extend(_replayed(m) for m in replay)
        return {**self.kwargs, "messages": [*raw[:lead], *inserted, *raw[lead:]]}

    def reply(self, result: Any) -> Message | None:
        choices = field(result, "choices") or []
        if not choices:
            return None
        message = field(choices[0], "message")
        return chat_message(message) if message is not None else None

    def accumulator(self) -> ChatAccumulator:
        return ChatAccumulator()


class ChatAccumulator:
    """Rebuilds the first choice of a streamed chat completion from its chunks."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._seen = False

    def add(self, item: Any) -> None:
        for choice in field(item, "choices") or []:
            if (field(choice, "index") or 0) != 0:
                continue
            delta = field(choice, "delta")
            if delta is None:
                continue
            self._seen = True
            content = field(delta, "content")
            if isinstance(content, str):
                self._text.append(content)
            for call in field(delta, "tool_calls") or []:
                index = field(call, "index") or 0
                slot = self._calls.setdefault(
                    index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if field(call, "id"):
                    slot["id"] = field(call, "id")
                function = field(call, "function")
                if function is not None:
                    name = field(function, "name")
                    if name and not slot["function"]["name"]:
                        slot["function"]["name"] = name
                    arguments = field(function, "arguments")
                    if arguments:
                        slot["function"]["arguments"] += arguments

    def reply(self, partial: bool) -> Message | None:
        if not self._seen:
            return None
        calls = [self._calls[i] for i in sorted(self._calls)]
        return Message(
            role="assistant",
            content="".join(self._text),
            tool_calls=calls or None,
            payload={"partial": True} if partial else None,
        )
