"""Background embedding: memories are embedded off the call path, in batches, and retried."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from memori_core._foreground import give_way, mark_background_thread
from memori_core.embedding import Embedder, check_vectors
from memori_core.errors import StorageError
from memori_core.store.sql import SQLStore
from memori_core.vector import IndexedVector, VectorIndex

__all__ = ["EmbeddingIndexer", "indexer_for"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 64
# Embedding holds a core for milliseconds and its Python steps contend for the GIL with the
# app's own calls; waiting for writes to pause batches the work and keeps it out of the way
# of a conversation's next call, bounded so memories still become searchable by meaning soon.
SETTLE_SECONDS = 0.05
MAX_DELAY_SECONDS = 1.0
BACKGROUND_NICENESS = 10


class EmbeddingIndexer:
    """One daemon thread per (database, embedder) pair, woken when memories are written.

    An episodic turn is embedded together with the turn before it in its session
    (`turn_context`; at most the last `turn_context_chars` characters of it, so a long turn
    before cannot push a reply out of the embedder's token window), so a reply carries what it
    replies to; its stored text stays its own.
    """

    turn_context: bool = True
    turn_context_chars: int = 400

    def __init__(
        self, store: SQLStore, embedder: Embedder, index: VectorIndex | None = None
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.index = index
        self.failures = 0
        self.embedded = 0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._lock_batch = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Writes notified so far, and how many of them a batch that found nothing left to do
        # has covered: a background wake-up that a `flush()` already served does not touch the
        # database (an app, or a test, may have closed or removed it since).
        self._notified = 0
        self._covered = 0

    def notify(self) -> None:
        """Memories were written: embed them soon."""
        with self._lock:
            self._notified += 1
        self._idle.clear()
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="memori-embedder", daemon=True
                    )
                    self._thread.start()

    def run_once(self, max_attempts: int = MAX_ATTEMPTS, *, background: bool = False) -> int:
        """Embed one batch of pending memories now; return how many were embedded."""
        with self._lock_batch:
            notified = self._notified
            if background and self._covered >= notified:
                return 0
            pending = self.store.pending_embeddings(self.embedder.model_id, BATCH, max_attempts)
            if not pending:
                self._covered = max(self._covered, notified)
                return 0
            ids = [row[0] for row in pending]
            texts = [row[1] for row in pending]
            if self.turn_context:
                # A turn is embedded after the turn before it: "Yes, twice a week!" means
                # nothing alone, next to "Do you still go climbing?" it does (LoCoMo R@10
                # 0.796 -> 0.797 alone, 0.801 with neighbour and session weights 0.35 / 0.75;
                # embedding costs about 1.8x as much).
                before = self.store.previous_turns(ids)
                texts = [
                    f"{_tail(before[i], self.turn_context_chars)}\n{text}" if i in before else text
                    for i, text in zip(ids, texts, strict=True)
                ]
            try:
                give_way()  # the default embedder also gives way between its texts
                vectors = check_vectors(
                    self.embedder.embed(texts),
                    len(pending),
                    self.embedder.dimension,
                )
            except Exception:
                self.failures += 1
                log.warning("embedding %d memories failed; will retry", len(ids), exc_info=True)
                self.store.mark_embedding_failed(ids)
                raise
            if self.index is not None:
                # The index first: if the store write then fails, the memories stay pending
                # and are upserted again (idempotent), so the two never disagree for long.
                self.index.upsert(
                    self.embedder.model_id,
                    [
                        IndexedVector(row[0], row[2], row[3], vector)
                        for row, vector in zip(pending, vectors, strict=True)
                    ],
                )
            self.store.set_embeddings(
                self.embedder.model_id,
                self.embedder.dimension,
                list(zip(ids, vectors, strict=True)),
            )
            self.embedded += len(ids)
            return len(ids)

    def flush(self, timeout: float | None = None) -> bool:
        """Embed everything pending now, in the caller's thread; False if it gave up.

        An explicit flush also retries memories the background thread has given up on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                if self.run_once(max_attempts=1_000_000) == 0:
                    return True
            except Exception:
                return False
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Let the background thread finish its batch and exit (called at interpreter exit:
        a native embedder killed mid-batch aborts the process)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)

    def _run(self) -> None:
        _lower_priority()
        mark_background_thread()
        backoff = 0.5
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            self._settle()
            while not self._stopping.is_set():
                try:
                    done = self.run_once(background=True)
                except StorageError:
                    log.warning("background embedding could not reach the store", exc_info=True)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    break
                except Exception:
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    if not self.store.pending_embeddings(self.embedder.model_id, 1, MAX_ATTEMPTS):
                        break
                    continue
                backoff = 0.5
                if done == 0:
                    break
            self._idle.set()

    def _settle(self) -> None:
        """Return once no write has come for `SETTLE_SECONDS`, or `MAX_DELAY_SECONDS` passed."""
        deadline = time.monotonic() + MAX_DELAY_SECONDS
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(min(SETTLE_SECONDS, left)):
                return
            self._wake.clear()


def _lower_priority() -> None:
    """Run this thread only when a core would otherwise idle (Linux `SCHED_IDLE`), else at a
    lower nice value.

    Embedding a model reply costs more CPU than the call that made it; when cores are short
    the app's own threads should win, and the backlog waits. With calls back to back on 2
    cores, nice 10 still let the backlog take ~2 ms of each call's p50 (11.9 -> 9.7 ms at
    10k memories, benchmarks/README.md); `SCHED_IDLE` only takes cycles nobody wants.
    """
    native_id = threading.get_native_id()
    try:
        os.sched_setscheduler(native_id, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        log.debug("SCHED_IDLE unavailable for the embedding thread", exc_info=True)
    try:
        os.setpriority(os.PRIO_PROCESS, native_id, BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        log.debug("could not lower the embedding thread's priority", exc_info=True)


def _tail(text: str, chars: int) -> str:
    """The last `chars` characters of `text`, from a word start (where a question usually is)."""
    if len(text) <= chars:
        return text
    return text[-chars:].split(" ", 1)[-1]


_indexers: dict[tuple[int, int, int], EmbeddingIndexer] = {}
_indexers_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _indexers_lock:
        indexers = list(_indexers.values())
    for indexer in indexers:
        indexer.stop()


def indexer_for(
    store: SQLStore, embedder: Embedder, index: VectorIndex | None = None
) -> EmbeddingIndexer:
    """The process-wide indexer of this store, embedder and vector index."""
    key = (id(store), id(embedder), id(index))
    with _indexers_lock:
        indexer = _indexers.get(key)
        if indexer is None:
            indexer = _indexers[key] = EmbeddingIndexer(store, embedder, index)
        return indexer
