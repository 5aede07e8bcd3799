"""MemoriStore: a LangGraph BaseStore whose namespaces are memori scopes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from langgraph.store.base import GetOp, InvalidNamespaceError, PutOp, SearchOp

from memori_core import Memori
from memori_langchain.store import MemoriStore

MakeMemori = Callable[..., Memori]

PREFS = ("ana", "travel", "prefs")
NOTES = ("ana", "travel", "notes")


@pytest.fixture
def store(make_memori: MakeMemori) -> MemoriStore:
    return MemoriStore(memori=make_memori())


def test_put_get_update_delete(store: MemoriStore) -> None:
    store.put(PREFS, "seat", {"text": "I prefer aisle seats", "rank": 1})

    item = store.get(PREFS, "seat")
    assert item is not None
    assert (item.namespace, item.key) == (PREFS, "seat")
    assert item.value == {"text": "I prefer aisle seats", "rank": 1}
    created = item.created_at

    store.put(PREFS, "seat", {"text": "I prefer window seats", "rank": 2})
    updated = store.get(PREFS, "seat")
    assert updated is not None
    assert updated.value == {"text": "I prefer window seats", "rank": 2}
    assert updated.created_at == created
    assert updated.updated_at > created

    store.delete(PREFS, "seat")
    assert store.get(PREFS, "seat") is None
    assert store.get(PREFS, "never-stored") is None


def test_search_with_a_query_uses_recall(store: MemoriStore) -> None:
    store.put(PREFS, "food", {"text": "I love grilled sardines"})
    store.put(PREFS, "seat", {"text": "I prefer aisle seats"})
    store.put(NOTES, "visa", {"text": "Visa for Japan is not needed"})

    found = store.search(("ana", "travel"), query="grilled sardines")

    assert found[0].key == "food"
    assert found[0].namespace == PREFS
    assert found[0].score is not None and found[0].score > 0
    assert [i.score for i in found] == sorted((i.score or 0.0 for i in found), reverse=True)
    # A narrower prefix only returns that namespace.
    assert {i.namespace for i in store.search(NOTES, query="sardines Japan visa")} == {NOTES}


def test_replaced_and_deleted_text_is_no_longer_recalled(
    store: MemoriStore, make_memori: MakeMemori
) -> None:
    store.put(PREFS, "food", {"text": "I love grilled sardines"})
    store.put(PREFS, "food", {"text": "I love ramen"})
    store.put(PREFS, "drink", {"text": "I love port wine"})
    store.delete(PREFS, "drink")

    assert [i.value for i in store.search(PREFS, query="sardines ramen port wine")] == [
        {"text": "I love ramen"}
    ]
    recalled = [r.text for r in make_memori().scoped("ana", "travel").recall("sardines port wine")]
    assert not any("sardines" in t or "port wine" in t for t in recalled)


def test_items_are_memories_of_that_user_and_agent(
    store: MemoriStore, make_memori: MakeMemori
) -> None:
    store.put(PREFS, "home", {"text": "I live in Lisbon"})

    mem = make_memori()
    assert mem.scoped("ana", "travel").recall("where do I live")[0].text == "I live in Lisbon"
    assert mem.scoped("ana", "billing").recall("where do I live") == []
    assert mem.scoped("bob", "travel").recall("where do I live") == []


def test_namespaces_of_different_scopes_are_isolated(store: MemoriStore) -> None:
    store.put(("ana", "travel", "prefs"), "food", {"text": "sardines"})
    store.put(("ana", "billing", "prefs"), "food", {"text": "card ending 42"})
    store.put(("bob", "travel", "prefs"), "food", {"text": "pizza"})

    assert [i.value["text"] for i in store.search(("ana", "travel"))] == ["sardines"]
    assert [i.value["text"] for i in store.search(("ana", "billing"))] == ["card ending 42"]
    assert [i.value["text"] for i in store.search(("bob", "travel"), query="sardines")] in (
        [],
        ["pizza"],
    )


def test_search_without_query_lists_newest_first_with_filter_and_paging(
    store: MemoriStore,
) -> None:
    for n in range(4):
        store.put(PREFS, f"k{n}", {"text": f"note {n}", "n": n, "meta": {"kind": n % 2}})

    assert [i.key for i in store.search(PREFS)] == ["k3", "k2", "k1", "k0"]
    assert [i.key for i in store.search(PREFS, limit=2, offset=1)] == ["k2", "k1"]
    assert [i.key for i in store.search(PREFS, filter={"n": {"$gte": 2}})] == ["k3", "k2"]
    assert [i.key for i in store.search(PREFS, filter={"meta.kind": 0})] == ["k2", "k0"]
    assert [i.key for i in store.search(PREFS, filter={"n": {"$ne": 1}, "meta.kind": 1})] == ["k3"]


def test_index_false_is_stored_but_not_searchable(store: MemoriStore) -> None:
    store.put(PREFS, "secret", {"text": "door code 4711"}, index=False)
    store.put(PREFS, "card", {"title": "Loyalty", "number": "TAP 99"}, index=["number"])

    assert store.get(PREFS, "secret") is not None
    assert all(i.key != "secret" for i in store.search(PREFS, query="door code 4711"))
    assert store.search(PREFS, query="TAP 99")[0].key == "card"


def test_list_namespaces(store: MemoriStore) -> None:
    store.put(("ana", "travel", "prefs"), "a", {"text": "x"})
    store.put(("ana", "travel", "notes", "2024"), "b", {"text": "y"})
    store.put(("ana", "billing", "prefs"), "c", {"text": "z"})

    assert store.list_namespaces(prefix=("ana", "travel")) == [
        ("ana", "travel", "notes", "2024"),
        ("ana", "travel", "prefs"),
    ]
    assert store.list_namespaces(prefix=("ana", "travel"), max_depth=3) == [
        ("ana", "travel", "notes"),
        ("ana", "travel", "prefs"),
    ]
    assert store.list_namespaces(prefix=("ana", "travel"), suffix=("prefs",)) == [
        ("ana", "travel", "prefs")
    ]
    with pytest.raises(InvalidNamespaceError):
        store.list_namespaces(prefix=("ana",))


def test_namespace_must_name_a_scope(store: MemoriStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put(("ana",), "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError):
        store.search(("ana",), query="x")


def test_fixed_process_id(make_memori: MakeMemori) -> None:
    store = MemoriStore(memori=make_memori(), process_id="travel")
    store.put(("ana", "prefs"), "seat", {"text": "I prefer aisle seats"})

    assert make_memori().scoped("ana", "travel").recall("aisle seats")[0].text == (
        "I prefer aisle seats"
    )
    assert store.list_namespaces(prefix=("ana",)) == [("ana", "prefs")]


def test_forget_removes_the_users_items(store: MemoriStore, make_memori: MakeMemori) -> None:
    store.put(PREFS, "home", {"text": "I live in Lisbon"})

    make_memori().forget("ana")

    assert store.get(PREFS, "home") is None


def test_batch_returns_results_in_order(store: MemoriStore) -> None:
    results = store.batch(
        [
            PutOp(PREFS, "a", {"text": "alpha"}),
            GetOp(PREFS, "a"),
            GetOp(PREFS, "missing"),
            SearchOp(("ana", "travel")),
        ]
    )

    assert results[0] is None
    assert results[1] is not None and results[1].value == {"text": "alpha"}  # type: ignore[union-attr]
    assert results[2] is None
    assert [i.key for i in results[3]] == ["a"]  # type: ignore[union-attr]


async def test_async_matches_sync(make_memori: MakeMemori) -> None:
    sync_store = MemoriStore(memori=make_memori())
    async_store = MemoriStore(memori=make_memori())
    sync_ns = ("ana", "sync", "prefs")
    async_ns = ("ana", "async", "prefs")

    for key, text in [("food", "I love ramen"), ("seat", "I prefer aisle seats")]:
        sync_store.put(sync_ns, key, {"text": text})
        await async_store.aput(async_ns, key, {"text": text})
    sync_store.delete(sync_ns, "seat")
    await async_store.adelete(async_ns, "seat")

    sync_item = sync_store.get(sync_ns, "food")
    async_item = await async_store.aget(async_ns, "food")
    assert sync_item is not None and async_item is not None
    assert sync_item.value == async_item.value
    assert [i.key for i in sync_store.search(sync_ns, query="ramen")] == [
        i.key for i in await async_store.asearch(async_ns, query="ramen")
    ]
    assert await async_store.alist_namespaces(prefix=("ana", "async")) == [async_ns]
