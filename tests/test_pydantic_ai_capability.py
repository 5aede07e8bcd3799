"""MemoriCapability: what the model sees (recalled memory in its instructions) and what is
recorded for every way of driving a run, with pydantic-ai's own FunctionModel and TestModel."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pydantic_ai.models
import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    RetryInfo,
    SystemPromptPart,
    TextContent,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from memori_core import Memori, StoredMessage
from memori_core.context import MEMORY_BLOCK_START
from memori_core.errors import ScopeError, UsageError
from memori_pydantic_ai import MemoriCapability, to_core_messages

MakeMemori = Callable[..., Memori]


@pytest.fixture(autouse=True)
def no_model_requests() -> Iterator[None]:
    previous = pydantic_ai.models.ALLOW_MODEL_REQUESTS
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = False
    yield
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = previous


class Seen:
    """A FunctionModel that answers with fixed text and keeps the instructions it was given."""

    def __init__(self, reply: str = "Noted.") -> None:
        self.reply = reply
        self.instructions: list[str | None] = []
        self.histories: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.instructions.append(info.instructions)
        self.histories.append(list(messages))
        return ModelResponse(parts=[TextPart(self.reply)])


def rebuilt(stored: list[StoredMessage]) -> list[ModelMessage]:
    """The pydantic-ai messages a transcript holds, rebuilt from their payloads."""
    out: list[ModelMessage] = []
    for row in stored:
        payload = row.message.payload
        if isinstance(payload, dict) and "pydantic_ai" in payload:
            out.extend(ModelMessagesTypeAdapter.validate_python(payload["pydantic_ai"]))
    return out


def conversation_of(messages: list[ModelMessage]) -> str:
    cid = messages[-1].conversation_id
    assert cid is not None
    return cid


async def test_recalled_memory_reaches_the_model_instructions(make_memori: MakeMemori) -> None:
    cap = MemoriCapability("alice", "assistant", memori=make_memori())
    model = Seen()
    agent = Agent(FunctionModel(model), instructions="Be brief.", capabilities=[cap])

    await agent.run("My favourite colour is teal and I live in Lisbon.")
    second = await agent.run("Which colour do I like best?")

    first_instructions, second_instructions = model.instructions
    assert first_instructions == "Be brief."  # nothing stored yet, nothing injected
    assert second_instructions is not None
    assert second_instructions.startswith("Be brief.")
    assert MEMORY_BLOCK_START in second_instructions
    assert "favourite colour is teal" in second_instructions
    # The block is an instruction, re-evaluated per run: never a part of any message.
    for message in second.all_messages():
        for part in message.parts:
            assert MEMORY_BLOCK_START not in str(getattr(part, "content", ""))


async def test_recall_runs_once_per_run_even_with_several_model_requests(
    make_memori: MakeMemori,
) -> None:
    cap = MemoriCapability("alice", "assistant", memori=make_memori())
    agent = Agent(TestModel(), capabilities=[cap])

    @agent.tool_plain
    def weather(city: str) -> str:
        return f"sunny in {city}"

    result = await agent.run("What is the weather?")
    assert sum(isinstance(m, ModelResponse) for m in result.new_messages()) == 2
    assert cap.memori.stats()["recalls"] == 1


async def test_tool_calls_and_returns_are_recorded(make_memori: MakeMemori) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    agent = Agent(TestModel(), capabilities=[cap])

    @agent.tool_plain
    def weather(city: str) -> str:
        return f"sunny in {city}"

    result = await agent.run("What is the weather in Lisbon?")
    stored = mem.messages(cap.session_id_for(conversation_of(result.all_messages())))

    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    user, call, ret, answer = (m.message for m in stored)
    assert user.content == "What is the weather in Lisbon?"
    assert call.tool_calls is not None
    [tool_call] = call.tool_calls
    assert tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "weather"
    assert tool_call["function"]["arguments"] == '{"city":"a"}'
    assert ret.tool_call_id == tool_call["id"]
    assert ret.name == "weather"
    assert ret.content == "sunny in a"
    assert "sunny in a" in answer.content
    assert rebuilt(stored) == result.new_messages()


async def test_streamed_runs_are_recorded_when_the_stream_is_consumed(
    make_memori: MakeMemori,
) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    agent = Agent(TestModel(custom_output_text="Streaming works."), capabilities=[cap])

    async with agent.run_stream("Tell me something.") as stream:
        chunks = [chunk async for chunk in stream.stream_text(delta=True)]
    assert "".join(chunks) == "Streaming works."

    stored = mem.messages(cap.session_id_for(conversation_of(stream.all_messages())))
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Tell me something."),
        ("assistant", "Streaming works."),
    ]
    assert rebuilt(stored) == stream.new_messages()


async def test_iter_runs_are_recorded(make_memori: MakeMemori) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    agent = Agent(TestModel(custom_output_text="Iterated."), capabilities=[cap])

    async with agent.iter("Step through it.") as run:
        nodes = [node async for node in run]
    assert nodes
    assert run.result is not None

    stored = mem.messages(cap.session_id_for(conversation_of(run.result.all_messages())))
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Step through it."),
        ("assistant", "Iterated."),
    ]


def test_run_sync_records_and_recalls(make_memori: MakeMemori) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    model = Seen()
    agent = Agent(FunctionModel(model), capabilities=[cap])

    first = agent.run_sync("My dog is called Biscuit.")
    agent.run_sync("What is my dog called?")

    stored = mem.messages(cap.session_id_for(conversation_of(first.all_messages())))
    assert [(m.role, m.content) for m in stored] == [
        ("user", "My dog is called Biscuit."),
        ("assistant", "Noted."),
    ]
    assert "dog is called Biscuit" in (model.instructions[1] or "")


async def test_a_continued_conversation_continues_its_session_with_only_the_new_messages(
    make_memori: MakeMemori,
) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    agent = Agent(FunctionModel(Seen()), capabilities=[cap])

    first = await agent.run("First question.")
    second = await agent.run("Second question.", message_history=first.all_messages())
    other = await agent.run("A new conversation.")

    session = cap.session_id_for(conversation_of(second.all_messages()))
    assert session == cap.session_id_for(conversation_of(first.all_messages()))
    stored = mem.messages(session)
    assert [m.content for m in stored] == [
        "First question.",
        "Noted.",
        "Second question.",
        "Noted.",
    ]
    assert rebuilt(stored) == second.all_messages()
    other_session = cap.session_id_for(conversation_of(other.all_messages()))
    assert other_session != session
    assert [m.content for m in mem.messages(other_session)] == ["A new conversation.", "Noted."]


async def test_an_explicit_session_receives_every_run(make_memori: MakeMemori) -> None:
    mem = make_memori().attribution("alice", "assistant")
    session = mem.attribution("alice", "assistant").new_session()
    cap = MemoriCapability("alice", "assistant", memori=mem, session_id=session)
    agent = Agent(FunctionModel(Seen()), capabilities=[cap])

    await agent.run("One.")
    await agent.run("Two.")

    assert [m.content for m in mem.messages(session)] == ["One.", "Noted.", "Two.", "Noted."]


async def test_two_agents_of_one_user_stay_isolated(make_memori: MakeMemori) -> None:
    planner_model, coder_model = Seen(), Seen()
    planner_cap = MemoriCapability("alice", "planner", memori=make_memori())
    coder_cap = MemoriCapability("alice", "coder", memori=make_memori())
    planner = Agent(FunctionModel(planner_model), capabilities=[planner_cap])
    coder = Agent(FunctionModel(coder_model), capabilities=[coder_cap])

    await planner.run("My secret project is called Falcon.")
    await coder.run("My favourite language is Rust.")
    await planner.run("What is my secret project called?")
    await coder.run("What is my secret project called? Which language do I like?")

    assert "Falcon" in (planner_model.instructions[1] or "")
    assert "Rust" not in (planner_model.instructions[1] or "")
    coder_sees = coder_model.instructions[1] or ""
    assert "Rust" in coder_sees
    assert "Falcon" not in coder_sees
    planner_sessions = {s.id for s in planner_cap.memori.sessions()}
    coder_sessions = {s.id for s in coder_cap.memori.sessions()}
    assert planner_sessions and coder_sessions
    assert planner_sessions.isdisjoint(coder_sessions)


async def test_one_memori_can_serve_two_agents_without_mixing_them(
    make_memori: MakeMemori,
) -> None:
    shared = make_memori()
    shared.attribution("bob", "elsewhere")
    planner_cap = MemoriCapability("alice", "planner", memori=shared)
    coder_cap = MemoriCapability("alice", "coder", memori=shared)
    coder_model = Seen()
    await Agent(FunctionModel(Seen()), capabilities=[planner_cap]).run("I use Vim for Falcon.")
    await Agent(FunctionModel(coder_model), capabilities=[coder_cap]).run(
        "Which editor for Falcon?"
    )

    assert (shared.config.entity_id, shared.config.process_id) == ("bob", "elsewhere")
    assert coder_model.instructions == [None]
    assert [s.process_id for s in planner_cap.memori.sessions()] == ["planner"]
    assert [s.process_id for s in coder_cap.memori.sessions()] == ["coder"]


def test_memori_and_database_url_are_exclusive(make_memori: MakeMemori, db_url: str) -> None:
    with pytest.raises(UsageError, match="not both"):
        MemoriCapability("alice", "assistant", memori=make_memori(), database_url=db_url)


def test_a_session_of_another_agent_is_refused(make_memori: MakeMemori) -> None:
    mem = make_memori().attribution("alice", "assistant")
    mem.attribution("alice", "planner")
    mem.append([{"role": "user", "content": "hello"}])
    with pytest.raises(ScopeError):
        MemoriCapability("alice", "coder", memori=make_memori(), session_id=mem.config.session_id)


async def test_storage_failure_does_not_fail_the_run(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A file that is not a database: every read and write fails.
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    broken = Memori(f"sqlite:///{garbage}", embedder=None)
    cap = MemoriCapability("alice", "assistant", memori=broken)
    model = Seen()
    agent = Agent(FunctionModel(model), capabilities=[cap])

    with caplog.at_level(logging.WARNING, logger="memori_pydantic_ai"):
        result = await agent.run("Hello?")

    assert result.output == "Noted."
    assert model.instructions == [None]
    messages = [r.getMessage() for r in caplog.records if r.name == "memori_pydantic_ai"]
    assert any("recall failed" in m for m in messages)
    assert any("could not record" in m for m in messages)


def every_kind_of_message() -> list[ModelMessage]:
    return [
        ModelRequest(
            parts=[
                SystemPromptPart("You are a travel agent."),
                UserPromptPart(["I live in ", TextContent("Lisbon.", metadata={"k": 1})]),
            ],
            instructions="Be brief.",
        ),
        ModelResponse(
            parts=[
                ThinkingPart("The user wants flights."),
                TextPart("Let me look."),
                ToolCallPart("flights", {"to": "OPO", "pax": 2}, tool_call_id="call-1"),
            ],
            model_name="fake",
        ),
        ModelRequest(
            parts=[
                ToolReturnPart("flights", {"found": 3}, tool_call_id="call-1"),
                RetryFeedbackPart("Answer in one sentence.", retry=RetryInfo(cause="model_retry")),
            ]
        ),
        ModelResponse(parts=[TextPart("There are 3 flights to Porto.")]),
    ]


def test_messages_round_trip_exactly_through_the_store(make_memori: MakeMemori) -> None:
    original = every_kind_of_message()
    mem = make_memori().attribution("alice", "assistant")
    mem.append(to_core_messages(original))

    stored = make_memori().attribution("alice", "assistant").messages(mem.config.session_id)

    assert rebuilt(stored) == original
    assert ModelMessagesTypeAdapter.dump_python(
        rebuilt(stored), mode="json"
    ) == ModelMessagesTypeAdapter.dump_python(original, mode="json")
    assert [(m.role, m.content) for m in stored] == [
        ("system", "You are a travel agent."),
        ("user", "I live in \nLisbon."),
        ("assistant", "Let me look."),
        ("tool", '{"found":3}'),
        ("user", original[2].parts[1].model_response()),  # type: ignore[union-attr]
        ("assistant", "There are 3 flights to Porto."),
    ]
    assert stored[2].message.tool_calls == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "flights", "arguments": '{"to":"OPO","pax":2}'},
        }
    ]


def test_import_guard_names_the_extra() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pydantic_ai"] = None
        try:
            import memori_pydantic_ai
        except ImportError as e:
            print(e)
        else:
            print("imported")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert 'pip install "memori-core[pydantic-ai]"' in out
