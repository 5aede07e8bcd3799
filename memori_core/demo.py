"""The offline demo: two users, a support agent and a sales agent, and what each recalls."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

__all__ = ["run_demo"]

_CONVERSATIONS = [
    (
        "alice",
        "support-agent",
        [
            ("user", "Hi, my router keeps dropping the connection every evening."),
            ("assistant", "Sorry to hear that. Which model is it?"),
            ("user", "It's the AX3000. I prefer email notifications, not phone calls."),
            ("assistant", "Noted: we'll email you. A firmware update should fix the drops."),
        ],
    ),
    (
        "alice",
        "sales-agent",
        [
            ("user", "I'm planning to upgrade to the fibre plan next month."),
            ("assistant", "Great choice. The 1 Gbit plan is on offer until December."),
            ("user", "My budget is about 40 euros a month."),
        ],
    ),
    (
        "bob",
        "support-agent",
        [
            ("user", "My name is Bob and my TV box shows error E42 after updates."),
            ("assistant", "E42 means the cache is full; a factory reset clears it."),
            ("user", "I live in Lyon, if you need to send a technician."),
        ],
    ),
]

_QUESTIONS = [
    ("alice", "support-agent", "How should we contact this customer about the router?"),
    ("alice", "sales-agent", "What plan is the customer interested in, and what can they pay?"),
    ("alice", "sales-agent", "Which router model does she have?"),
    ("bob", "support-agent", "What was the error on the TV box?"),
    ("bob", "support-agent", "How should we contact this customer about the router?"),
]


def run_demo(*, database_url: str | None = None, lexical_only: bool = False, out: TextIO) -> None:
    """Record a few conversations and show, per agent, what is recalled and why."""
    from memori_core.memori import Memori

    if database_url is None:
        folder = Path(tempfile.mkdtemp(prefix="memori-demo-"))
        database_url = f"sqlite:///{folder / 'demo.db'}"
    embedder = None if lexical_only else "default"
    out.write(f"memori-core demo (offline) - database {database_url}\n")
    out.write(
        "embedder: "
        + ("none, lexical recall" if lexical_only else "all-MiniLM-L6-v2 int8")
        + "\n\n"
    )

    started = datetime.now(UTC) - timedelta(days=3)
    for index, (entity, process, turns) in enumerate(_CONVERSATIONS):
        mem = Memori(database_url, embedder=embedder).attribution(entity, process)
        mem.record(
            [{"role": role, "content": text} for role, text in turns],
            at=started + timedelta(days=index),
        )
        out.write(f"recorded {len(turns)} turns: user={entity} agent={process}\n")
    Memori(database_url, embedder=embedder).flush()

    for entity, process, question in _QUESTIONS:
        mem = Memori(database_url, embedder=embedder).attribution(entity, process)
        begin = time.perf_counter()
        recalled = mem.recall(question, limit=3)
        elapsed = (time.perf_counter() - begin) * 1000
        out.write(f"\n[{process} -> {entity}] {question}  ({elapsed:.1f} ms)\n")
        if not recalled:
            out.write("  (nothing recalled: this agent has no relevant memory of this user)\n")
        for r in recalled:
            p = r.parts
            out.write(
                f"  {r.score:.3f} [{r.kind}] {r.text}\n"
                f"        why: lexical={p.lexical:.3f} dense={p.dense:.3f} "
                f"recency={p.recency:.3f} salience={p.salience:.3f}\n"
            )
    out.write(
        "\nNote how the sales agent cannot see alice's router (a support memory), and bob's\n"
        "support agent sees nothing of alice: recall is scoped by entity and process.\n"
    )
