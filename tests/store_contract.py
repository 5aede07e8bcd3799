"""The store contract: behaviour every storage engine must show through the public `Memori` API.

A test module for an engine subclasses `StoreContract` and provides a `database_url` fixture.
Entity ids are unique per test, so engines whose database outlives a test (a server) can share one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from memori_core import Memori, Message
from memori_core.errors import (
    InvalidMessageError,
    InvalidScopeError,
    ScopeError,
    UsageError,
)
from memori_core.testing import FailingEmbedder, HashEmbedder

MemoriFactory = Callable[..., Memori]


class StoreContract:
    @pytest.fixture
    def database_url(self) -> str:  # pragma: no cover - engines override it
        raise NotImplementedError

    @pytest.fixture
    def new(self, database_url: str) -> MemoriFactory:
        embedder = HashEmbedder()

        def factory(**kwargs: object) -> Memori:
            kwargs.setdefault("embedder", embedder)
            return Memori(database_url, **kwargs)  # type: ignore[arg-type]

        return factory

    @pytest.fixture
    def user(self) -> str:
        return f"user-{uuid.uuid4().hex[:8]}"

    # -- transcript -----------------------------------------------------------------------------

    def test_record_then_read_back_in_order(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user, "support")
        mem.record([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
        mem.record([{"role": "user", "content": "bye"}])
        assert [(m.role, m.content, m.seq) for m in mem.messages()] == [
            ("user", "hello", 1),
            ("assistant", "hi", 2),
            ("user", "bye", 3),
        ]
        assert mem.messages(limit=2)[0].content == "hi"

    def test_resent_history_is_stored_once(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        turn1 = [{"role": "user", "content": "I like tea"}, {"role": "assistant", "content": "ok"}]
        turn2 = [
            *turn1,
            {"role": "user", "content": "and cake"},
            {"role": "assistant", "content": "!"},
        ]
        assert len(mem.record(turn1)) == 2
        stored = mem.record(turn2)
        assert [m.content for m in stored] == ["and cake", "!"]
        assert [m.content for m in mem.messages()] == ["I like tea", "ok", "and cake", "!"]

    def test_a_repeated_single_message_is_a_new_turn(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        mem.record([{"role": "user", "content": "yes"}])
        mem.record([{"role": "user", "content": "yes"}])
        assert [m.content for m in mem.messages()] == ["yes", "yes"]

    def test_concurrent_writers_of_one_session_lose_nothing(
        self, new: MemoriFactory, user: str
    ) -> None:
        session = new().attribution(user, "p").new_session()

        def write(worker: int) -> None:
            mem = new().attribution(user, "p")
            mem.set_session(session)
            for i in range(8):
                mem.append([{"role": "user", "content": f"w{worker} m{i}"}])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        stored = new().attribution(user, "p").messages(session)
        assert sorted(m.seq for m in stored) == list(range(1, 33))
        assert len({m.content for m in stored}) == 32

    def test_append_never_skips(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        batch = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        mem.append(batch)
        mem.append(batch)
        assert [m.content for m in mem.messages()] == ["a", "b", "a", "b"]

    def test_payload_and_tool_fields_round_trip(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user, "agent")
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        payload = {"lc": {"type": "ai", "blocks": [{"type": "text", "text": "x"}]}, "n": 1.5}
        mem.append(
            [
                Message(role="assistant", content="", tool_calls=[call], payload=payload),
                Message(role="tool", content="42", tool_call_id="c1", name="f"),
            ]
        )
        first, second = mem.messages()
        assert first.message.tool_calls == [call]
        assert first.message.payload == payload
        assert (second.message.tool_call_id, second.message.name) == ("c1", "f")

    def test_injected_memory_block_is_never_stored(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        mem.record([{"role": "user", "content": "I prefer trains to planes."}])
        block = mem.context("trains")
        assert block
        mem.record(
            [
                {"role": "system", "content": block},
                {"role": "user", "content": "book me something"},
            ]
        )
        assert all("memori-memory" not in m.content for m in mem.messages())

    def test_record_at_sets_created_at(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
        (stored,) = mem.record([{"role": "user", "content": "old news"}], at=when)
        assert stored.created_at == when
        (recalled,) = mem.recall("old news")
        assert recalled.created_at == when

    # -- sessions -------------------------------------------------------------------------------

    def test_sessions_are_threads(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user, "chat")
        mem.record([{"role": "user", "content": "Tokyo trip"}])
        tokyo = mem.config.session_id
        paris = mem.new_session()
        assert paris != tokyo
        mem.record([{"role": "user", "content": "Paris trip"}])
        assert [m.content for m in mem.messages()] == ["Paris trip"]
        mem.set_session(tokyo)
        assert [m.content for m in mem.messages()] == ["Tokyo trip"]
        assert {s.id for s in mem.sessions()} == {str(tokyo), str(paris)}
        assert sum(s.message_count for s in mem.sessions()) == 2

    def test_another_entitys_session_is_refused(self, new: MemoriFactory, user: str) -> None:
        alice = new().attribution(user, "chat")
        alice.record([{"role": "user", "content": "secret"}])
        bob = new().attribution(user + "-bob", "chat")
        with pytest.raises(ScopeError):
            bob.set_session(alice.config.session_id)
        with pytest.raises(ScopeError):
            bob.record([{"role": "user", "content": "x"}], session_id=alice.config.session_id)
        assert bob.messages(alice.config.session_id) == []
        other_agent = new().attribution(user, "sales")
        with pytest.raises(ScopeError):
            other_agent.set_session(alice.config.session_id)

    def test_switching_entity_starts_a_new_session(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user, "chat")
        first = mem.config.session_id
        mem.attribution(user, "chat")
        assert mem.config.session_id == first
        mem.attribution(user + "-2", "chat")
        assert mem.config.session_id != first

    def test_clear_session(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        mem.record([{"role": "user", "content": "I love jazz."}])
        assert mem.clear_session() == 1
        assert mem.messages() == []
        assert mem.recall("jazz") == []

    # -- recall ---------------------------------------------------------------------------------

    def test_recall_finds_the_relevant_turn_with_score_parts(
        self, new: MemoriFactory, user: str
    ) -> None:
        mem = new().attribution(user, "chat")
        mem.record(
            [
                {"role": "user", "content": "I'm planning a trip to Tokyo in April."},
                {"role": "assistant", "content": "Cherry blossom season!"},
                {"role": "user", "content": "Also, my printer is broken."},
            ]
        )
        mem.flush()
        top = mem.recall("Where am I travelling? Tokyo?")[0]
        assert "Tokyo" in top.text
        assert top.parts.lexical > 0 and top.parts.dense > 0
        assert top.score == pytest.approx(
            top.parts.lexical + top.parts.dense + top.parts.recency + top.parts.salience
        )
        assert top.source_message_ids and top.session_id == str(mem.config.session_id)

    @pytest.mark.parametrize("shared", [False, True])
    def test_memories_embedded_after_a_recall_are_scored_by_meaning_in_the_next(
        self, new: MemoriFactory, user: str, shared: bool
    ) -> None:
        """Recall starts scoring the vectors it cached earlier before it reads the newer ones;
        those are scored too (also in a scope sharing the entity-wide memories)."""
        mem = new(share_across_processes=shared).attribution(user, "chat")
        everyone = new().attribution(user)
        mem.record([{"role": "user", "content": "I drink green tea every morning."}])
        everyone.record([{"role": "user", "content": "I live in Lisbon."}])
        mem.flush()
        everyone.flush()
        assert "tea" in mem.recall("green tea")[0].text  # the scope's vectors are cached now
        mem.record([{"role": "user", "content": "My dog is called Rex."}])
        everyone.record([{"role": "user", "content": "My bicycle is a red Brompton."}])
        mem.flush()
        everyone.flush()
        found = {r.text: r for r in mem.recall("dog Rex bicycle Brompton tea", limit=10)}
        assert found["My dog is called Rex."].parts.dense > 0
        assert found["I drink green tea every morning."].parts.dense > 0
        assert ("My bicycle is a red Brompton." in found) is shared
        if shared:
            assert found["My bicycle is a red Brompton."].parts.dense > 0

    def test_recall_is_scoped_by_entity_and_process(self, new: MemoriFactory, user: str) -> None:
        support = new().attribution(user, "support")
        support.record([{"role": "user", "content": "My router model is AX3000."}])
        sales = new().attribution(user, "sales")
        sales.record([{"role": "user", "content": "I want the fibre plan."}])
        stranger = new().attribution(user + "-x", "support")
        for mem in (support, sales, stranger):
            mem.flush()
        assert all("fibre" not in r.text for r in support.recall("fibre plan router AX3000"))
        assert all("AX3000" not in r.text for r in sales.recall("fibre plan router AX3000"))
        assert stranger.recall("fibre plan router AX3000") == []

    def test_entity_wide_memories_are_shared_only_when_allowed(
        self, new: MemoriFactory, user: str
    ) -> None:
        everyone = new().attribution(user)  # no process: entity-wide
        everyone.record([{"role": "user", "content": "My name is Ada Lovelace."}])
        isolated = new().attribution(user, "support")
        shared = new(share_across_processes=True).attribution(user, "support")
        assert isolated.recall("Ada Lovelace name") == []
        assert any("Ada" in r.text for r in shared.recall("Ada Lovelace name"))

    def test_facts_are_deduplicated_and_superseded(self, new: MemoriFactory, user: str) -> None:
        mem = new().attribution(user)
        mem.record([{"role": "user", "content": "I prefer email notifications."}])
        mem.record([{"role": "user", "content": "I prefer email notifications."}])
        prefs = [r for r in mem.recall("email notifications", limit=10) if r.kind == "preference"]
        assert len(prefs) == 1 and prefs[0].times_seen == 2
        mem.record([{"role": "user", "content": "My email is old@example.com."}])
        mem.record([{"role": "user", "content": "My email is new@example.com."}])
        facts = [r.text for r in mem.recall("email example.com", limit=10) if r.kind == "fact"]
        assert facts == ["My email is new@example.com."]

    def test_lexical_recall_without_an_embedder(self, new: MemoriFactory, user: str) -> None:
        mem = new(embedder=None).attribution(user)
        mem.record([{"role": "user", "content": "Remember the code word: pineapple."}])
        (top, *_) = mem.recall("what is the code word")
        assert "pineapple" in top.text and top.parts.dense == 0

    def test_ids_are_data_not_syntax(self, new: MemoriFactory, user: str) -> None:
        hostile = user + "'; DROP TABLE memori_messages; --\" OR 1=1 entity_key:*"
        mem = new().attribution(hostile, 'p" OR "1"="1')
        mem.record([{"role": "user", "content": 'NEAR("a" "b") AND * OR content: "x'}])
        assert mem.recall('NEAR("a" "b") AND * OR content: "x')
        assert new().attribution(user, "p").recall("content") == []
        assert len(mem.messages()) == 1

    def test_context_block_respects_the_token_budget(self, new: MemoriFactory, user: str) -> None:
        mem = new(embedder=None).attribution(user)
        mem.record(
            [{"role": "user", "content": f"fact number {i} about bananas"} for i in range(30)]
        )
        block = mem.context("bananas", limit=30, token_budget=60)
        assert block.startswith("<memori-memory>") and block.endswith("</memori-memory>")
        assert len(block) / 4 <= 60

    # -- deletion -------------------------------------------------------------------------------

    def test_forget_deletes_everything_of_one_entity(self, new: MemoriFactory, user: str) -> None:
        gone = new().attribution(user, "a")
        gone.record([{"role": "user", "content": "I live in Oslo."}])
        gone.new_session()
        gone.record([{"role": "user", "content": "I like skiing."}])
        gone.flush()
        kept = new().attribution(user + "-kept", "a")
        kept.record([{"role": "user", "content": "I live in Oslo."}])
        report = new().forget(user)
        assert (report.sessions, report.messages) == (2, 2)
        assert report.memories >= 2 and report.vectors >= 2
        again = new().attribution(user, "a")
        assert again.sessions() == [] and again.recall("Oslo skiing") == []
        assert kept.recall("Oslo")

    def test_a_forgotten_memory_never_returns_under_a_reused_id(
        self, new: MemoriFactory, user: str
    ) -> None:
        # SQLite hands a deleted highest rowid to the next insert; rows recalled before are
        # cached in this process and must not be served for the new row that took their id.
        gone = new().attribution(user, "a")
        gone.record([{"role": "user", "content": "My locker code is 4417."}])
        assert [r.text for r in gone.recall("locker code")] == ["My locker code is 4417."]
        new().forget(user)
        other = new().attribution(user + "-next", "a")
        other.record([{"role": "user", "content": "I bought a locker for my bike."}])
        assert [r.text for r in other.recall("locker")] == ["I bought a locker for my bike."]
        assert new().attribution(user, "a").recall("locker code") == []

    # -- bad input and failure -------------------------------------------------------------------

    def test_bad_input_raises_typed_errors_and_writes_nothing(
        self, new: MemoriFactory, user: str
    ) -> None:
        mem = new().attribution(user)
        with pytest.raises(InvalidMessageError):
            mem.record([{"role": "user", "content": "ok"}, {"role": "user", "content": 42}])
        with pytest.raises(InvalidMessageError):
            mem.record([{"role": "wizard", "content": "x"}])
        with pytest.raises(InvalidMessageError):
            mem.recall(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidScopeError):
            mem.attribution("")
        with pytest.raises(InvalidScopeError):
            mem.set_session("not-a-uuid")
        with pytest.raises(UsageError):
            new().record([{"role": "user", "content": "no attribution yet"}])
        assert mem.messages() == []

    def test_failing_embedder_loses_nothing_and_recovers(
        self, new: MemoriFactory, user: str
    ) -> None:
        embedder = FailingEmbedder()
        mem = new(embedder=embedder).attribution(user)
        mem.record([{"role": "user", "content": "My cat is called Miso."}])
        mem.flush(timeout=5)
        assert [m.content for m in mem.messages()] == ["My cat is called Miso."]
        assert mem.recall("Miso")[0].parts.dense == 0  # lexical still works
        assert mem.stats()["embedding_failures"] >= 1
        embedder.fail = False
        mem.flush(timeout=5)
        assert mem.recall("cat called Miso")[0].parts.dense > 0

    def test_failing_extractor_keeps_the_turn(self, new: MemoriFactory, user: str) -> None:
        class Broken:
            def extract(self, messages: object) -> list[object]:
                raise RuntimeError("extractor down")

        mem = new(extractor=Broken()).attribution(user)
        mem.record([{"role": "user", "content": "I prefer tea. Also green tea."}])
        assert [m.content for m in mem.messages()] == ["I prefer tea. Also green tea."]
        assert mem.stats()["extraction_failures"] == 1
        assert [r.kind for r in mem.recall("tea")] == ["event"]
        # Later (any instance, any process) the backlog is extracted once it works again.
        healed = new().attribution(user)
        healed.flush()
        assert {r.kind for r in healed.recall("prefer tea", limit=5)} == {"event", "preference"}
        healed.flush()
        assert [r.kind for r in healed.recall("prefer tea", limit=5)].count("preference") == 1

    # -- async ----------------------------------------------------------------------------------

    async def test_async_twins_match_sync(self, new: MemoriFactory, user: str) -> None:
        sync_mem = new().attribution(user + "-s", "p")
        async_mem = new().attribution(user + "-a", "p")
        turns = [
            {"role": "user", "content": "I'm allergic to peanuts."},
            {"role": "assistant", "content": "Noted."},
        ]
        start = datetime(2024, 1, 1, tzinfo=UTC)
        sync_mem.record(turns, at=start)
        await async_mem.arecord(turns, at=start)
        sync_mem.flush()
        await async_mem.aflush()
        strip = lambda ms: [(m.role, m.content, m.seq) for m in ms]  # noqa: E731
        assert strip(sync_mem.messages()) == strip(await async_mem.amessages())
        s = [(r.text, r.kind, round(r.score, 6)) for r in sync_mem.recall("peanuts allergy")]
        a = [
            (r.text, r.kind, round(r.score, 6)) for r in await async_mem.arecall("peanuts allergy")
        ]
        assert s == a and s
        assert sync_mem.context("peanuts") == await async_mem.acontext("peanuts")
        assert [x.message_count for x in sync_mem.sessions()] == [
            x.message_count for x in await async_mem.asessions()
        ]
        assert await async_mem.aclear_session() == sync_mem.clear_session() == 2
        sync_mem.record(turns, at=start + timedelta(days=1))
        assert (await async_mem.aforget(user + "-s")).messages == 2
