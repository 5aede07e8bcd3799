"""MemoriRetriever: recalled memories as Documents that say why they were recalled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage

from memori_core import Memori
from memori_langchain import MemoriChatHistory, MemoriRetriever

MakeMemori = Callable[..., Memori]


def _remember(make_memori: MakeMemori, process_id: str, *texts: str) -> MemoriChatHistory:
    history = MemoriChatHistory("ana", process_id, memori=make_memori())
    for text in texts:
        history.add_messages([HumanMessage(text), AIMessage("Noted.")])
    return history


def test_returns_the_relevant_memory_with_its_score_parts(make_memori: MakeMemori) -> None:
    history = _remember(
        make_memori,
        "travel",
        "I live in Lisbon.",
        "My favourite food is grilled sardines.",
        "I am planning a trip to Kyoto in April.",
    )
    retriever = MemoriRetriever("ana", "travel", k=2, memori=make_memori())

    docs = retriever.invoke("grilled sardines food")

    assert 1 <= len(docs) <= 2
    top = docs[0]
    assert isinstance(top, Document)
    assert top.page_content == "My favourite food is grilled sardines."
    meta = top.metadata
    assert set(meta["parts"]) == {"lexical", "dense", "recency", "salience"}
    assert meta["parts"]["lexical"] > 0
    assert meta["score"] >= docs[-1].metadata["score"]
    assert meta["kind"] in {"fact", "preference", "event"}
    assert meta["session_id"] == history.session_id
    assert meta["process_id"] == "travel"
    assert isinstance(meta["id"], int) and top.id == str(meta["id"])
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None


def test_k_limits_the_number_of_documents(make_memori: MakeMemori) -> None:
    _remember(make_memori, "travel", "I like trains.", "I like boats.", "I like planes.")

    docs = MemoriRetriever("ana", "travel", k=1, memori=make_memori()).invoke("I like")

    assert len(docs) == 1


def test_another_agent_does_not_recall_this_agents_memories(make_memori: MakeMemori) -> None:
    _remember(make_memori, "travel", "My passport expires in May.")

    other = MemoriRetriever("ana", "billing", memori=make_memori())
    same = MemoriRetriever("ana", "travel", memori=make_memori())

    assert other.invoke("passport expires") == []
    assert same.invoke("passport expires")[0].page_content == "My passport expires in May."


async def test_async_returns_what_sync_returns(make_memori: MakeMemori) -> None:
    _remember(make_memori, "travel", "I live in Lisbon.", "I work as a nurse.")
    retriever = MemoriRetriever("ana", "travel", k=3, memori=make_memori())
    retriever.memori.flush()  # embeddings are computed in the background; let them settle

    sync_docs = retriever.invoke("where do I work")
    async_docs = await retriever.ainvoke("where do I work")

    assert [d.page_content for d in async_docs] == [d.page_content for d in sync_docs]
    assert [d.metadata["id"] for d in async_docs] == [d.metadata["id"] for d in sync_docs]
    assert "_aget_relevant_documents" in vars(MemoriRetriever)
