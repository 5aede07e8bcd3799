"""MemoriMiddleware with langchain.agents.create_agent: the model sees recalled memory, and the
run is recorded once per thread, sync and async, with a fake model that calls tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from memori_core import Memori
from memori_core.context import MEMORY_BLOCK_START
from memori_core.testing import HashEmbedder
from memori_langchain import MemoriChatHistory
from memori_langchain.middleware import MemoriMiddleware, with_memory_block

MakeMemori = Callable[..., Memori]


class ToolCallingFake(GenericFakeChatModel):
    """GenericFakeChatModel that accepts tools (create_agent binds them) and records its input."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolCallingFake:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def fake(*replies: AIMessage | str) -> ToolCallingFake:
    return ToolCallingFake(messages=iter(replies), seen=[])


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def system_text(messages: list[BaseMessage]) -> str:
    first = messages[0]
    assert isinstance(first, SystemMessage)
    return str(first.text)


def test_model_sees_memory_recalled_from_an_earlier_run(make_memori: MakeMemori) -> None:
    mem = make_memori()
    model = fake("Noted, no peanuts.", "Try apple slices.")
    agent = create_agent(
        model,
        tools=[weather],
        system_prompt="You are a nutrition assistant.",
        middleware=[MemoriMiddleware("ana", "nutrition", memori=mem)],
    )

    agent.invoke({"messages": [HumanMessage("I am allergic to peanuts.")]})
    agent.invoke({"messages": [HumanMessage("Suggest a snack without peanuts")]})

    first_call, second_call = model.seen
    assert MEMORY_BLOCK_START not in system_text(first_call)  # nothing stored yet
    second_system = system_text(second_call)
    assert second_system.startswith("You are a nutrition assistant.")
    assert MEMORY_BLOCK_START in second_system
    assert "I am allergic to peanuts." in second_system
    # The block was only in the request: the recorded transcript has no memory in it.
    for session in mem.scoped("ana", "nutrition").sessions():
        for stored in mem.scoped("ana", "nutrition").messages(session.id):
            assert MEMORY_BLOCK_START not in stored.content


def test_other_agent_of_same_user_does_not_see_the_memory(make_memori: MakeMemori) -> None:
    mem = make_memori()
    create_agent(
        fake("ok"), tools=[], middleware=[MemoriMiddleware("ana", "nutrition", memori=mem)]
    ).invoke({"messages": [HumanMessage("I am allergic to peanuts.")]})

    model = fake("ok")
    create_agent(
        model, tools=[], middleware=[MemoriMiddleware("ana", "travel", memori=mem)]
    ).invoke({"messages": [HumanMessage("Any snacks with peanuts on the flight?")]})

    assert all(MEMORY_BLOCK_START not in str(m.content) for m in model.seen[0])


def _tool_run_replies() -> Iterator[AIMessage]:
    yield AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Porto"}, "id": "call-1"}])
    yield AIMessage("It is sunny in Porto.")


def test_a_tool_using_run_is_recorded_exactly_once_per_thread(make_memori: MakeMemori) -> None:
    mem = make_memori()
    middleware = MemoriMiddleware("ana", "travel", memori=mem)
    model = ToolCallingFake(
        messages=iter([*_tool_run_replies(), AIMessage("You asked about Porto.")]), seen=[]
    )
    agent = create_agent(
        model, tools=[weather], middleware=[middleware], checkpointer=InMemorySaver()
    )
    config: Any = {"configurable": {"thread_id": "trip-1"}}

    agent.invoke({"messages": [HumanMessage("Weather in Porto?")]}, config)
    final = agent.invoke({"messages": [HumanMessage("What did I ask?")]}, config)

    # The thread is one memori session; the second run resent the first, which was not stored
    # twice. Every message (tool calls, tool results, ids) reads back exactly.
    history = MemoriChatHistory(
        "ana", "travel", session_id=middleware.session_for("trip-1"), memori=mem
    )
    assert history.messages == final["messages"]
    assert [m.type for m in history.messages] == ["human", "ai", "tool", "ai", "human", "ai"]
    # The tool result reached the model through the agent loop.
    assert model.seen[1][-1].content == "Sunny in Porto"


def test_runs_without_a_thread_go_to_the_middleware_session(make_memori: MakeMemori) -> None:
    mem = make_memori()
    middleware = MemoriMiddleware("ana", "travel", memori=mem)
    agent = create_agent(fake("Hello!", "Hi again!"), tools=[], middleware=[middleware])

    agent.invoke({"messages": [HumanMessage("hello")]})
    agent.invoke({"messages": [HumanMessage("hello again")]})

    stored = mem.scoped("ana", "travel").messages(middleware.session_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "hello"),
        ("assistant", "Hello!"),
        ("user", "hello again"),
        ("assistant", "Hi again!"),
    ]


async def test_async_agent_sees_memory_and_is_recorded(make_memori: MakeMemori) -> None:
    mem = make_memori()
    MemoriChatHistory("ana", "nutrition", memori=mem).add_messages(
        [HumanMessage("I am vegan."), AIMessage("Got it.")]
    )
    middleware = MemoriMiddleware("ana", "nutrition", memori=mem)
    model = fake("A vegan lentil curry.")
    agent = create_agent(model, tools=[weather], middleware=[middleware])

    result = await agent.ainvoke({"messages": [HumanMessage("What should a vegan cook?")]})

    assert "I am vegan." in system_text(model.seen[0])
    stored = await mem.scoped("ana", "nutrition").amessages(middleware.session_id)
    assert [s.content for s in stored] == ["What should a vegan cook?", "A vegan lentil curry."]
    assert result["messages"][-1].content == "A vegan lentil curry."


def test_with_memory_block_keeps_the_system_message_and_content_blocks() -> None:
    block = f"{MEMORY_BLOCK_START}\n- fact\n</memori-memory>"

    assert with_memory_block(None, block).content == block
    assert with_memory_block(SystemMessage("Be brief.", id="s"), block) == SystemMessage(
        f"Be brief.\n\n{block}", id="s"
    )
    blocks = SystemMessage([{"type": "text", "text": "Be brief."}])
    assert with_memory_block(blocks, block).content == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": block},
    ]


def test_a_broken_database_does_not_fail_the_agent_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.db"
    broken.write_text("this file is not a SQLite database, whatever the name says")
    mem = Memori(f"sqlite:///{broken}", embedder=HashEmbedder())
    model = fake("Still answering.")
    agent = create_agent(
        model, tools=[], middleware=[MemoriMiddleware("ana", "travel", memori=mem)]
    )

    result = agent.invoke({"messages": [HumanMessage("hello")]})

    assert result["messages"][-1].content == "Still answering."
    assert all(MEMORY_BLOCK_START not in str(m.content) for m in model.seen[0])
    assert "memori recall failed" in caplog.text
    assert "could not record" in caplog.text
