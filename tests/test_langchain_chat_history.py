"""MemoriChatHistory: exact round-trips, isolation between agents, sync/async parity, and use
under RunnableWithMessageHistory with LangChain's own fake chat models."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from memori_core import Memori
from memori_core.errors import ScopeError, UsageError
from memori_langchain import MemoriChatHistory

MakeMemori = Callable[..., Memori]


def every_kind_of_message() -> list[BaseMessage]:
    return [
        SystemMessage("You are a travel agent.", id="s1"),
        HumanMessage(
            content=[
                {"type": "text", "text": "I live in Lisbon."},
                {"type": "image", "url": "https://example.com/lisbon.png"},
            ],
            id="h1",
            name="ana",
            additional_kwargs={"channel": "web"},
        ),
        AIMessage(
            content="",
            id="a1",
            tool_calls=[{"name": "flights", "args": {"to": "OPO", "pax": 2}, "id": "call-1"}],
            response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        ),
        ToolMessage("3 flights found", tool_call_id="call-1", id="t1", artifact={"ids": [1, 2, 3]}),
        AIMessage(content=[{"type": "text", "text": "There are 3 flights to Porto."}], id="a2"),
        ChatMessage(role="critic", content="Good answer.", id="c1"),
    ]


def test_every_message_type_round_trips_exactly(make_memori: MakeMemori) -> None:
    history = MemoriChatHistory("ana", "travel", memori=make_memori())
    sent = every_kind_of_message()

    history.add_messages(sent)

    assert history.messages == sent
    # A fresh history on the same session (another process, a restart) reads the same thread.
    again = MemoriChatHistory("ana", "travel", session_id=history.session_id, memori=make_memori())
    assert again.messages == sent


def test_values_json_cannot_hold_are_stored_in_their_json_form(make_memori: MakeMemori) -> None:
    history = MemoriChatHistory("ana", "travel", memori=make_memori())
    when = datetime(2025, 5, 1, 12, 30, tzinfo=UTC)

    history.add_messages([ToolMessage("booked", tool_call_id="c1", artifact={"at": when})])

    [back] = history.messages
    assert isinstance(back, ToolMessage)
    assert (back.content, back.tool_call_id) == ("booked", "c1")
    assert back.artifact == {"at": "2025-05-01T12:30:00Z"}


def test_core_sees_openai_roles_and_plain_text(make_memori: MakeMemori) -> None:
    history = MemoriChatHistory("ana", "travel", memori=make_memori())
    history.add_messages(every_kind_of_message())

    stored = history.memori.messages(history.session_id)

    assert [(m.role, m.content) for m in stored] == [
        ("system", "You are a travel agent."),
        ("user", "I live in Lisbon."),
        ("assistant", ""),
        ("tool", "3 flights found"),
        ("assistant", "There are 3 flights to Porto."),
        ("user", "Good answer."),
    ]
    assert stored[2].message.tool_calls == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "flights", "arguments": '{"to": "OPO", "pax": 2}'},
        }
    ]
    assert stored[3].message.tool_call_id == "call-1"
    # What the chat history stored is recalled for the same user and agent (the OpenAI path
    # and the other adapters read the same memory).
    recalled = make_memori().scoped("ana", "travel").recall("where does the user live?")
    assert recalled[0].text == "I live in Lisbon."


def test_messages_written_by_the_openai_path_are_readable(make_memori: MakeMemori) -> None:
    mem = make_memori().scoped("ana", "travel")
    session = mem.new_session()
    mem.record(
        [
            {"role": "user", "content": "Book me a hotel"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c9",
                        "type": "function",
                        "function": {"name": "hotels", "arguments": '{"city": "Porto"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c9", "content": "Hotel Infante"},
        ]
    )

    history = MemoriChatHistory("ana", "travel", session_id=session, memori=make_memori())

    assert history.messages == [
        HumanMessage("Book me a hotel"),
        AIMessage("", tool_calls=[{"name": "hotels", "args": {"city": "Porto"}, "id": "c9"}]),
        ToolMessage("Hotel Infante", tool_call_id="c9"),
    ]


def test_two_agents_of_one_user_have_isolated_histories(make_memori: MakeMemori) -> None:
    shared = make_memori()
    planner = MemoriChatHistory("ana", "planner", session_id="main", memori=shared)
    booker = MemoriChatHistory("ana", "booker", session_id="main", memori=shared)

    planner.add_messages([HumanMessage("Plan a week in Japan")])
    booker.add_messages([HumanMessage("Book the Kyoto ryokan")])

    assert planner.messages == [HumanMessage("Plan a week in Japan")]
    assert booker.messages == [HumanMessage("Book the Kyoto ryokan")]
    assert planner.session_id != booker.session_id
    # The shared instance was not re-attributed by the histories.
    assert shared.config.entity_id is None
    # Recall of one agent does not return the other's memories.
    texts = [r.text for r in shared.scoped("ana", "planner").recall("Kyoto ryokan book")]
    assert "Book the Kyoto ryokan" not in texts


def test_string_session_ids_are_stable_and_per_user(make_memori: MakeMemori) -> None:
    ana = MemoriChatHistory("ana", "travel", session_id="thread-1", memori=make_memori())
    ana.add_messages([HumanMessage("hello from ana")])

    ana_again = MemoriChatHistory("ana", "travel", session_id="thread-1", memori=make_memori())
    bob = MemoriChatHistory("bob", "travel", session_id="thread-1", memori=make_memori())

    assert ana_again.session_id == ana.session_id
    assert ana_again.messages == [HumanMessage("hello from ana")]
    assert bob.messages == []


def test_another_users_session_uuid_is_refused(make_memori: MakeMemori) -> None:
    ana = MemoriChatHistory("ana", "travel", memori=make_memori())
    ana.add_messages([HumanMessage("my passport number is X123")])

    intruder = MemoriChatHistory("eve", "travel", session_id=ana.session_id, memori=make_memori())

    assert intruder.messages == []
    with pytest.raises(ScopeError):
        intruder.add_messages([HumanMessage("hi")])


def test_new_history_starts_a_new_session(make_memori: MakeMemori) -> None:
    first = MemoriChatHistory("ana", "travel", memori=make_memori())
    second = MemoriChatHistory("ana", "travel", memori=make_memori())

    first.add_messages([HumanMessage("one")])

    assert uuid.UUID(first.session_id) != uuid.UUID(second.session_id)
    assert second.messages == []


def test_clear_deletes_the_thread_and_its_memories(make_memori: MakeMemori) -> None:
    history = MemoriChatHistory("ana", "travel", memori=make_memori())
    history.add_messages([HumanMessage("I am allergic to peanuts.")])
    assert history.memori.recall("peanuts allergy")

    history.clear()

    assert history.messages == []
    assert history.memori.recall("peanuts allergy") == []


def test_memori_and_database_url_are_exclusive(make_memori: MakeMemori, db_url: str) -> None:
    with pytest.raises(UsageError):
        MemoriChatHistory("ana", "travel", memori=make_memori(), database_url=db_url)


async def test_async_and_sync_give_the_same_results(make_memori: MakeMemori) -> None:
    sync_history = MemoriChatHistory("ana", "sync", memori=make_memori())
    async_history = MemoriChatHistory("ana", "async", memori=make_memori())
    sent = every_kind_of_message()

    sync_history.add_messages(sent[:3])
    sync_history.add_messages(sent[3:])
    await async_history.aadd_messages(sent[:3])
    await async_history.aadd_messages(sent[3:])

    assert await async_history.aget_messages() == sync_history.messages == sent
    assert async_history.messages == await sync_history.aget_messages()

    sync_history.clear()
    await async_history.aclear()
    assert sync_history.messages == [] == await async_history.aget_messages()


async def test_async_methods_do_not_use_the_base_class_thread_pool_defaults() -> None:
    for name in ("aget_messages", "aadd_messages", "aclear"):
        assert name in vars(MemoriChatHistory), name


def _chain_with_history(model: object, make_memori: MakeMemori) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are helpful."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    mem = make_memori()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in langchain-core 1.x
        return RunnableWithMessageHistory(
            prompt | model,  # type: ignore[operator]
            lambda session_id: MemoriChatHistory("ana", "chat", session_id=session_id, memori=mem),
            input_messages_key="question",
            history_messages_key="history",
        )


def test_runnable_with_message_history_sync(make_memori: MakeMemori) -> None:
    model = FakeListChatModel(responses=["Hi Ana!", "You live in Lisbon."])
    chain = _chain_with_history(model, make_memori)
    config = {"configurable": {"session_id": "s-1"}}

    chain.invoke({"question": "I'm Ana and I live in Lisbon"}, config=config)  # type: ignore[arg-type]
    answer = chain.invoke({"question": "Where do I live?"}, config=config)  # type: ignore[arg-type]

    assert answer.content == "You live in Lisbon."
    history = MemoriChatHistory("ana", "chat", session_id="s-1", memori=make_memori())
    assert [(m.type, m.content) for m in history.messages] == [
        ("human", "I'm Ana and I live in Lisbon"),
        ("ai", "Hi Ana!"),
        ("human", "Where do I live?"),
        ("ai", "You live in Lisbon."),
    ]


async def test_runnable_with_message_history_async(make_memori: MakeMemori) -> None:
    seen: list[list[BaseMessage]] = []

    class Recording(GenericFakeChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(list(messages))
            return self._generate(messages, stop=stop, **kwargs)

    model = Recording(messages=iter(["Hi Ana!", "Lisbon."]))
    chain = _chain_with_history(model, make_memori)
    config = {"configurable": {"session_id": "s-2"}}

    await chain.ainvoke({"question": "I live in Lisbon"}, config=config)  # type: ignore[arg-type]
    await chain.ainvoke({"question": "Where do I live?"}, config=config)  # type: ignore[arg-type]

    # The second call saw the first turn, read back from memori.
    assert [m.content for m in seen[1]] == [
        "You are helpful.",
        "I live in Lisbon",
        "Hi Ana!",
        "Where do I live?",
    ]
    history = MemoriChatHistory("ana", "chat", session_id="s-2", memori=make_memori())
    assert len(await history.aget_messages()) == 4
