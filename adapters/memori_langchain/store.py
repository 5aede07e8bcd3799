"""`MemoriStore`: a LangGraph `BaseStore` kept in memori-core, searched with Memori recall.

```python
from memori_langchain.store import MemoriStore

store = MemoriStore(memori=mem)       # or MemoriStore(database_url=...)
store.put(("user-123", "support-chat", "prefs"), "food", {"text": "I love ramen"})
store.get(("user-123", "support-chat", "prefs"), "food").value   # {'text': 'I love ramen'}
store.search(("user-123", "support-chat"), query="what does the user eat?")
agent = create_agent(model, tools, store=store)                # runtime.store in tools
```

Namespaces map onto scopes: a namespace is `(entity_id, process_id, *path)`, so the first two
labels are the user and the agent, and items are part of that user's memory (recalled by the
OpenAI path and the other adapters for the same user and agent, deleted by
`Memori.forget(entity_id)`). With `MemoriStore(process_id="support-chat")` the namespace is
`(entity_id, *path)` and every item belongs to that agent.

How items are kept (the core has no key/value table): each item is one memori session of its
scope, whose id is derived from (namespace, key), holding a single message. The message's
`content` is the item's searchable text and its `payload` holds namespace, key, value and
creation time. `put` replaces that message (`clear_session` + `append`, so the old text and
the memories made from it are gone), `delete` clears it. A replaced item is briefly absent
between those two writes.

- `search(prefix, query=...)` returns the items `Memori.recall` finds for the query (lexical +
  dense + recency + salience), best first, with their recall `score`.
- `search(prefix)` without a query lists items, most recently updated first.
- `search` and `list_namespaces` read every item of one scope, so their prefix must name the
  scope (at least `(entity_id, process_id)`, or `(entity_id,)` with a fixed `process_id`).
- The searchable text is every string in the value (or the fields given by `index=[...]`;
  nothing with `index=False`). Filters support exact values and `$eq`, `$ne`, `$gt`, `$gte`,
  `$lt`, `$lte` on top-level or dotted keys. TTLs are not supported.
- The async methods run the same implementation in a worker thread, like the core's async
  twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
    )
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "memori_langchain.store needs langgraph; install it with "
        '`pip install "memori-core[langgraph]"`'
    ) from e

from memori_core import Memori, Message, StoredMessage
from memori_core.errors import InvalidScopeError, UsageError

__all__ = ["MemoriStore"]

_PAYLOAD_KEY = "memori_langchain.store"
# Fixed namespace for item session ids; never change it, stored items are found through it.
_ITEM_NAMESPACE = uuid.UUID("0b7c9d2e-31a4-4f0e-8f64-52d3c1a9e7b5")
_RECALL_FLOOR = 50
_FROM_NAMESPACE: Any = object()


@dataclass(frozen=True, slots=True)
class _Scope:
    entity_id: str
    process_id: str | None


@dataclass(frozen=True, slots=True)
class _Stored:
    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def item(self) -> Item:
        return Item(
            value=self.value,
            key=self.key,
            namespace=self.namespace,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def search_item(self, score: float | None) -> SearchItem:
        return SearchItem(
            self.namespace, self.key, self.value, self.created_at, self.updated_at, score
        )


class MemoriStore(BaseStore):
    """A LangGraph `BaseStore` whose namespaces are memori scopes (see the module docs).

    Args:
        memori: the `Memori` whose database, embedder and settings are used (it is not
            re-attributed; the store works on `memori.scoped(...)` copies).
        database_url: open `Memori(database_url)` instead.
        process_id: fix the agent for every item; namespaces are then `(entity_id, *path)`.
            By default namespaces are `(entity_id, process_id, *path)`.
    """

    __slots__ = ("_base", "_fixed_process")

    def __init__(
        self,
        *,
        memori: Memori | None = None,
        database_url: str | None = None,
        process_id: str | None = _FROM_NAMESPACE,
    ) -> None:
        if memori is not None and database_url is not None:
            raise UsageError("pass either memori= or database_url=, not both")
        self._base = memori if memori is not None else Memori(database_url)
        self._fixed_process: str | None = process_id

    # -- namespaces and scopes --------------------------------------------------------------

    @property
    def _scope_labels(self) -> int:
        return 1 if self._fixed_process is not _FROM_NAMESPACE else 2

    def _scope_of(self, namespace: tuple[str, ...]) -> _Scope:
        if len(namespace) < self._scope_labels:
            layout = (
                "(entity_id, *path)"
                if self._scope_labels == 1
                else "(entity_id, process_id, *path)"
            )
            raise InvalidNamespaceError(
                f"namespace {namespace!r} does not name a memori scope; "
                f"MemoriStore namespaces are {layout}"
            )
        if self._scope_labels == 1:
            return _Scope(namespace[0], self._fixed_process)
        return _Scope(namespace[0], namespace[1])

    def _memori(self, scope: _Scope) -> Memori:
        # `scoped` is cheap (no I/O), so a fresh copy per operation keeps the store stateless
        # and safe to share between threads.
        try:
            return self._base.scoped(scope.entity_id, scope.process_id)
        except InvalidScopeError as e:
            raise InvalidNamespaceError(str(e)) from e

    @staticmethod
    def _session(namespace: tuple[str, ...], key: str) -> str:
        return str(uuid.uuid5(_ITEM_NAMESPACE, json.dumps([list(namespace), key])))

    # -- reading items ----------------------------------------------------------------------

    @staticmethod
    def _decode(stored: StoredMessage) -> _Stored | None:
        payload = stored.message.payload
        if not isinstance(payload, dict) or not isinstance(payload.get(_PAYLOAD_KEY), dict):
            return None
        data = payload[_PAYLOAD_KEY]
        return _Stored(
            namespace=tuple(data["namespace"]),
            key=data["key"],
            value=data["value"],
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=stored.created_at,
        )

    def _read(self, namespace: tuple[str, ...], key: str) -> _Stored | None:
        mem = self._memori(self._scope_of(namespace))
        last = mem.messages(self._session(namespace, key), limit=1)
        return self._decode(last[0]) if last else None

    def _scan(self, scope: _Scope) -> dict[str, _Stored]:
        """Every item of `scope`, by session id, most recently updated first."""
        mem = self._memori(scope)
        found: dict[str, _Stored] = {}
        for info in mem.sessions():
            if info.message_count == 0:
                continue
            last = mem.messages(info.id, limit=1)
            item = self._decode(last[0]) if last else None
            if item is not None:
                found[info.id] = item
        return found

    # -- operations -------------------------------------------------------------------------

    def _get(self, op: GetOp) -> Item | None:
        found = self._read(op.namespace, op.key)
        return None if found is None else found.item()

    def _put(self, op: PutOp) -> None:
        mem = self._memori(self._scope_of(op.namespace))
        session = self._session(op.namespace, op.key)
        previous = self._read(op.namespace, op.key)
        if previous is not None:
            mem.clear_session(session)
        if op.value is None:
            return
        value = dict(op.value)
        created = previous.created_at if previous is not None else datetime.now(UTC)
        payload = {
            _PAYLOAD_KEY: {
                "namespace": list(op.namespace),
                "key": op.key,
                "value": value,
                "created_at": created.isoformat(),
            }
        }
        text = _index_text(value, op.index)
        mem.append([Message(role="user", content=text, payload=payload)], session_id=session)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = op.namespace_prefix
        scope = self._scope_of(prefix)
        items = {
            sid: item
            for sid, item in self._scan(scope).items()
            if item.namespace[: len(prefix)] == prefix and _matches(item.value, op.filter)
        }
        if not op.query:
            ranked = [item.search_item(None) for item in items.values()]
        else:
            want = max(_RECALL_FLOOR, 10 * (op.offset + op.limit))
            ranked = []
            seen: set[str] = set()
            for recalled in self._memori(scope).recall(op.query, limit=want):
                sid = recalled.session_id
                if sid is None or sid in seen or sid not in items:
                    continue
                seen.add(sid)
                ranked.append(items[sid].search_item(recalled.score))
        return ranked[op.offset : op.offset + op.limit]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        scope_prefix = next(
            (
                c.path[: self._scope_labels]
                for c in conditions
                if c.match_type == "prefix"
                and len(c.path) >= self._scope_labels
                and "*" not in c.path[: self._scope_labels]
            ),
            None,
        )
        if scope_prefix is None:
            raise InvalidNamespaceError(
                "MemoriStore.list_namespaces needs a prefix naming the scope "
                "(entity_id, process_id) (or entity_id with a fixed process_id)"
            )
        namespaces = {
            item.namespace for item in self._scan(self._scope_of(tuple(scope_prefix))).values()
        }
        matching = sorted(ns for ns in namespaces if all(_ns_matches(ns, c) for c in conditions))
        if op.max_depth is not None:
            matching = sorted({ns[: op.max_depth] for ns in matching})
        return matching[op.offset : op.offset + op.limit]

    def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return self._get(op)
        if isinstance(op, PutOp):
            self._put(op)
            return None
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise UsageError(f"unknown store operation {type(op).__name__}")

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run `ops` in order; results line up with them (`None` for puts)."""
        return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run `ops` in order in a worker thread (the same implementation as `batch`)."""
        return await asyncio.to_thread(self.batch, list(ops))


# -- helpers -----------------------------------------------------------------------------------


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _path(value: Any, path: str) -> Any:
    """The field at a dotted `path` (`a.b`, `a[0].b`, `a[*]`), or None."""
    current: list[Any] = [value]
    for part in path.replace("[", ".[").split("."):
        if not part or part == "$":
            continue
        nxt: list[Any] = []
        for node in current:
            if part == "[*]" and isinstance(node, list):
                nxt.extend(node)
            elif part.startswith("[") and isinstance(node, list):
                with contextlib.suppress(ValueError, IndexError):
                    nxt.append(node[int(part[1:-1])])
            elif isinstance(node, Mapping) and part in node:
                nxt.append(node[part])
        current = nxt
    return current if len(current) != 1 else current[0]


def _index_text(value: dict[str, Any], index: Literal[False] | list[str] | None) -> str:
    if index is False:
        return ""
    if index is None:
        return "\n".join(_strings(value))
    parts: list[str] = []
    for path in index:
        found = _path(value, path)
        if isinstance(found, str):
            parts.append(found)
        elif found not in (None, []):
            texts = list(_strings(found))
            parts.extend(texts if texts else [json.dumps(found, default=str)])
    return "\n".join(parts)


_MISSING = object()
_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _field(value: Mapping[str, Any], key: str) -> Any:
    node: Any = value
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _matches(value: Mapping[str, Any], filter: dict[str, Any] | None) -> bool:
    for key, want in (filter or {}).items():
        have = _field(value, key)
        if isinstance(want, Mapping) and want and all(k in _OPS for k in want):
            for op_name, operand in want.items():
                if have is _MISSING:
                    if op_name != "$ne":
                        return False
                    continue
                try:
                    if not _OPS[op_name](have, operand):
                        return False
                except TypeError:
                    return False
        elif have is _MISSING or have != want:
            return False
    return True


def _ns_matches(namespace: tuple[str, ...], condition: MatchCondition) -> bool:
    path = condition.path
    if not path:
        return True
    if len(path) > len(namespace):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p == "*" or p == n for p, n in zip(path, part, strict=True))
