"""`MemoriConversationStore`: pydantic-ai conversations kept in memori sessions.

Layout. Conversation `c` of a store bound to (entity, process) lives in the memori session
`session_id_for(entity, process, c)`, an append-only transcript holding:

- the conversation's messages, as `MemoriCapability` records them (OpenAI-shaped text for
  recall, the exact pydantic-ai JSON in the payload), so a stored conversation is also memory;
- after each change, one *commit* row (role "system", empty content, so it is never recalled)
  whose payload holds the new `ConversationRecord`, the revision it replaced, and the entries
  it added as `[entry_id, parent_id, stored_message_id]`.

The current record is found by replaying the commits in order; a commit whose expected
revision is not the revision current at its position lost a race and is ignored. A writer
checks after appending that its commit took effect, so concurrent savers in several processes
get `ConversationConflict` rather than overwriting each other.

When `MemoriCapability` already recorded a run's messages in the conversation's session, a
save adopts those rows as the new entries instead of storing the messages twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai.conversation_store import (
    ConversationConflict,
    ConversationEntry,
    ConversationRecord,
    ConversationStore,
)

from memori_core import Memori, Message, Scope, StoredMessage
from memori_core.errors import StorageError
from memori_pydantic_ai._binding import bind_memori
from memori_pydantic_ai._convert import (
    dump_message,
    load_message,
    message_json,
    session_id_for,
    to_core_messages,
)

__all__ = ["COMMIT_KEY", "MemoriConversationStore"]

COMMIT_KEY = "pydantic_ai_conversation"
"""Payload key of a commit row (see the module docstring)."""

_RECORD = TypeAdapter(ConversationRecord)


@dataclass(frozen=True, slots=True)
class _Spec:
    """Where an entry's message is: enough to rebuild the entry without re-reading the log."""

    session_id: str
    parent_id: str | None
    message: list[dict[str, Any]]


@dataclass
class _Log:
    """One session's transcript, replayed."""

    record: ConversationRecord | None = None
    entries: dict[str, _Spec] = field(default_factory=dict)
    commits: set[int] = field(default_factory=set)
    # pydantic-ai messages stored after the last commit that no entry uses yet: what
    # MemoriCapability recorded since, and what a save may adopt.
    unclaimed: list[StoredMessage] = field(default_factory=list)


def _replay(session_id: str, stored: Sequence[StoredMessage]) -> _Log:
    result = _Log()
    dumped_by_id: dict[int, list[dict[str, Any]]] = {}
    claimed: set[int] = set()
    last_commit = -1
    for index, row in enumerate(stored):
        dumped = message_json(row)
        if dumped is not None:
            dumped_by_id[row.id] = dumped
            continue
        commit = _commit_of(row)
        if commit is None:
            continue
        current = result.record.revision if result.record is not None else None
        if commit.get("expected_revision") != current:
            continue  # lost a race with the commit that set `current`
        for entry_id, parent_id, message_id in commit.get("entries", []):
            dumped = dumped_by_id.get(message_id)
            if dumped is None:
                raise StorageError(
                    f"conversation session {session_id} is inconsistent: entry {entry_id} "
                    f"points at message {message_id}, which is not in it"
                )
            result.entries[entry_id] = _Spec(session_id, parent_id, dumped)
            claimed.add(message_id)
        raw = commit.get("record")
        result.record = None if raw is None else _RECORD.validate_python(raw)
        result.commits.add(row.id)
        last_commit = index
    result.unclaimed = [
        row for row in stored[last_commit + 1 :] if row.id in dumped_by_id and row.id not in claimed
    ]
    return result


def _commit_of(row: StoredMessage) -> dict[str, Any] | None:
    payload = row.message.payload
    if isinstance(payload, dict) and isinstance(payload.get(COMMIT_KEY), dict):
        commit: dict[str, Any] = payload[COMMIT_KEY]
        return commit
    return None


def _entry(entry_id: str, spec: _Spec) -> ConversationEntry:
    # Rebuilt on every read, so a caller changing the message cannot change the store.
    return ConversationEntry(
        id=entry_id, parent_id=spec.parent_id, message=load_message(spec.message)
    )


def _revision(record: ConversationRecord | None) -> str | None:
    return None if record is None else record.revision


class MemoriConversationStore(ConversationStore):
    """A pydantic-ai `ConversationStore` whose conversations are memori sessions.

    ```python
    store = MemoriConversationStore("user-123", "support-chat")
    conversation = await store.load(cid) or Conversation(conversation_id=cid)
    result = await agent.run(prompt, conversation=conversation)
    await store.save(result)
    ```

    Conversations are kept per (entity, process): another user's or agent's store never sees
    them. Each conversation is the memori session `session_id_for(conversation_id)`, so its
    messages are also recorded memory, and any process on the same database can load it.

    `delete` erases the conversation's session (its transcript and the memories derived from
    it, as `Memori.clear_session` does) unless a fork still reaches its messages; then only the
    record is removed. Listing conversations reads every session of the scope.

    Args:
        entity_id: The end user.
        process_id: The agent or workflow.
        memori: The `Memori` whose database and settings to use; the store works on a
            `memori.scoped(entity_id, process_id)` copy.
        database_url: Where to store, when `memori` is not given.
    """

    def __init__(
        self,
        entity_id: str,
        process_id: str | None,
        *,
        memori: Memori | None = None,
        database_url: str | None = None,
    ) -> None:
        self._scope = Scope(entity_id, process_id)
        self._memori = bind_memori(self._scope, memori=memori, database_url=database_url)
        # Which session holds each entry this process has seen (ids only, to stay small).
        # Entries never move, so the index stays true; only a delete drops them.
        self._entry_sessions: dict[str, str] = {}
        self._lock = threading.RLock()

    @property
    def memori(self) -> Memori:
        """The `Memori` (attributed to this user and agent) this store reads and writes."""
        return self._memori

    def session_id_for(self, conversation_id: str) -> str:
        """The memori session holding `conversation_id` (where `MemoriCapability` records it)."""
        return session_id_for(self._scope.entity_id, self._scope.process_id, conversation_id)

    # -- the storage primitives pydantic-ai builds load/save/branch/fork on (async: in a thread)

    async def read_record(self, conversation_id: str) -> ConversationRecord | None:
        return await asyncio.to_thread(self._sync_read_record, conversation_id)

    async def read_records(
        self, *, scope: str | None = None, limit: int | None = None
    ) -> Sequence[ConversationRecord]:
        return await asyncio.to_thread(self._sync_read_records, scope, limit)

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        entries = list(new_entries)
        await asyncio.to_thread(self._sync_write_record, record, entries, expected_revision)

    async def delete_record(self, conversation_id: str, *, expected_revision: str) -> None:
        await asyncio.to_thread(self._sync_delete_record, conversation_id, expected_revision)

    async def read_entry(self, entry_id: str) -> ConversationEntry:
        return await asyncio.to_thread(self._sync_read_entry, entry_id)

    async def read_history(
        self, head_id: str | None, *, limit: int | None = None
    ) -> list[ConversationEntry]:
        # One transcript read per session the history passes through, not one per entry.
        return await asyncio.to_thread(self._sync_read_history, head_id, limit)

    # -- implementation ---------------------------------------------------------------------

    def _session_log(self, session_id: str) -> _Log:
        log = _replay(session_id, self._memori.messages(session_id))
        self._entry_sessions.update(dict.fromkeys(log.entries, session_id))
        return log

    def _scope_logs(self) -> dict[str, _Log]:
        return {info.id: self._session_log(info.id) for info in self._memori.sessions()}

    def _sync_read_record(self, conversation_id: str) -> ConversationRecord | None:
        return self._session_log(self.session_id_for(conversation_id)).record

    def _sync_read_records(self, scope: str | None, limit: int | None) -> list[ConversationRecord]:
        records = [
            log.record
            for log in self._scope_logs().values()
            if log.record is not None and (scope is None or log.record.scope == scope)
        ]
        records.sort(key=lambda record: record.updated_at, reverse=True)
        return records[:limit]

    def _sync_read_entry(self, entry_id: str) -> ConversationEntry:
        spec = self._find(entry_id, {})
        if spec is None:
            raise KeyError(f"no conversation entry {entry_id!r} in this store")
        return _entry(entry_id, spec)

    def _sync_read_history(self, head_id: str | None, limit: int | None) -> list[ConversationEntry]:
        logs: dict[str, _Log] = {}
        entries: list[ConversationEntry] = []
        entry_id = head_id
        while entry_id is not None and (limit is None or len(entries) < limit):
            spec = self._find(entry_id, logs)
            if spec is None:
                raise KeyError(f"no conversation entry {entry_id!r} in this store")
            entries.append(_entry(entry_id, spec))
            entry_id = spec.parent_id
        entries.reverse()
        return entries

    def _find(self, entry_id: str, logs: dict[str, _Log]) -> _Spec | None:
        """The entry's spec, reading (into `logs`) only the sessions needed to find it."""
        session_id = self._entry_sessions.get(entry_id)
        if session_id is not None:
            if session_id not in logs:
                logs[session_id] = self._session_log(session_id)
            spec = logs[session_id].entries.get(entry_id)
            if spec is not None:
                return spec
        # Written by another process, or a fork's history in a session not read yet.
        for info in self._memori.sessions():
            if info.id not in logs:
                logs[info.id] = self._session_log(info.id)
            spec = logs[info.id].entries.get(entry_id)
            if spec is not None:
                return spec
        return None

    def _has_entry(self, entry_id: str) -> bool:
        return self._find(entry_id, {}) is not None

    def _sync_write_record(
        self,
        record: ConversationRecord,
        new_entries: list[ConversationEntry],
        expected_revision: str | None,
    ) -> None:
        conversation_id = record.conversation_id
        session_id = self.session_id_for(conversation_id)
        with self._lock:
            log = self._session_log(session_id)
            if _revision(log.record) != expected_revision:
                raise ConversationConflict(conversation_id)
            new_ids = {entry.id for entry in new_entries}
            head = record.head_id
            if head is not None and head not in new_ids and not self._has_entry(head):
                raise ConversationConflict(conversation_id)
            links = self._store_entries(session_id, log, new_entries)
            commit = {
                "expected_revision": expected_revision,
                "record": _RECORD.dump_python(record, mode="json"),
                "entries": links,
            }
            self._commit(session_id, conversation_id, commit)

    def _store_entries(
        self, session_id: str, log: _Log, new_entries: list[ConversationEntry]
    ) -> list[list[Any]]:
        """Store the new entries' messages (adopting rows already recorded); their links."""
        message_ids: list[int | None] = []
        unclaimed = log.unclaimed
        position = 0
        missing: list[ConversationEntry] = []
        for entry in new_entries:
            dumped = dump_message(entry.message)
            match = next(
                (
                    k
                    for k in range(position, len(unclaimed))
                    if message_json(unclaimed[k]) == dumped
                ),
                None,
            )
            if match is None:
                message_ids.append(None)
                missing.append(entry)
            else:
                message_ids.append(unclaimed[match].id)
                position = match + 1
        if missing:
            stored = self._memori.append(
                to_core_messages(entry.message for entry in missing), session_id=session_id
            )
            # The first core message of each pydantic-ai message carries its JSON.
            carriers = [row.id for row in stored if message_json(row) is not None]
            if len(carriers) != len(missing):
                raise StorageError("memori stored a different number of messages than given")
            fresh = iter(carriers)
            message_ids = [next(fresh) if m is None else m for m in message_ids]
        return [
            [entry.id, entry.parent_id, message_id]
            for entry, message_id in zip(new_entries, message_ids, strict=True)
        ]

    def _commit(self, session_id: str, conversation_id: str, commit: dict[str, Any]) -> None:
        """Append a commit row; raise `ConversationConflict` if a concurrent one won."""
        row = Message(role="system", content="", payload={COMMIT_KEY: commit})
        [stored] = self._memori.append([row], session_id=session_id)
        if stored.id not in self._session_log(session_id).commits:
            raise ConversationConflict(conversation_id)

    def _sync_delete_record(self, conversation_id: str, expected_revision: str) -> None:
        session_id = self.session_id_for(conversation_id)
        with self._lock:
            log = self._session_log(session_id)
            if log.record is None or log.record.revision != expected_revision:
                raise ConversationConflict(conversation_id)
            commit: dict[str, Any] = {
                "expected_revision": expected_revision,
                "record": None,
                "entries": [],
            }
            self._commit(session_id, conversation_id, commit)
            if not self._reached_from_elsewhere(session_id):
                self._memori.clear_session(session_id)
                self._entry_sessions = {
                    key: owner for key, owner in self._entry_sessions.items() if owner != session_id
                }

    def _reached_from_elsewhere(self, session_id: str) -> bool:
        """Whether another stored conversation's history (or a branch it left) uses this session."""
        logs = self._scope_logs()
        specs = {key: spec for log in logs.values() for key, spec in log.entries.items()}
        for other_session, log in logs.items():
            if other_session == session_id or log.record is None:
                continue
            for tip in [log.record.head_id, *log.record.branches]:
                entry_id = tip
                while entry_id is not None:
                    spec = specs.get(entry_id)
                    if spec is None:
                        break
                    if spec.session_id == session_id:
                        return True
                    entry_id = spec.parent_id
        return False
