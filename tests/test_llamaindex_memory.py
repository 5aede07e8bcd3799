"""`MemoriMemory` and `MemoriMemoryBlock` on their own: storage, windowing, rebuilding, parity."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from pydantic import ValidationError

from memori_core import Memori
from memori_core.errors import InvalidScopeError, ScopeError
from memori_llamaindex import MemoriMemory, MemoriMemoryBlock, session_uuid, to_memori
from memori_llamaindex.messages import message_text


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def texts(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role.value, message_text(m)) for m in messages]


@pytest.fixture
def memory_for(make_memori: Callable[..., Memori]) -> Callable[..., MemoriMemory]:
    def factory(entity_id: str = "u1", process_id: str = "bot", **kwargs: Any) -> MemoriMemory:
        return MemoriMemory(entity_id, process_id, memori=make_memori(), **kwargs)

    return factory


RICH = [
    ChatMessage(role="system", content="Be brief."),
    user("Weather in Oslo? Here is a photo."),
    ChatMessage(
        role="user",
        blocks=[TextBlock(text="see"), ImageBlock(image=b"\x89PNG", image_mimetype="image/png")],
    ),
    ChatMessage(
        role="assistant",
        blocks=[
            ThinkingBlock(content="need the weather tool"),
            TextBlock(text="Checking."),
            ToolCallBlock(tool_call_id="c1", tool_name="weather", tool_kwargs={"city": "Oslo"}),
        ],
        additional_kwargs={"provider_id": "abc"},
    ),
    ChatMessage(role="tool", content="Sunny", additional_kwargs={"tool_call_id": "c1"}),
    assistant("It is sunny."),
]


def test_messages_round_trip_exactly_and_are_stored_in_openai_shape(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for()
    memory.put_messages(RICH)

    assert memory.get_all() == RICH
    core = [s.message for s in memory.memori.messages(session_uuid(memory.session_id))]
    assert [(m.role, m.content) for m in core] == [
        ("system", "Be brief."),
        ("user", "Weather in Oslo? Here is a photo."),
        ("user", "see"),
        ("assistant", "Checking."),
        ("tool", "Sunny"),
        ("assistant", "It is sunny."),
    ]
    assert core[3].tool_calls == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert core[4].tool_call_id == "c1"


def test_messages_written_by_another_adapter_are_read_back(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for()
    memory.memori.append(
        [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t9",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "content": "found", "tool_call_id": "t9"},
        ],
        session_id=session_uuid(memory.session_id),
    )
    got = memory.get_all()
    assert texts(got) == [("user", "hi"), ("assistant", ""), ("tool", "found")]
    call = got[1].blocks[0]
    assert isinstance(call, ToolCallBlock)
    assert (call.tool_call_id, call.tool_name, call.tool_kwargs) == ("t9", "lookup", {"q": "x"})
    assert got[2].additional_kwargs == {"tool_call_id": "t9"}


def test_get_recalls_earlier_sessions_but_not_what_is_already_in_view(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    earlier = memory_for()
    earlier.put_messages([user("My dog is called Biscuit."), assistant("Lovely name!")])
    # In the same session the dog is in the visible history: no block repeating it.
    assert texts(earlier.get(input="What is my dog called?")) == [
        ("user", "My dog is called Biscuit."),
        ("assistant", "Lovely name!"),
    ]

    now = memory_for()
    now.put(user("What is my dog called?"))
    got = now.get()
    assert got[0].role.value == "system"
    assert "<memori-memory>" in message_text(got[0])
    assert "Biscuit" in message_text(got[0])
    assert texts(got[1:]) == [("user", "What is my dog called?")]
    # An explicit input is the query; a stored ChatMessage is accepted too.
    assert "Biscuit" in message_text(now.get(input=user("dog name?"))[0])


def test_get_keeps_the_latest_messages_within_the_token_limit(db_url: str) -> None:
    # Lexical recall only, so a query sharing no word with the history recalls nothing.
    memory = MemoriMemory(
        "u1", "bot", database_url=db_url, embedder=None, token_limit=30, tokenizer_fn=str.split
    )
    for i in range(6):
        memory.put_messages([user(f"question{i} " + "word " * 5), assistant(f"answer{i}")])
    memory.put(user("last question " + "word " * 40))  # alone it exceeds the limit

    got = memory.get(input="zzz")
    # The current turn is always kept, even over the limit; nothing older fits beside it.
    assert texts(got) == [("user", "last question " + "word " * 40)]

    memory.put(assistant("short"))
    memory.token_limit = 90
    window = memory.get(input="zzz")
    assert window[0].role.value == "user"  # never opens with an assistant or tool message
    assert message_text(window[-1]) == "short"
    assert 2 < len(window) < len(memory.get_all())
    # What fell out of the window is still recalled as memory.
    assert "question0" not in str(texts(window))
    assert "question0" in message_text(memory.get(input="question0")[0])


def test_set_extends_without_rewriting_the_session_and_replaces_a_different_history(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for()
    sid = session_uuid(memory.session_id)
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    memory.memori.append(
        [to_memori(user("a")), to_memori(assistant("b"))], session_id=sid, at=long_ago
    )

    memory.set([user("a"), assistant("b"), user("c")])  # agents resend their whole history
    stored = memory.memori.messages(sid)
    assert [m.content for m in stored] == ["a", "b", "c"]
    assert [m.created_at.year for m in stored] == [2020, 2020, datetime.now().year]

    memory.set([user("x")])
    assert texts(memory.get_all()) == [("user", "x")]


def test_reset_forgets_the_session_and_new_session_keeps_memories(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for()
    memory.put_messages([user("I collect vintage stamps."), assistant("Nice.")])
    old = memory.session_id

    new = memory.new_session()
    assert new == memory.session_id != old
    assert memory.get_all() == []
    memory.put(user("What do I collect?"))
    assert "stamps" in message_text(memory.get()[0])

    memory.session_id = old
    memory.reset()
    assert memory.get_all() == []
    memory.session_id = new
    assert "stamps" not in message_text(memory.get()[0])


def test_injected_memory_block_is_never_stored(memory_for: Callable[..., MemoriMemory]) -> None:
    memory_for().put_messages([user("I speak Portuguese."), assistant("Ótimo.")])
    memory = memory_for()
    memory.put(user("Which language do I speak?"))
    echoed = memory.get()  # [block, user]; a caller might pass it back as chat_history
    assert "<memori-memory>" in message_text(echoed[0])

    memory.set([*echoed, assistant("Portuguese.")])
    assert texts(memory.get_all()) == [
        ("user", "Which language do I speak?"),
        ("assistant", "Portuguese."),
    ]


def test_rebuilt_from_model_dump_continues_the_same_session(db_url: str) -> None:
    memory = MemoriMemory("u1", "bot", database_url=db_url, embedder=None, token_limit=500)
    memory.put(user("first"))
    dumped = memory.model_dump()
    assert dumped["session_id"] == memory.session_id
    assert {"entity_id", "process_id", "database_url", "session_id"} <= dumped.keys()

    for rebuilt in (
        MemoriMemory.model_validate(dumped),
        MemoriMemory.from_dict(memory.to_dict()),
        MemoriMemory.model_validate_json(memory.model_dump_json()),
        pickle.loads(pickle.dumps(memory)),
        copy.deepcopy(memory),
    ):
        assert rebuilt.token_limit == 500
        assert texts(rebuilt.get_all())[0] == ("user", "first")
    again = MemoriMemory.model_validate(dumped)
    again.put(assistant("second"))
    assert texts(memory.get_all()) == [("user", "first"), ("assistant", "second")]


def test_block_is_rebuildable_from_its_fields(db_url: str) -> None:
    block = MemoriMemoryBlock("u1", "bot", database_url=db_url, embedder=None, priority=2)
    rebuilt = MemoriMemoryBlock.model_validate(block.model_dump())
    assert rebuilt.model_dump() == block.model_dump()
    assert (rebuilt.name, rebuilt.priority, rebuilt.session_id) == ("memori", 2, block.session_id)


def test_a_named_session_maps_to_one_stable_memori_session(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    a = memory_for(session_id="support-ticket-42")
    a.put(user("hello"))
    b = memory_for(session_id="support-ticket-42")
    assert texts(b.get_all()) == [("user", "hello")]
    uid = "6f1c2a7e-3b0d-4c47-9a55-0e8f6a1d2b3c"
    assert session_uuid(uid) == uid


def test_identity_is_validated_and_sessions_are_not_shared_across_users(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    with pytest.raises(ValidationError) as err:
        MemoriMemory("", "bot")
    assert isinstance(err.value.errors()[0]["ctx"]["error"], InvalidScopeError)

    alice = memory_for("alice")
    alice.put(user("private"))
    mallory = memory_for("mallory", session_id=alice.session_id)
    with pytest.raises(ScopeError):
        mallory.put(user("let me in"))


def test_the_callers_memori_keeps_its_attribution_and_settings_survive_a_rebuild(
    make_memori: Callable[..., Memori],
) -> None:
    mine = make_memori(recall_limit=2, share_across_processes=True).attribution("owner", "app")
    memory = MemoriMemory("u1", "bot", memori=mine, context_token_budget=300)
    memory.put(user("hi"))
    assert (mine.config.entity_id, mine.config.process_id) == ("owner", "app")
    assert mine.context_token_budget != 300  # the caller's instance is not changed
    assert memory.memori.context_token_budget == 300

    rebuilt = MemoriMemory.model_validate(memory.model_dump())
    assert rebuilt.database_url == mine.database_url  # the same store
    assert (rebuilt.recall_limit, rebuilt.share_across_processes) == (2, True)
    assert rebuilt.context_token_budget == 300


async def test_sync_and_async_methods_agree(memory_for: Callable[..., MemoriMemory]) -> None:
    history = [user("I like green tea."), assistant("Noted.")]
    sync_mem, async_mem = memory_for("s"), memory_for("a")

    sync_mem.set(history[:1])
    sync_mem.put(history[1])
    sync_mem.put_messages(RICH)
    await async_mem.aset(history[:1])
    await async_mem.aput(history[1])
    await async_mem.aput_messages(RICH)
    assert sync_mem.get_all() == await async_mem.aget_all()

    sync_mem.new_session()
    async_mem.new_session()
    sync_mem.put(user("What tea do I like?"))
    await async_mem.aput(user("What tea do I like?"))
    # Recall ranks on vectors embedded in the background; wait for them so both see the same.
    sync_mem.memori.flush()
    await async_mem.memori.aflush()
    sync_got, async_got = sync_mem.get(), await async_mem.aget()
    assert "green tea" in message_text(sync_got[0])
    assert texts(sync_got) == texts(async_got)

    sync_mem.reset()
    await async_mem.areset()
    assert sync_mem.get_all() == [] == await async_mem.aget_all()


async def test_block_records_flushed_messages_under_the_memory_session(
    make_memori: Callable[..., Memori],
) -> None:
    mem = make_memori()
    block = MemoriMemoryBlock("u1", "bot", memori=mem)
    await block.aput([user("I was born in Porto."), assistant("Nice city.")], session_id="s-1")
    await block.aput([user("I was born in Porto."), assistant("Nice city.")], session_id="s-1")
    stored = mem.scoped("u1", "bot").messages(session_uuid("s-1"))
    assert [m.content for m in stored] == ["I was born in Porto.", "Nice city."]
    # The flush tag is not kept in the stored message.
    assert "session_id" not in str(stored[0].message.payload)

    text = await block.aget([user("Where was I born?")])
    assert "<memori-memory>" in text and "Porto" in text
    assert await block.aget([]) == ""


def test_from_defaults_builds_a_memory_with_history(db_url: str) -> None:
    memory = MemoriMemory.from_defaults(
        entity_id="u1",
        process_id="bot",
        database_url=db_url,
        embedder=None,
        chat_history=[user("hello")],
    )
    assert texts(memory.get_all()) == [("user", "hello")]


def test_import_guard_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['llama_index'] = None\n"
        "try:\n"
        "    import memori_llamaindex\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert 'pip install "memori-core[llamaindex]"' in out.stdout


# ---- per-agent memories in one shared memory (agent_process_ids) ----

TEAM = {"a": "agent-a", "b": "agent-b"}


def block_text(window: list[ChatMessage]) -> str:
    head = window[0] if window else None
    return message_text(head) if head is not None and head.role == "system" else ""


def test_each_active_agent_recalls_and_records_under_its_own_process_id(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    shared = memory_for("u1", "team", agent_process_ids=TEAM)
    shared.activate_agent("a")
    shared.put_messages([user("My favourite colour is teal."), assistant("Teal it is.")])
    shared.activate_agent("b")
    shared.put(user("My dog is called Rex."))
    # One shared transcript, whoever spoke.
    assert [t for _, t in texts(shared.get_all())] == [
        "My favourite colour is teal.",
        "Teal it is.",
        "My dog is called Rex.",
    ]

    later = memory_for("u1", "team", agent_process_ids=TEAM)  # a new conversation
    query = "What is my favourite colour and what is my dog called?"
    later.activate_agent("a")
    seen_by_a = block_text(later.get(input=query))
    later.activate_agent("b")
    seen_by_b = block_text(later.get(input=query))
    later.activate_agent(None)  # the workflow's own process id: the whole shared transcript
    seen_by_team = block_text(later.get(input=query))

    assert "teal" in seen_by_a and "Rex" not in seen_by_a
    assert "Rex" in seen_by_b and "teal" not in seen_by_b
    assert "teal" in seen_by_team and "Rex" in seen_by_team


def test_an_agents_private_copies_in_view_are_not_recalled_back(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for("u1", "team", agent_process_ids=TEAM)
    memory.activate_agent("a")
    memory.put(user("My favourite colour is teal."))
    # The model already sees the message; its agent's copy must not come back as a "memory".
    window = memory.get(input="What is my favourite colour?")
    assert texts(window) == [("user", "My favourite colour is teal.")]


def test_a_handoff_records_the_user_message_once_for_the_new_agent(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for("u1", "team", agent_process_ids=TEAM)
    memory.activate_agent("a")
    memory.put(user("My email is rex@example.org, please book the vet."))
    memory.activate_agent("b", handoff=True)
    memory.activate_agent("b", handoff=True)  # the same agent again: nothing new to record

    agent_b = memory.memori.scoped("u1", "agent-b")
    [session] = agent_b.sessions()
    assert [m.content for m in agent_b.messages(session.id)] == [
        "My email is rex@example.org, please book the vet."
    ]
    assert agent_b.recall("email")  # memories are made from it under agent-b


def test_reset_also_forgets_the_agents_private_copies(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    memory = memory_for("u1", "team", agent_process_ids=TEAM)
    memory.activate_agent("a")
    memory.put(user("My favourite colour is teal."))
    memory.reset()
    assert memory.get_all() == []
    assert memory.memori.scoped("u1", "agent-a").recall("favourite colour") == []


def test_agent_fields_survive_a_rebuild_and_are_validated(db_url: str) -> None:
    memory = MemoriMemory("u1", "team", database_url=db_url, embedder=None, agent_process_ids=TEAM)
    memory.activate_agent("b")
    rebuilt = MemoriMemory.model_validate(memory.model_dump())
    assert (rebuilt.agent_process_ids, rebuilt.active_agent) == (TEAM, "b")

    with pytest.raises(ValidationError) as err:
        MemoriMemory("u1", "team", database_url=db_url, agent_process_ids={"a": ""})
    assert isinstance(err.value.errors()[0]["ctx"]["error"], InvalidScopeError)


async def test_agent_switching_is_the_same_sync_and_async(
    memory_for: Callable[..., MemoriMemory],
) -> None:
    sync = memory_for("u1", "team", agent_process_ids=TEAM)
    sync.activate_agent("a")
    sync.put(user("My favourite colour is teal."))
    sync.activate_agent("b", handoff=True)
    sync.put(assistant("I will remember that."))

    other = memory_for("u2", "team", agent_process_ids=TEAM)
    await other.aactivate_agent("a")
    await other.aput(user("My favourite colour is teal."))
    await other.aactivate_agent("b", handoff=True)
    await other.aput(assistant("I will remember that."))

    for name in ("a", "b"):
        fresh_sync = memory_for("u1", "team", agent_process_ids=TEAM, active_agent=name)
        fresh_async = memory_for("u2", "team", agent_process_ids=TEAM, active_agent=name)
        window = fresh_sync.get(input="favourite colour")
        assert texts(await fresh_async.aget(input="favourite colour")) == texts(window)
        assert "teal" in block_text(window)
    await other.areset()
    assert await other.aget_all() == []
    assert other.memori.scoped("u2", "agent-b").recall("favourite colour") == []
