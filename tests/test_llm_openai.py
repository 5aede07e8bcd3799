"""The OpenAI interceptor (`Memori().llm.register(client)`) against the real `openai` SDK.

The SDK talks to `FakeOpenAI` through an httpx2 `MockTransport`: no network. Tests assert on
the JSON the model received and on the transcript memori stored.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from flask import Flask, request
from pydantic import BaseModel

from memori_core import Memori
from memori_core.context import MEMORY_BLOCK_START
from memori_core.errors import StorageError
from memori_core.testing import HashEmbedder

MakeMemori = Callable[..., Memori]


# -- a fake OpenAI endpoint -----------------------------------------------------------------------


class FakeOpenAI:
    """Answers `/chat/completions` and `/responses` (plain and SSE) and keeps each request body.

    The reply echoes the last user message (`echo: ...`). Queue tool calls with
    `next_tool_calls` to have the next reply call tools instead.
    """

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.next_tool_calls: list[dict[str, str]] | None = None
        self._lock = threading.Lock()

    # clients

    def client(self) -> openai.OpenAI:
        transport = httpx2.MockTransport(self.handle)
        return openai.OpenAI(
            api_key="test",
            base_url="http://test/v1",
            http_client=httpx2.Client(transport=transport),
            max_retries=0,
        )

    def async_client(self) -> openai.AsyncOpenAI:
        transport = httpx2.MockTransport(self.handle)
        return openai.AsyncOpenAI(
            api_key="test",
            base_url="http://test/v1",
            http_client=httpx2.AsyncClient(transport=transport),
            max_retries=0,
        )

    # what the model saw

    @property
    def last(self) -> dict[str, Any]:
        return self.bodies[-1]

    def body_for(self, needle: str) -> dict[str, Any]:
        """The one request whose body mentions `needle` in the caller's own turn."""
        found = [b for b in self.bodies if needle in _last_user_text(b)]
        assert len(found) == 1, f"{len(found)} requests end with {needle!r}"
        return found[0]

    # the endpoint

    def handle(self, req: httpx2.Request) -> httpx2.Response:
        body = json.loads(req.content)
        with self._lock:
            self.bodies.append(body)
            calls, self.next_tool_calls = self.next_tool_calls, None
        text = "" if calls else f"echo: {_last_user_text(body)}"
        if req.url.path.endswith("/chat/completions"):
            fmt = body.get("response_format") or {}
            if fmt.get("type") == "json_schema":
                text = json.dumps({"answer": text})
            if body.get("stream"):
                return _sse(_chat_chunks(text, calls))
            return httpx2.Response(200, json=_chat_completion(text, calls))
        if req.url.path.endswith("/responses"):
            fmt = (body.get("text") or {}).get("format") or {}
            if fmt.get("type") == "json_schema":
                text = json.dumps({"answer": text})
            if body.get("stream"):
                return _sse(_response_events(text, calls), named=True)
            return httpx2.Response(200, json=_response(text, calls))
        return httpx2.Response(404, json={"error": {"message": "not found"}})


def _last_user_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        content = users[-1]["content"] if users else ""
    else:
        given = body.get("input")
        if isinstance(given, str):
            return given
        users = [i for i in given or [] if i.get("role") == "user"]
        content = users[-1]["content"] if users else ""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content)
    return str(content)


def _chat_completion(text: str, calls: list[dict[str, str]] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
    }


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _chat_chunks(text: str, calls: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    chunks = [_chunk({"role": "assistant", "content": ""})]
    for i in range(0, len(text), 4):
        chunks.append(_chunk({"content": text[i : i + 4]}))
    for index, call in enumerate(calls or []):
        head = {"index": index, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["name"], "arguments": ""}
        chunks.append(_chunk({"tool_calls": [head]}))
        args = call["arguments"]
        for i in range(0, len(args), 5):
            piece = {"index": index, "function": {"arguments": args[i : i + 5]}}
            chunks.append(_chunk({"tool_calls": [piece]}))
    chunks.append(_chunk({}, "tool_calls" if calls else "stop"))
    return chunks


def _response(text: str, calls: list[dict[str, str]] | None) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if text:
        output.append(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for i, call in enumerate(calls or []):
        output.append(
            {
                "id": f"fc_{i}",
                "type": "function_call",
                "call_id": call["id"],
                "name": call["name"],
                "arguments": call["arguments"],
                "status": "completed",
            }
        )
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-4o-mini",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _response_events(text: str, calls: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    final = _response(text, calls)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**final, "status": "in_progress", "output": []}}
    ]
    for i in range(0, len(text), 4):
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": text[i : i + 4],
                "logprobs": [],
            }
        )
    for index, item in enumerate(final["output"]):
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": final})
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return events


def _sse(events: list[dict[str, Any]], named: bool = False) -> httpx2.Response:
    lines = []
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        lines.append(f"{head}data: {json.dumps(event)}\n\n")
    if not named:
        lines.append("data: [DONE]\n\n")
    return httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode()
    )


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def blocks(body: dict[str, Any]) -> list[str]:
    """The memory blocks the model received (system messages, or in `instructions`)."""
    if "messages" in body:
        return [
            m["content"]
            for m in body["messages"]
            if m["role"] == "system" and MEMORY_BLOCK_START in m["content"]
        ]
    instructions = body.get("instructions") or ""
    return [instructions] if MEMORY_BLOCK_START in instructions else []


def transcript(mem: Memori, session_id: Any = None) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in mem.messages(session_id)]


def conversation(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The non-system turns the model received, in order."""
    if "messages" in body:
        items = body["messages"]
    else:
        given = body["input"]
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    return [(m["role"], m.get("content")) for m in items if m.get("role") in ("user", "assistant")]


class Answer(BaseModel):
    answer: str


# Every covered call shape, as (sync call, async call); each returns the reply text.


def _chat_create(client: Any, text: str) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[user(text)])


def _chat_text(result: Any) -> str:
    return str(result.choices[0].message.content)


def _join_chat_chunks(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _join_response_events(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def sync_shapes() -> dict[str, Callable[[Any, str], str]]:
    def chat_create(client: Any, text: str) -> str:
        return _chat_text(_chat_create(client, text))

    def chat_stream(client: Any, text: str) -> str:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[user(text)], stream=True
        )
        return _join_chat_chunks(list(stream))

    def chat_parse(client: Any, text: str) -> str:
        done = client.chat.completions.parse(
            model="gpt-4o-mini", messages=[user(text)], response_format=Answer
        )
        return str(done.choices[0].message.parsed.answer)

    def chat_stream_helper(client: Any, text: str) -> str:
        with client.chat.completions.stream(model="gpt-4o-mini", messages=[user(text)]) as s:
            return str(s.get_final_completion().choices[0].message.content)

    def responses_create(client: Any, text: str) -> str:
        return str(client.responses.create(model="gpt-4o-mini", input=text).output_text)

    def responses_stream(client: Any, text: str) -> str:
        stream = client.responses.create(model="gpt-4o-mini", input=text, stream=True)
        return _join_response_events(list(stream))

    def responses_parse(client: Any, text: str) -> str:
        done = client.responses.parse(model="gpt-4o-mini", input=text, text_format=Answer)
        return str(done.output_parsed.answer)

    def with_options(client: Any, text: str) -> str:
        return _chat_text(_chat_create(client.with_options(timeout=5), text))

    def chat_raw_response(client: Any, text: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[user(text)]
        )
        assert raw.http_request.url.path.endswith("/chat/completions")
        return _chat_text(raw.parse())

    def responses_raw_response(client: Any, text: str) -> str:
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input=text)
        return str(raw.parse().output_text)

    return {k: v for k, v in locals().items() if callable(v)}


def async_shapes() -> dict[str, Callable[[Any, str], Any]]:
    async def chat_create(client: Any, text: str) -> str:
        return _chat_text(await _chat_create(client, text))

    async def chat_stream(client: Any, text: str) -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[user(text)], stream=True
        )
        return _join_chat_chunks([c async for c in stream])

    async def chat_parse(client: Any, text: str) -> str:
        done = await client.chat.completions.parse(
            model="gpt-4o-mini", messages=[user(text)], response_format=Answer
        )
        return str(done.choices[0].message.parsed.answer)

    async def chat_stream_helper(client: Any, text: str) -> str:
        async with client.chat.completions.stream(model="gpt-4o-mini", messages=[user(text)]) as s:
            final = await s.get_final_completion()
            return str(final.choices[0].message.content)

    async def responses_create(client: Any, text: str) -> str:
        done = await client.responses.create(model="gpt-4o-mini", input=text)
        return str(done.output_text)

    async def responses_stream(client: Any, text: str) -> str:
        stream = await client.responses.create(model="gpt-4o-mini", input=text, stream=True)
        return _join_response_events([e async for e in stream])

    async def responses_parse(client: Any, text: str) -> str:
        done = await client.responses.parse(model="gpt-4o-mini", input=text, text_format=Answer)
        return str(done.output_parsed.answer)

    async def with_options(client: Any, text: str) -> str:
        return _chat_text(await _chat_create(client.with_options(timeout=5), text))

    async def chat_raw_response(client: Any, text: str) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[user(text)]
        )
        assert raw.http_request.url.path.endswith("/chat/completions")
        return _chat_text(raw.parse())

    async def responses_raw_response(client: Any, text: str) -> str:
        raw = await client.responses.with_raw_response.create(model="gpt-4o-mini", input=text)
        return str(raw.parse().output_text)

    return {k: v for k, v in locals().items() if callable(v)}


SYNC = sync_shapes()
ASYNC = async_shapes()
assert SYNC.keys() == ASYNC.keys()


def _answer(text: str) -> str:
    """The reply text; parse calls make the model write `{"answer": ...}` JSON."""
    return str(json.loads(text)["answer"]) if text.startswith("{") else text


def _expect_shape(fake: FakeOpenAI, mem: Memori, reply: str) -> None:
    """What every call shape must do on the second turn of a session."""
    assert reply == "echo: What colour do I like?"
    body = fake.last
    # The memory block recalled the first turn.
    (block,) = blocks(body)
    assert "teal" in block
    # One user turn sent, so the session's transcript was replayed before it.
    assert [(r, _answer(c)) for r, c in conversation(body)] == [
        ("user", "My favourite colour is teal"),
        ("assistant", "echo: My favourite colour is teal"),
        ("user", "What colour do I like?"),
    ]
    assert "stream_options" not in body
    assert [(r, _answer(c)) for r, c in transcript(mem)] == [
        ("user", "My favourite colour is teal"),
        ("assistant", "echo: My favourite colour is teal"),
        ("user", "What colour do I like?"),
        ("assistant", "echo: What colour do I like?"),
    ]
    assert all(m.message.payload is None for m in mem.messages())


# -- every call shape, sync and async -------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SYNC))
def test_sync_call_shapes_recall_replay_and_record(
    shape: str, fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-123", process_id="support-chat")
    SYNC[shape](client, "My favourite colour is teal")
    assert blocks(fake.last) == []  # nothing to recall yet
    reply = SYNC[shape](client, "What colour do I like?")
    _expect_shape(fake, mem, reply)


@pytest.mark.parametrize("shape", sorted(ASYNC))
async def test_async_call_shapes_recall_replay_and_record(
    shape: str, fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.async_client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-123", process_id="support-chat")
    await ASYNC[shape](client, "My favourite colour is teal")
    assert blocks(fake.last) == []
    reply = await ASYNC[shape](client, "What colour do I like?")
    _expect_shape(fake, mem, reply)


# -- the spec's examples --------------------------------------------------------------------------


def test_spec_example_tokyo_paris_then_resume_remembers_tokyo(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-123", process_id="support-chat")
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("I'm planning a trip to Tokyo")]
    )
    tokyo = mem.config.session_id
    paris = mem.new_session()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("I'm planning a trip to Paris")]
    )
    # The first turn of the new session is stored there, and Tokyo's was not replayed into it.
    assert transcript(mem) == [
        ("user", "I'm planning a trip to Paris"),
        ("assistant", "echo: I'm planning a trip to Paris"),
    ]
    assert conversation(fake.last) == [("user", "I'm planning a trip to Paris")]

    mem.set_session(tokyo)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("What was I planning?")])
    assert conversation(fake.last) == [
        ("user", "I'm planning a trip to Tokyo"),
        ("assistant", "echo: I'm planning a trip to Tokyo"),
        ("user", "What was I planning?"),
    ]
    assert transcript(mem, tokyo) == [
        ("user", "I'm planning a trip to Tokyo"),
        ("assistant", "echo: I'm planning a trip to Tokyo"),
        ("user", "What was I planning?"),
        ("assistant", "echo: What was I planning?"),
    ]
    assert len(transcript(mem, paris)) == 2
    assert mem.stats()["llm_calls"] == 3


def test_multi_tenant_entities_never_see_each_other(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    for tenant, colour in (("acme", "crimson"), ("globex", "ochre")):
        mem = make_memori().llm.register(client)
        mem.attribution(entity_id=f"{tenant}:customer-42", process_id="helpdesk")
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[user(f"My favourite colour is {colour}")]
        )
    # Same customer id, other tenant: a new session recalls only its own tenant's memory.
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="globex:customer-42", process_id="helpdesk")
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("Which favourite colour did I tell you?")]
    )
    (block,) = blocks(fake.last)
    assert "ochre" in block
    assert "crimson" not in json.dumps(fake.last)


class _Agent:
    """An agent that owns its client and its `Memori`, like the spec's SupportAgent/SalesAgent."""

    process_id = ""

    def __init__(self, fake: FakeOpenAI, mem: Memori, user_id: str) -> None:
        self.client = fake.client()
        self.mem = mem.llm.register(self.client)
        self.mem.attribution(entity_id=user_id, process_id=self.process_id)

    def ask(self, text: str) -> str:
        done = self.client.chat.completions.create(model="gpt-4o-mini", messages=[user(text)])
        return str(done.choices[0].message.content)


class SupportAgent(_Agent):
    process_id = "support"


class SalesAgent(_Agent):
    process_id = "sales"


def test_support_and_sales_agents_keep_their_memories_apart(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    support = SupportAgent(fake, make_memori(), "user-7")
    sales = SalesAgent(fake, make_memori(), "user-7")
    support.ask("My router model is the Zyxel VMG8825 and it keeps rebooting")
    sales.ask("I want a quote for the premium fibre plan")

    support.mem.new_session()
    support.ask("What router model do I have, and which plan quote did I want?")
    support_block = "".join(blocks(fake.last))
    assert "Zyxel" in support_block
    assert "fibre" not in json.dumps(fake.last)

    sales.mem.new_session()
    sales.ask("Which plan quote did I want, and what router model do I have?")
    assert "fibre" in "".join(blocks(fake.last))
    assert "Zyxel" not in json.dumps(fake.last)
    assert {m.process_id for m in support.mem.messages()} == {"support"}


def test_web_app_one_module_client_memori_per_request(make_memori: MakeMemori) -> None:
    """The spec's web app: one client at module level, a `Memori` per request, in threads."""
    fake = FakeOpenAI()
    client = fake.client()  # created once, shared by every request thread
    app = Flask(__name__)
    users = [f"user-{i}" for i in range(8)]
    all_registered = threading.Barrier(len(users))

    @app.post("/chat")
    def chat() -> dict[str, str]:
        data = request.get_json()
        mem = make_memori().llm.register(client)
        mem.attribution(entity_id=data["user"], process_id="web")
        if data.get("session"):
            mem.set_session(data["session"])
        else:
            # Every first request registers before any calls the model: a worst-case overlap.
            all_registered.wait(timeout=30)
        done = client.chat.completions.create(model="gpt-4o-mini", messages=[user(data["message"])])
        return {"reply": done.choices[0].message.content, "session": str(mem.config.session_id)}

    def converse(name: str) -> str:
        http = app.test_client()
        first = http.post("/chat", json={"user": name, "message": f"My code word is {name}-kiwi"})
        session = first.get_json()["session"]
        again = http.post(
            "/chat",
            json={"user": name, "session": session, "message": f"{name}: what is my code word?"},
        )
        assert again.get_json()["reply"] == f"echo: {name}: what is my code word?"
        return str(session)

    with ThreadPoolExecutor(max_workers=8) as pool:
        sessions = dict(zip(users, pool.map(converse, users), strict=True))

    for name in users:
        body = fake.body_for(f"{name}: what is my code word?")
        # Resumed: its own first turn was replayed, and its memory recalled; nobody else's.
        assert conversation(body)[0] == ("user", f"My code word is {name}-kiwi")
        assert f"{name}-kiwi" in "".join(blocks(body))
        others = [f"{o}-kiwi" for o in users if o != name]
        assert not any(o in json.dumps(body) for o in others)
        mem = make_memori().attribution(name, "web")
        assert [c for _, c in transcript(mem, sessions[name])][0::2] == [
            f"My code word is {name}-kiwi",
            f"{name}: what is my code word?",
        ]


@pytest.mark.parametrize("closing", [False, True], ids=["kept", "closed-per-request"])
def test_thread_pool_of_users_sharing_one_client_does_not_leak(
    closing: bool, fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()

    def session(i: int) -> list[tuple[str, str]]:
        mem = make_memori().llm.register(client)
        mem.attribution(entity_id=f"user-{i}", process_id="bot")
        history = [user(f"My secret animal is the animal{i}")]
        done = client.chat.completions.create(model="gpt-4o-mini", messages=history)
        history += [done.choices[0].message, user(f"user-{i} asks: my secret animal?")]
        client.chat.completions.create(model="gpt-4o-mini", messages=history)
        stored = transcript(mem)
        if closing:
            # `with Memori() as mem:` per request: closing unregisters while others still call.
            mem.close()
        return stored

    with ThreadPoolExecutor(max_workers=8) as pool:
        transcripts = list(pool.map(session, range(24)))

    for i, stored in enumerate(transcripts):
        assert stored == [
            ("user", f"My secret animal is the animal{i}"),
            ("assistant", f"echo: My secret animal is the animal{i}"),
            ("user", f"user-{i} asks: my secret animal?"),
            ("assistant", f"echo: user-{i} asks: my secret animal?"),
        ]
        body = fake.body_for(f"user-{i} asks")
        assert f"animal{i}" in "".join(blocks(body))
        assert set(re.findall(r"animal(\d+)", json.dumps(body))) == {str(i)}


async def test_async_tasks_of_users_sharing_one_client_do_not_leak(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.async_client()

    async def session(i: int) -> list[tuple[str, str]]:
        mem = make_memori().llm.register(client)  # bound to this task only
        mem.attribution(entity_id=f"user-{i}", process_id="bot")
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[user(f"My lucky number is {1000 + i}")]
        )
        await asyncio.sleep(0)  # let the other tasks register in between
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[user(f"user-{i} asks: what is my lucky number?")]
        )
        return transcript(mem)

    transcripts = await asyncio.gather(*(session(i) for i in range(12)))
    for i, stored in enumerate(transcripts):
        assert [c for r, c in stored if r == "user"] == [
            f"My lucky number is {1000 + i}",
            f"user-{i} asks: what is my lucky number?",
        ]
        seen = json.dumps(fake.body_for(f"user-{i} asks"))
        assert str(1000 + i) in seen
        assert not any(str(1000 + j) in seen for j in range(12) if j != i)


# -- history resent by the app is stored once -----------------------------------------------------


def test_resent_history_with_tool_calls_is_stored_once(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="agent")
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    history: list[Any] = [{"role": "system", "content": "You are terse."}, user("Hi, I'm Ada")]
    done = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools)
    history.append(done.choices[0].message)  # the SDK object, as apps do
    history.append(user("Weather in Oslo?"))
    fake.next_tool_calls = [{"id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'}]
    done = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools)
    history.append(done.choices[0].message.model_dump(exclude_none=True))
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"})
    client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools)

    stored = mem.messages()
    assert [(m.role, m.content) for m in stored] == [
        ("system", "You are terse."),
        ("user", "Hi, I'm Ada"),
        ("assistant", "echo: Hi, I'm Ada"),
        ("user", "Weather in Oslo?"),
        ("assistant", ""),
        ("tool", "4 degrees, rain"),
        ("assistant", "echo: Weather in Oslo?"),
    ]
    call = stored[4].message.tool_calls
    assert call == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert stored[5].message.tool_call_id == "call_1"
    # The app sent its whole history each time: nothing was replayed on top of it.
    assert conversation(fake.last)[0] == ("user", "Hi, I'm Ada")
    assert sum(m["role"] == "system" for m in fake.last["messages"]) == 2  # its own + memory


def test_same_message_and_reply_twice_are_two_turns(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[user("yes")])
    assert transcript(mem) == [("user", "yes"), ("assistant", "echo: yes")] * 2


def test_streamed_tool_calls_are_stored_like_plain_ones(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="agent")
    fake.next_tool_calls = [
        {"id": "call_a", "name": "lookup", "arguments": '{"q": "order 1234 status"}'},
        {"id": "call_b", "name": "refund", "arguments": '{"order": 1234}'},
    ]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("Where is order 1234?")], stream=True
    )
    for _ in stream:
        pass
    (reply,) = [m.message for m in mem.messages() if m.role == "assistant"]
    assert reply.tool_calls == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "order 1234 status"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "refund", "arguments": '{"order": 1234}'},
        },
    ]
    assert reply.payload is None


def test_responses_input_plus_output_resent_is_stored_once(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="agent")
    items: list[Any] = [user("Book a table for two")]
    fake.next_tool_calls = [{"id": "call_9", "name": "book", "arguments": '{"people": 2}'}]
    done = client.responses.create(model="gpt-4o-mini", input=items, instructions="Be brief.")
    items += done.output  # SDK objects, as the docs show
    items.append({"type": "function_call_output", "call_id": "call_9", "output": "booked 19:00"})
    done = client.responses.create(model="gpt-4o-mini", input=items, instructions="Be brief.")
    items += done.output
    items.append(user("Thanks for the table"))
    client.responses.create(model="gpt-4o-mini", input=items, instructions="Be brief.")
    assert [(m.role, m.content) for m in mem.messages()] == [
        ("user", "Book a table for two"),
        ("assistant", ""),
        ("tool", "booked 19:00"),
        ("assistant", "echo: Book a table for two"),
        ("user", "Thanks for the table"),
        ("assistant", "echo: Thanks for the table"),
    ]
    # The caller's instructions are kept, after the memory block.
    assert fake.last["instructions"].endswith("\n\nBe brief.")
    assert fake.last["instructions"].startswith(MEMORY_BLOCK_START)


def test_responses_with_previous_response_id_is_not_replayed(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="agent")
    client.responses.create(model="gpt-4o-mini", input="I live in Lisbon")
    client.responses.create(
        model="gpt-4o-mini", input="Where do I live?", previous_response_id="resp_1"
    )
    # The server holds the earlier turns; replaying them would send them twice.
    assert fake.last["input"] == "Where do I live?"
    assert fake.last["previous_response_id"] == "resp_1"
    assert len(mem.messages()) == 4


# -- streams --------------------------------------------------------------------------------------


def test_stream_closed_early_is_recorded_as_partial(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("Tell me a long story")], stream=True
    ) as stream:
        assert stream.response.status_code == 200  # attributes pass through
        first = [next(stream), next(stream), next(stream)]
    got = "".join(c.choices[0].delta.content or "" for c in first)
    assert got == "echo: Te"
    stored = mem.messages()
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Tell me a long story"),
        ("assistant", got),
    ]
    assert stored[1].message.payload == {"partial": True}
    assert mem.stats()["llm_partial_replies"] == 1


async def test_async_stream_closed_early_is_recorded_as_partial(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.async_client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    stream = await client.responses.create(
        model="gpt-4o-mini", input="Tell me a long story", stream=True
    )
    async with stream:
        seen = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 3:
                break
    stored = await mem.amessages()
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Tell me a long story"),
        ("assistant", "echo: Te"),  # created, then two text deltas
    ]
    assert stored[1].message.payload == {"partial": True}


def test_exhausted_stream_is_recorded_once_even_if_closed_again(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    stream = client.responses.create(model="gpt-4o-mini", input="hello there", stream=True)
    events = list(stream)
    stream.close()
    assert events[-1].type == "response.completed"
    assert transcript(mem) == [("user", "hello there"), ("assistant", "echo: hello there")]
    assert mem.stats()["llm_partial_replies"] == 0


# -- fail open ------------------------------------------------------------------------------------


def _drop_tables(db_file: Path) -> None:
    with sqlite3.connect(db_file) as conn:
        conn.executescript(
            "DROP TABLE memori_messages; DROP TABLE memori_memories; DROP TABLE memori_sessions;"
        )


@pytest.mark.parametrize("stream", [False, True])
def test_broken_database_fails_open(
    stream: bool, fake: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_file = tmp_path / "broken.db"
    mem = Memori(f"sqlite:///{db_file}", embedder=HashEmbedder())
    client = fake.client()
    mem.llm.register(client).attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("I like tea")])
    _drop_tables(db_file)

    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[user("What do I like?")], stream=stream
    )
    text = _join_chat_chunks(list(done)) if stream else _chat_text(done)
    assert text == "echo: What do I like?"
    assert fake.last["messages"] == [user("What do I like?")]  # sent as the caller wrote it
    stats = mem.stats()
    assert stats["llm_recall_errors"] == 1
    assert stats["llm_record_errors"] == 1
    assert "memori: recall failed" in caplog.text


def test_a_failed_transcript_read_still_injects_the_recalled_memories(
    fake: FakeOpenAI, make_memori: MakeMemori, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume check reads the transcript during recall; its failure costs the replay only."""
    mem = make_memori()
    client = fake.client()
    mem.llm.register(client).attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("I like green tea")])
    mem.flush()
    mem.new_session()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("transcript unreadable")

    monkeypatch.setattr(mem, "messages", broken)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("Which tea do I like?")])
    assert any("green tea" in block for block in blocks(fake.last))
    assert mem.stats()["llm_recall_errors"] == 1


async def test_database_path_that_is_a_directory_fails_open(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "a-directory.db").mkdir()
    mem = Memori(f"sqlite:///{tmp_path / 'a-directory.db'}", embedder=HashEmbedder())
    client = fake.async_client()
    mem.llm.register(client).attribution(entity_id="user-1", process_id="p")
    done = await client.chat.completions.create(model="gpt-4o-mini", messages=[user("hi")])
    assert _chat_text(done) == "echo: hi"
    assert mem.stats()["llm_recall_errors"] == 1
    assert mem.stats()["llm_record_errors"] == 1


def test_model_errors_reach_the_caller_and_nothing_is_stored(make_memori: MakeMemori) -> None:
    def failing(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, json={"error": {"message": "slow down", "type": "rate"}})

    client = openai.OpenAI(
        api_key="test",
        base_url="http://test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(failing)),
        max_retries=0,
    )
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[user("hi")])
    assert mem.messages() == []


# -- nothing else in the request changes ----------------------------------------------------------


def _rich_chat_args() -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Answer in French."},
            user("What should I cook tonight?"),
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 7,
        "max_completion_tokens": 200,
        "metadata": {"trace": "abc"},
        "user": "end-user-1",
        "tools": [
            {
                "type": "function",
                "function": {"name": "pantry", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "auto",
        "extra_body": {"custom_flag": True},
    }


@pytest.mark.parametrize("stream", [False, True])
def test_only_the_memory_block_is_added_to_a_chat_request(
    stream: bool, fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    bare = FakeOpenAI()
    bare_client = bare.client()
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="chef")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("I cook vegan food")])
    mem.new_session()  # empty session: memory is recalled, nothing replayed

    args = _rich_chat_args()
    if stream:
        args["stream"] = True
    for target in (client, bare_client):
        result = target.chat.completions.create(**args)
        if stream:
            list(result)
    sent, expected = dict(fake.last), dict(bare.last)
    (block,) = blocks(sent)
    assert "vegan" in block
    sent["messages"] = [m for m in sent["messages"] if m["content"] != block]
    assert sent == expected
    assert "stream_options" not in sent
    # The block follows the caller's developer message.
    assert [m["role"] for m in fake.last["messages"]] == ["developer", "system", "user"]


def test_only_instructions_change_in_a_responses_request(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    bare = FakeOpenAI()
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="chef")
    client.responses.create(model="gpt-4o-mini", input="I cook vegan food")
    mem.new_session()
    args: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": [user("What should I cook tonight?")],
        "temperature": 0.2,
        "max_output_tokens": 100,
        "metadata": {"trace": "abc"},
        "store": False,
        "stream": True,
    }
    list(client.responses.create(**args))
    list(bare.client().responses.create(**args))
    sent, expected = dict(fake.last), dict(bare.last)
    assert "vegan" in sent.pop("instructions")
    assert sent == expected


def test_caller_arguments_are_not_mutated(fake: FakeOpenAI, make_memori: MakeMemori) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("I play chess")])
    messages = [user("What game do I play?")]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert messages == [user("What game do I play?")]
    assert len(blocks(fake.last)) == 1


# -- registration ---------------------------------------------------------------------------------


def test_register_wraps_the_instance_only_and_is_idempotent(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client, other = fake.client(), fake.client()
    mem = make_memori()
    assert mem.llm.register(client) is mem
    assert mem.llm.register(client) is mem  # again: no second layer
    mem.attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("once")])
    assert transcript(mem) == [("user", "once"), ("assistant", "echo: once")]

    other.chat.completions.create(model="gpt-4o-mini", messages=[user("not me")])
    assert len(mem.messages()) == 2
    assert "create" not in vars(other.chat.completions)
    # The class is untouched; the instance's method is wrapped once.
    assert not hasattr(type(client.chat.completions).create, "__memori_core_wrapped__")
    wrapped = client.chat.completions.create
    assert not hasattr(wrapped.__wrapped__, "__memori_core_wrapped__")


def test_raw_response_view_made_before_register_is_intercepted(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    client = fake.client()
    raw_create = client.chat.completions.with_raw_response  # cached by the SDK from here on
    assert raw_create is client.chat.completions.with_raw_response
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[user("I grow tomatoes")]
    )
    assert transcript(mem) == [("user", "I grow tomatoes"), ("assistant", "echo: I grow tomatoes")]
    mem.llm.unregister()
    client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[user("not recorded")]
    )
    assert fake.last["messages"] == [user("not recorded")]
    assert len(mem.messages()) == 2


def test_streaming_response_view_passes_through_untouched(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    """`with_streaming_response` and raw streams leave the body to the caller: memori cannot
    see the reply, so it neither injects nor records, and counts the call as passed through."""
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("I grow tomatoes")])
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[user("What do I grow?")]
    ) as response:
        assert json.loads(response.read())["choices"][0]["message"]["content"] == (
            "echo: What do I grow?"
        )
    assert fake.last["messages"] == [user("What do I grow?")]
    # A raw response of a stream: the caller parses the stream out of it, memori cannot.
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[user("And what else?")], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == (
        "echo: And what else?"
    )
    assert fake.last["messages"] == [user("And what else?")]
    assert len(mem.messages()) == 2
    assert mem.stats()["llm_passed_through"] == 2


def test_unregister_restores_the_client(fake: FakeOpenAI, make_memori: MakeMemori) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("recorded")])
    mem.llm.unregister()
    assert "create" not in vars(client.chat.completions)
    assert "with_options" not in vars(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("not recorded")])
    assert fake.last["messages"] == [user("not recorded")]
    assert [c for _, c in transcript(mem)] == ["recorded", "echo: recorded"]
    mem.llm.register(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("again")])
    assert [c for _, c in transcript(mem)][-2:] == ["again", "echo: again"]


def test_calls_before_attribution_pass_through(fake: FakeOpenAI, make_memori: MakeMemori) -> None:
    client = fake.client()
    mem = make_memori().llm.register(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("who am I?")])
    assert fake.last["messages"] == [user("who am I?")]
    assert mem.stats()["llm_calls"] == 0


def test_registered_once_used_from_other_threads(fake: FakeOpenAI, make_memori: MakeMemori) -> None:
    """A client registered once at start-up is used from worker threads that never registered."""
    client = fake.client()
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")
    worker = threading.Thread(
        target=client.chat.completions.create,
        kwargs={"model": "gpt-4o-mini", "messages": [user("from a worker")]},
    )
    worker.start()
    worker.join()
    assert transcript(mem) == [("user", "from a worker"), ("assistant", "echo: from a worker")]


def test_several_memori_without_one_in_this_thread_pass_through(
    fake: FakeOpenAI, make_memori: MakeMemori
) -> None:
    """With several `Memori` on one client, a thread that registered none gets no one's memory."""
    client = fake.client()
    mems = []
    for name in ("alice", "bob"):
        mem = make_memori()

        def bind(mem: Memori = mem, name: str = name) -> None:
            mem.llm.register(client).attribution(entity_id=name, process_id="p")

        t = threading.Thread(target=bind)
        t.start()
        t.join()
        mems.append(mem)
    client.chat.completions.create(model="gpt-4o-mini", messages=[user("who is this?")])
    assert fake.last["messages"] == [user("who is this?")]
    assert all(m.messages() == [] for m in mems)


async def test_cancelled_async_stream_still_records_the_turn(make_memori: MakeMemori) -> None:
    """A web server cancels the task when its client goes away mid-stream."""
    stalled = asyncio.Event()

    async def body() -> Any:
        for chunk in _chat_chunks("echo: partial answer", None)[:3]:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        stalled.set()
        await asyncio.Event().wait()  # the model stalls until the task is cancelled

    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    client = openai.AsyncOpenAI(
        api_key="test",
        base_url="http://test/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    mem = make_memori().llm.register(client)
    mem.attribution(entity_id="user-1", process_id="p")

    async def consume() -> None:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[user("Explain entropy")], stream=True
        )
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(stalled.wait(), 5)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(1000):  # recorded by a background task, without delaying the cancellation
        if len(await mem.amessages()) == 2:
            break
        await asyncio.sleep(0.01)
    stored = await mem.amessages()
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Explain entropy"),
        ("assistant", "echo: pa"),
    ]
    assert stored[1].message.payload == {"partial": True}
