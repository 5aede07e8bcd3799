"""LlamaIndex agents with memori memory, end to end: what the model saw, what was stored.

The model is llama-index's own `MockFunctionCallingLLM`; its `response_generator` records the
messages of every call, so the tests assert on the prompt the model received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, TextBlock, ToolCallBlock
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.memory import Memory
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context
from workflows.context.serializers import JsonSerializer

from memori_core import Memori
from memori_llamaindex import MemoriAgentWorkflow, MemoriMemory, MemoriMemoryBlock, session_uuid
from memori_llamaindex.messages import message_text

# llama-index's workflow machinery inspects agents with inspect.getmembers, which touches
# pydantic's deprecated attributes; that noise is upstream and says nothing about this adapter.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pydantic.warnings.PydanticDeprecatedSince20",
    "ignore::pydantic.warnings.PydanticDeprecatedSince211",
)


class ScriptedLLM:
    """A response generator that records each prompt and answers from a script."""

    def __init__(self, *replies: ChatMessage | str) -> None:
        self.prompts: list[list[ChatMessage]] = []
        self.replies = list(replies)

    def __call__(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        self.prompts.append([m.model_copy(deep=True) for m in messages])
        reply = self.replies.pop(0) if self.replies else "ok"
        return ChatMessage(role="assistant", content=reply) if isinstance(reply, str) else reply

    def llm(self) -> MockFunctionCallingLLM:
        return MockFunctionCallingLLM(response_generator=self)

    def system_text(self, call: int = -1) -> str:
        return "\n".join(message_text(m) for m in self.prompts[call] if m.role == "system")

    def all_text(self, call: int = -1) -> str:
        return "\n".join(message_text(m) for m in self.prompts[call])


def _agent(script: ScriptedLLM, name: str = "agent", **kwargs: Any) -> FunctionAgent:
    return FunctionAgent(
        name=name,
        description=f"the {name}",
        llm=script.llm(),
        system_prompt=f"You are the {name}.",
        **kwargs,
    )


@pytest.fixture
def memory_for(make_memori: Callable[..., Memori]) -> Callable[..., MemoriMemory]:
    def factory(entity_id: str, process_id: str, **kwargs: Any) -> MemoriMemory:
        memori = make_memori()
        # Turns become searchable by meaning once the background indexer has embedded them
        # (it waits for writes to pause); a later conversation a moment later would find them
        # embedded, these back-to-back runs wait for it explicitly.
        memori.flush()
        return MemoriMemory(entity_id, process_id, memori=memori, **kwargs)

    return factory


async def test_function_agent_stores_the_turn_and_recalls_it_in_a_later_session(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    first = memory_for("alice", "chef")
    script = ScriptedLLM("Noted, no meat.", "How about a mushroom risotto?")
    agent = _agent(script, "chef")

    await agent.run(user_msg="I am vegetarian and allergic to peanuts.", memory=first)

    assert [(m.role.value, message_text(m)) for m in first.get_all()] == [
        ("user", "I am vegetarian and allergic to peanuts."),
        ("assistant", "Noted, no meat."),
    ]
    # The first call of a new user saw no memory block: nothing to recall yet, and the
    # question itself is not served back as a "memory".
    assert "<memori-memory>" not in script.system_text(0)

    later = memory_for("alice", "chef")  # a new conversation thread, same user and agent
    assert later.session_id != first.session_id
    result = await agent.run(user_msg="What should I cook for dinner?", memory=later)

    assert str(result) == "How about a mushroom risotto?"
    system = script.system_text(1)
    assert "<memori-memory>" in system
    assert "vegetarian" in system and "peanuts" in system
    # The new thread's own history is only its own messages.
    assert [message_text(m) for m in script.prompts[1] if m.role == "user"] == [
        "What should I cook for dinner?"
    ]


async def test_tool_calls_are_stored_and_replayed_intact(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    calls: list[str] = []

    def weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"Sunny in {city}"

    tool_call = ChatMessage(
        role="assistant",
        blocks=[
            TextBlock(text="Let me check."),
            ToolCallBlock(tool_call_id="call-1", tool_name="weather", tool_kwargs={"city": "Oslo"}),
        ],
    )
    script = ScriptedLLM(tool_call, "It is sunny in Oslo.", "You asked about Oslo.")
    agent = _agent(script, tools=[FunctionTool.from_defaults(weather)])
    memory = memory_for("bob", "assistant")

    await agent.run(user_msg="Weather in Oslo?", memory=memory)
    assert calls == ["Oslo"]

    transcript = memory.get_all()
    assert [m.role.value for m in transcript] == ["user", "assistant", "tool", "assistant"]
    assert transcript[1] == tool_call  # blocks, tool call id and kwargs survive
    assert transcript[2].additional_kwargs["tool_call_id"] == "call-1"
    assert "Sunny in Oslo" in message_text(transcript[2])

    # memori-core sees the OpenAI shape, so other adapters and recall can read it.
    core = memory.memori.messages(session_uuid(memory.session_id))
    assert core[1].message.tool_calls == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert core[2].message.role == "tool" and core[2].message.tool_call_id == "call-1"

    await agent.run(user_msg="What did I ask?", memory=memory)
    replayed = script.prompts[-1]
    assert tool_call in replayed
    assert [m.role.value for m in replayed][-5:] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


async def test_reused_context_continues_and_survives_json_round_trip(db_url: str) -> None:
    # embedder=None: a memory rebuilt from JSON opens Memori from its fields alone.
    memory = MemoriMemory("carol", "concierge", database_url=db_url, embedder=None)
    script = ScriptedLLM("Hello Carol!", "You are Carol.", "Still Carol.")
    agent = _agent(script, "concierge")
    ctx = Context(agent)

    await agent.run(user_msg="Hi, my name is Carol.", memory=memory, ctx=ctx)
    await agent.run(user_msg="What is my name?", ctx=ctx)  # memory comes from the context
    assert "my name is Carol" in script.all_text(1)

    data = ctx.to_dict(serializer=JsonSerializer())
    restored = Context.from_dict(agent, data, serializer=JsonSerializer())
    rebuilt = await restored.store.get("memory")
    assert isinstance(rebuilt, MemoriMemory) and rebuilt is not memory
    assert rebuilt.session_id == memory.session_id

    await agent.run(user_msg="And now?", ctx=restored)
    seen_users = [message_text(m) for m in script.prompts[2] if m.role == "user"]
    assert seen_users == ["Hi, my name is Carol.", "What is my name?", "And now?"]
    assert len(memory.get_all()) == 6


async def test_two_agents_for_one_user_keep_their_memories_apart(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    research = ScriptedLLM("Filed.", "Your project codename is BLUEBIRD.")
    writer = ScriptedLLM("Happy to help with the draft.")
    researcher_agent = _agent(research, "researcher")
    writer_agent = _agent(writer, "writer")

    await researcher_agent.run(
        user_msg="Remember: my project codename is BLUEBIRD.",
        memory=memory_for("dana", "researcher"),
    )
    await writer_agent.run(
        user_msg="What is my project codename?", memory=memory_for("dana", "writer")
    )
    assert "BLUEBIRD" not in writer.all_text(0)

    await researcher_agent.run(
        user_msg="What is my project codename?", memory=memory_for("dana", "researcher")
    )
    assert "BLUEBIRD" in research.system_text(1)


async def test_agent_workflow_shares_one_memory_across_handoffs(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    handoff = ChatMessage(
        role="assistant",
        blocks=[
            ToolCallBlock(
                tool_call_id="h-1",
                tool_name="handoff",
                tool_kwargs={"to_agent": "billing", "reason": "invoice question"},
            )
        ],
    )
    triage = ScriptedLLM(handoff)
    billing = ScriptedLLM("Your invoice INV-7 is paid.", "INV-7, as discussed.")
    workflow = AgentWorkflow(
        agents=[
            _agent(triage, "triage", can_handoff_to=["billing"]),
            _agent(billing, "billing"),
        ],
        root_agent="triage",
    )
    memory = memory_for("erin", "support-desk")

    result = await workflow.run(user_msg="Is invoice INV-7 paid?", memory=memory)
    assert str(result) == "Your invoice INV-7 is paid."
    # billing saw the user's question and triage's handoff through the shared memory
    assert "Is invoice INV-7 paid?" in billing.all_text(0)
    roles = [m.role.value for m in memory.get_all()]
    assert roles[0] == "user" and roles[-1] == "assistant"
    assert "INV-7 is paid" in message_text(memory.get_all()[-1])

    later = memory_for("erin", "support-desk")
    triage.replies.append(handoff)
    await workflow.run(user_msg="Which invoice did I ask about?", memory=later)
    assert "INV-7" in triage.system_text(-1)


async def test_memory_block_feeds_llama_index_memory(make_memori: Callable[..., Memori]) -> None:
    mem = make_memori()

    def memory(session: str) -> Memory:
        return Memory.from_defaults(
            session_id=session,
            token_limit=40,
            chat_history_token_ratio=0.5,
            token_flush_size=20,
            tokenizer_fn=str.split,
            memory_blocks=[MemoriMemoryBlock("frank", "travel", memori=mem)],
        )

    script = ScriptedLLM("Noted the window seat.", "ok", "ok", "ok", "A window seat, as usual.")
    agent = _agent(script, "travel")
    first = memory("trip-1")
    await agent.run(user_msg="I always want a window seat on flights to Tokyo.", memory=first)
    for filler in ("Also book a hotel near the station please", "And a taxi from the airport"):
        await agent.run(user_msg=filler, memory=first)

    # The oldest turn was flushed out of Memory's short-term window into memori.
    archived = mem.scoped("frank", "travel").messages(session_uuid("trip-1"))
    assert [m.content for m in archived][:1] == ["I always want a window seat on flights to Tokyo."]

    await agent.run(user_msg="Which seat do I like on flights?", memory=memory("trip-2"))
    assert "window seat" in script.system_text(-1)
    assert "<memori>" in script.system_text(-1)  # Memory's template names the block


def _handoff(to_agent: str, call_id: str) -> ChatMessage:
    return ChatMessage(
        role="assistant",
        blocks=[
            ToolCallBlock(
                tool_call_id=call_id,
                tool_name="handoff",
                tool_kwargs={"to_agent": to_agent, "reason": "their turn"},
            )
        ],
    )


async def test_workflow_agents_recall_and_record_under_their_own_process_ids(
    db_url: str,
) -> None:
    ids = {"researcher": "research-agent", "writer": "writing-agent"}

    def memory(session: str) -> MemoriMemory:
        # embedder=None: the memory must be rebuildable from its fields alone (JSON round trip).
        return MemoriMemory(
            "dana",
            "studio",
            session_id=session,
            database_url=db_url,
            embedder=None,
            agent_process_ids=ids,
        )

    research, writing = ScriptedLLM(), ScriptedLLM()
    workflow = MemoriAgentWorkflow(
        agents=[
            _agent(research, "researcher", can_handoff_to=["writer"]),
            _agent(writing, "writer", can_handoff_to=["researcher"]),
        ],
        root_agent="researcher",
    )

    # Run 1: the researcher (root) hears a fact.
    research.replies.append("Noted.")
    await workflow.run(user_msg="My project codename is BLUEBIRD.", memory=memory("s1"))

    # Run 2: the researcher hands off to the writer; the context is then saved and restored.
    ctx = Context(workflow)
    research.replies.append(_handoff("writer", "h-1"))
    writing.replies.append("Sure, let us draft.")
    await workflow.run(user_msg="Please help me draft the intro.", memory=memory("s2"), ctx=ctx)
    data = ctx.to_dict(serializer=JsonSerializer())
    restored = Context.from_dict(workflow, data, serializer=JsonSerializer())
    rebuilt = await restored.store.get("memory")
    assert isinstance(rebuilt, MemoriMemory)
    assert (rebuilt.agent_process_ids, rebuilt.active_agent) == (ids, "writer")

    # Run 3, on the restored context: the writer still holds the floor and hears a fact.
    calls_before = len(research.prompts)
    writing.replies.append("Noted.")
    await workflow.run(user_msg="I prefer British spelling in my drafts.", ctx=restored)
    assert len(research.prompts) == calls_before  # the researcher did not run

    # Run 4: a new conversation; the researcher takes it, then hands off to the writer.
    research.replies.append(_handoff("writer", "h-2"))
    writing.replies.append("Done.")
    question = "Which codename and spelling should the report use?"
    await workflow.run(user_msg=question, memory=memory("s3"))

    seen_by_researcher = research.system_text(-1)
    assert "BLUEBIRD" in seen_by_researcher
    assert "British" not in seen_by_researcher
    seen_by_writer = writing.all_text(-1)
    assert "British spelling" in writing.system_text(-1)
    assert "BLUEBIRD" not in seen_by_writer
    assert question in seen_by_writer  # the transcript is shared: the handoff works

    # What was stored: each agent's memories under its own process id, the transcript shared.
    store = Memori(db_url, embedder=None)
    research_facts = [r.text for r in store.scoped("dana", "research-agent").recall("codename")]
    writing_facts = [r.text for r in store.scoped("dana", "writing-agent").recall("spelling")]
    assert any("BLUEBIRD" in t for t in research_facts)
    assert any("British" in t for t in writing_facts)
    assert not any(
        "British" in r.text
        for r in store.scoped("dana", "research-agent").recall("British spelling drafts")
    )
    assert not any(
        "BLUEBIRD" in r.text
        for r in store.scoped("dana", "writing-agent").recall("project codename BLUEBIRD")
    )
    transcript = [message_text(m) for m in memory("s3").get_all()]
    assert transcript[0] == question and transcript[-1] == "Done."
    store.close()


async def test_memori_agent_workflow_leaves_other_memories_alone(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    research, writing = ScriptedLLM(_handoff("writer", "h-1")), ScriptedLLM("Done.")
    workflow = MemoriAgentWorkflow(
        agents=[
            _agent(research, "researcher", can_handoff_to=["writer"]),
            _agent(writing, "writer"),
        ],
        root_agent="researcher",
    )
    result = await workflow.run(user_msg="Draft the intro please.")  # llama-index's own memory
    assert str(result) == "Done."
    assert "Draft the intro please." in writing.all_text(0)

    # A MemoriMemory without agent_process_ids: one process id for the whole workflow.
    memory = memory_for("erin", "studio")
    research.replies.append(_handoff("writer", "h-2"))
    await workflow.run(user_msg="My deadline is Friday.", memory=memory)
    later = memory_for("erin", "studio")
    research.replies.append(_handoff("writer", "h-3"))
    await workflow.run(user_msg="When is my deadline?", memory=later)
    assert "Friday" in research.system_text(-1) and "Friday" in writing.system_text(-1)


async def test_a_reused_memory_records_each_run_for_the_agent_that_takes_it(
    db_url: str,
) -> None:
    ids = {"researcher": "research-agent", "writer": "writing-agent"}
    memory = MemoriMemory(
        "gus", "studio", database_url=db_url, embedder=None, agent_process_ids=ids
    )
    research = ScriptedLLM(_handoff("writer", "h-1"), "Noted.")
    writing = ScriptedLLM("On it.")
    workflow = MemoriAgentWorkflow(
        agents=[
            _agent(research, "researcher", can_handoff_to=["writer"]),
            _agent(writing, "writer"),
        ],
        root_agent="researcher",
    )
    await workflow.run(user_msg="Draft the intro please.", memory=memory)  # ends with the writer
    # No context is kept, so the next run starts again at the root agent, the researcher.
    await workflow.run(user_msg="My favourite tea is oolong.", memory=memory)

    store = Memori(db_url, embedder=None)
    assert any("oolong" in r.text for r in store.scoped("gus", "research-agent").recall("tea"))
    assert not any("oolong" in r.text for r in store.scoped("gus", "writing-agent").recall("tea"))
    store.close()
