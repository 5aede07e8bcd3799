"""The interceptor's pure parts: choosing turns to replay, reading Responses items, streams."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from memori_core import Message, StoredMessage
from memori_core.llm._chat import ChatAccumulator, ChatTurn
from memori_core.llm._responses import ResponsesAccumulator, items_to_messages
from memori_core.llm._turn import select_replay


def _stored(*messages: Message) -> list[StoredMessage]:
    now = datetime.now(UTC)
    return [StoredMessage(i, "s", "e", None, i, m, now) for i, m in enumerate(messages, start=1)]


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_replay_keeps_the_newest_turns_within_the_budget() -> None:
    history = _stored(
        *(
            Message(role=r, content=f"{r} turn {i} " + "x" * 200)
            for i in range(10)
            for r in ("user", "assistant")
        )
    )
    chosen = select_replay(history, token_budget=300)
    # Each message costs about 56 tokens: the last five fit, cut back to start at a user turn.
    assert [m.content[:16] for m in chosen] == [
        "user turn 8 xxxx",
        "assistant turn 8",
        "user turn 9 xxxx",
        "assistant turn 9",
    ]
    assert select_replay(history, token_budget=0) == []


def test_replay_never_splits_a_tool_call_from_its_results() -> None:
    history = _stored(
        Message(role="system", content="be nice"),
        Message(role="user", content="weather?"),
        Message(role="assistant", tool_calls=[CALL]),
        Message(role="tool", content="sunny", tool_call_id="c1"),
        Message(role="assistant", content="It is sunny."),
        Message(role="user", content="and tomorrow?"),
        Message(role="assistant", tool_calls=[{**CALL, "id": "c2"}]),
    )
    chosen = select_replay(history, token_budget=10_000)
    # No system message; the unanswered call at the end is dropped.
    assert [(m.role, m.content) for m in chosen] == [
        ("user", "weather?"),
        ("assistant", ""),
        ("tool", "sunny"),
        ("assistant", "It is sunny."),
        ("user", "and tomorrow?"),
    ]


def test_chat_turn_puts_block_after_system_and_replay_before_the_user_turn() -> None:
    kwargs: dict[str, Any] = {
        "model": "m",
        "messages": iter([{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]),
    }
    turn = ChatTurn(kwargs, stream=False, session_id="s", replay_token_budget=1000)
    assert turn.query == "q" and turn.wants_history
    sent = turn.prepare("BLOCK", _stored(Message(role="user", content="old")))
    assert sent["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "BLOCK"},
        {"role": "user", "content": "old"},
        {"role": "user", "content": "q"},
    ]
    # Resumed: the system prompt was stored with the session's first turn already.
    assert [m.role for m in turn.to_record(Message(role="assistant", content="a"))] == [
        "user",
        "assistant",
    ]


def test_chat_turn_with_nothing_to_add_sends_the_callers_arguments() -> None:
    kwargs: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    turn = ChatTurn(kwargs, stream=False, session_id="s", replay_token_budget=1000)
    assert turn.prepare("", []) is kwargs


def test_responses_items_group_text_and_function_calls_into_one_assistant_turn() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "book it"}]},
        {"type": "reasoning", "id": "r1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Booking."}],
        },
        {"type": "function_call", "call_id": "c1", "name": "book", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ]
    assert items_to_messages(items) == [
        Message(role="user", content="book it"),
        Message(
            role="assistant",
            content="Booking.",
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "book", "arguments": "{}"}}
            ],
        ),
        Message(role="tool", content="done", tool_call_id="c1"),
    ]


def test_chat_accumulator_ignores_other_choices_and_marks_partial() -> None:
    acc = ChatAccumulator()
    assert acc.reply(partial=True) is None  # nothing received: no reply to store
    acc.add({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    acc.add({"choices": [{"index": 1, "delta": {"content": "other"}}]})
    acc.add({"choices": [{"index": 0, "delta": {"content": "lo"}}]})
    assert acc.reply(partial=True) == Message(
        role="assistant", content="Hello", payload={"partial": True}
    )


def test_responses_accumulator_without_final_event_uses_deltas() -> None:
    acc = ResponsesAccumulator()
    acc.add({"type": "response.output_text.delta", "delta": "Hi "})
    acc.add({"type": "response.output_text.delta", "delta": "there"})
    assert acc.reply(partial=True) == Message(
        role="assistant", content="Hi there", payload={"partial": True}
    )
