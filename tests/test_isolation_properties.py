"""Property: no read under one scope returns another scope's data.

Ids are drawn from small pools, so generated scopes often share their entity or their process
(the cases where string-joined keys or a forgotten filter would leak).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memori_core import Memori
from memori_core.testing import HashEmbedder

ENTITIES = ["alice", "bob", "alice:bob", "tenant:alice", "ALICE"]
PROCESSES = [None, "support", "sales", "support:sales"]
WORDS = ["tokyo", "paris", "router", "invoice", "refund", "email", "coffee", "plan"]

writes = st.lists(
    st.tuples(
        st.sampled_from(ENTITIES),
        st.sampled_from(PROCESSES),
        st.integers(min_value=0, max_value=1),  # which of two sessions
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(writes=writes, share=st.booleans(), query=st.lists(st.sampled_from(WORDS), min_size=1))
def test_reads_never_cross_scopes(
    writes: list[tuple[str, str | None, int, list[str]]], share: bool, query: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'iso.db'}"
        embedder = HashEmbedder()
        sessions: dict[tuple[str, str | None, int], str] = {}
        owner_of_text: dict[str, tuple[str, str | None]] = {}
        for n, (entity, process, which, words) in enumerate(writes):
            mem = Memori(url, embedder=embedder).attribution(entity, process)
            key = (entity, process, which)
            if key in sessions:
                mem.set_session(sessions[key])
            else:
                sessions[key] = str(mem.config.session_id)
            content = f"{' '.join(words)} #{n}"
            owner_of_text[content] = (entity, process)
            mem.record([{"role": "user", "content": content}])
        Memori(url, embedder=embedder).flush()

        for entity in ENTITIES:
            for process in PROCESSES:
                mem = Memori(url, embedder=embedder, share_across_processes=share)
                mem.attribution(entity, process)
                allowed = {(entity, process)}
                if share:
                    allowed.add((entity, None))
                for recalled in mem.recall(" ".join(query), limit=50):
                    assert owner_of_text[recalled.text] in allowed
                    assert recalled.process_id in {p for _, p in allowed}
                for info in mem.sessions():
                    assert (info.entity_id, info.process_id) == (entity, process)
                for (e, p, _), session_id in sessions.items():
                    for stored in mem.messages(session_id):
                        assert (e, p) == (entity, process)
                        assert owner_of_text[stored.content] == (entity, process)
