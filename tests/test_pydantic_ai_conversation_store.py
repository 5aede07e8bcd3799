"""MemoriConversationStore: pydantic-ai conversations saved in memori sessions, loaded again in
this process and in another one, with conflicts, branches, forks and deletes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pydantic_ai.models
import pytest
from pydantic_ai import Agent
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from memori_core import Memori
from memori_pydantic_ai import MemoriCapability, MemoriConversationStore

MakeMemori = Callable[..., Memori]


@pytest.fixture(autouse=True)
def no_model_requests() -> Iterator[None]:
    previous = pydantic_ai.models.ALLOW_MODEL_REQUESTS
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = False
    yield
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = previous


def echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answer with the number of messages the model was sent, so history loss shows."""
    return ModelResponse(parts=[TextPart(f"I was sent {len(messages)} messages.")])


def agent() -> Agent[None, str]:
    return Agent(FunctionModel(echo))


def dumped(messages: list[ModelMessage]) -> object:
    return ModelMessagesTypeAdapter.dump_python(messages, mode="json")


def store(make_memori: MakeMemori, process_id: str = "assistant") -> MemoriConversationStore:
    return MemoriConversationStore("alice", process_id, memori=make_memori())


async def test_save_then_load_in_a_fresh_store(make_memori: MakeMemori) -> None:
    first = await agent().run("Hello.", conversation=Conversation(conversation_id="c-1"))
    await store(make_memori).save(first)

    loaded = await store(make_memori).load("c-1")

    assert loaded is not None
    assert loaded.messages == first.all_messages()
    assert dumped(loaded.messages) == dumped(first.all_messages())
    assert loaded.usage.requests == 1
    assert loaded.revision == first.conversation.revision
    second = await agent().run("Again.", conversation=loaded)
    assert second.output == "I was sent 3 messages."


async def test_a_conversation_saved_in_one_process_is_loaded_in_another(
    make_memori: MakeMemori, db_url: str
) -> None:
    first = await agent().run("My name is Ana.", conversation=Conversation(conversation_id="c-1"))
    await store(make_memori).save(first)

    script = textwrap.dedent(
        """
        import asyncio, json, sys
        from pydantic_ai import Agent
        from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse, TextPart
        from pydantic_ai.models.function import FunctionModel
        from memori_core import Memori
        from memori_core.testing import HashEmbedder
        from memori_pydantic_ai import MemoriConversationStore

        def echo(messages, info):
            return ModelResponse(parts=[TextPart(f"I was sent {len(messages)} messages.")])

        async def main():
            url = sys.argv[1]
            store = MemoriConversationStore(
                "alice", "assistant", memori=Memori(url, embedder=HashEmbedder())
            )
            conversation = await store.load("c-1")
            loaded = ModelMessagesTypeAdapter.dump_python(conversation.messages, mode="json")
            agent = Agent(FunctionModel(echo))
            result = await agent.run("What is my name?", conversation=conversation)
            await store.save(result)
            print(json.dumps({"loaded": loaded, "output": result.output}))

        asyncio.run(main())
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, db_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)

    assert report["loaded"] == dumped(first.all_messages())
    assert report["output"] == "I was sent 3 messages."
    again = await store(make_memori).load("c-1")
    assert again is not None
    assert len(again.messages) == 4
    assert again.messages[:2] == first.all_messages()
    assert again.messages[-1].parts[0].content == "I was sent 3 messages."  # type: ignore[union-attr]
    assert again.usage.requests == 2


async def test_a_stale_copy_cannot_overwrite_a_newer_save(make_memori: MakeMemori) -> None:
    one, two = store(make_memori), store(make_memori)
    await one.save(await agent().run("Hi.", conversation=Conversation(conversation_id="c-1")))
    copy_a = await one.load("c-1")
    copy_b = await two.load("c-1")
    assert copy_a is not None and copy_b is not None

    await one.save(await agent().run("From A.", conversation=copy_a))
    with pytest.raises(ConversationConflict):
        await two.save(await agent().run("From B.", conversation=copy_b))

    final = await two.load("c-1")
    assert final is not None
    assert [m.parts[0].content for m in final.messages[::2]] == ["Hi.", "From A."]  # type: ignore[union-attr]


async def test_concurrent_savers_exactly_one_wins(make_memori: MakeMemori) -> None:
    await store(make_memori).save(
        await agent().run("Hi.", conversation=Conversation(conversation_id="c-1"))
    )
    stores = [store(make_memori) for _ in range(4)]
    copies = [await s.load("c-1") for s in stores]
    results = [await agent().run(f"Writer {i}.", conversation=c) for i, c in enumerate(copies)]

    outcomes = await asyncio.gather(
        *(s.save(r) for s, r in zip(stores, results, strict=True)), return_exceptions=True
    )

    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
    assert len(winners) == 1
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, ConversationConflict) for o in losers)
    final = await store(make_memori).load("c-1")
    assert final is not None
    assert final.messages == results[winners[0]].all_messages()


async def test_capability_and_store_share_one_transcript_without_duplicates(
    make_memori: MakeMemori,
) -> None:
    mem = make_memori().attribution("alice", "assistant")
    cap = MemoriCapability("alice", "assistant", memori=mem)
    conversations = MemoriConversationStore("alice", "assistant", memori=make_memori())
    recording = Agent(TestModel(custom_output_text="Done."), capabilities=[cap])

    @recording.tool_plain
    def lookup(term: str) -> str:
        return f"found {term}"

    first = await recording.run("Look it up.", conversation=Conversation(conversation_id="c-1"))
    await conversations.save(first)
    loaded = await conversations.load("c-1")
    assert loaded is not None
    second = await recording.run("Thanks.", conversation=loaded)
    await conversations.save(second)

    session = conversations.session_id_for("c-1")
    assert session == cap.session_id_for("c-1")
    # Each message once (the capability recorded it; the store adopted it), plus one empty
    # commit row per save.
    assert [(m.role, m.content) for m in mem.messages(session)] == [
        ("user", "Look it up."),
        ("assistant", ""),
        ("tool", "found a"),
        ("assistant", "Done."),
        ("system", ""),
        ("user", "Thanks."),
        ("assistant", "Done."),
        ("system", ""),
    ]
    final = await MemoriConversationStore("alice", "assistant", memori=make_memori()).load("c-1")
    assert final is not None
    assert final.messages == second.all_messages()


async def test_branch_and_fork(make_memori: MakeMemori) -> None:
    s = store(make_memori)
    first = await agent().run("One.", conversation=Conversation(conversation_id="c-1"))
    await s.save(first)
    second = await agent().run("Two.", conversation=first.conversation)
    await s.save(second)
    assert len(second.all_messages()) == 4

    await s.fork("c-1", at=2, new_conversation_id="c-fork")
    branched = await s.branch("c-1", at=2, expected_revision=second.conversation.revision)
    await s.save(await agent().run("Two, differently.", conversation=branched))

    fresh = store(make_memori)
    main = await fresh.load("c-1")
    forked = await fresh.load("c-fork")
    assert main is not None and forked is not None
    assert main.messages[:2] == first.all_messages()
    assert main.messages[2].parts[0].content == "Two, differently."  # type: ignore[union-attr]
    assert forked.messages == first.all_messages()
    [record] = [r for r in await fresh.list_conversations() if r.conversation_id == "c-1"]
    assert len(record.branches) == 1
    back = await fresh.branch("c-1", from_entry=record.branches[0], expected_revision=main.revision)
    assert back.messages == second.all_messages()


async def test_delete_erases_the_session_unless_a_fork_needs_it(
    make_memori: MakeMemori,
) -> None:
    mem = make_memori().attribution("alice", "assistant")
    s = MemoriConversationStore("alice", "assistant", memori=mem)
    for cid in ("c-1", "c-2"):
        await s.save(await agent().run("Hi.", conversation=Conversation(conversation_id=cid)))
    await s.fork("c-2", new_conversation_id="c-2-fork")

    await s.delete("c-1")
    await s.delete("c-2")

    fresh = store(make_memori)
    assert await fresh.load("c-1") is None
    assert await fresh.load("c-2") is None
    assert mem.messages(s.session_id_for("c-1")) == []
    assert mem.messages(s.session_id_for("c-2")) != []  # the fork's history lives there
    forked = await fresh.load("c-2-fork")
    assert forked is not None
    assert [m.parts[0].content for m in forked.messages] == ["Hi.", "I was sent 1 messages."]  # type: ignore[union-attr]
    assert {r.conversation_id for r in await fresh.list_conversations()} == {"c-2-fork"}


async def test_conversations_are_kept_per_agent_and_listed_by_scope(
    make_memori: MakeMemori,
) -> None:
    planner = store(make_memori, "planner")
    coder = store(make_memori, "coder")
    await planner.save(
        await agent().run("Plan.", conversation=Conversation(conversation_id="c-1")),
        scope="team-a",
    )
    await planner.save(
        await agent().run("Plan more.", conversation=Conversation(conversation_id="c-2")),
        scope="team-b",
    )

    assert await coder.load("c-1") is None
    assert await coder.list_conversations() == []
    listed = await planner.list_conversations(scope="team-a")
    assert [r.conversation_id for r in listed] == ["c-1"]
    assert [r.conversation_id for r in await planner.list_conversations()] == ["c-2", "c-1"]
    assert await planner.load("c-1", scope="team-b") is None
    window = await planner.load("c-1", limit=1)
    assert window is not None
    assert [m.parts[0].content for m in window.messages] == ["I was sent 1 messages."]  # type: ignore[union-attr]
