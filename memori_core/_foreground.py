"""Work a caller waits on (a recall, a turn being stored) and background work that yields to it.

With calls back to back, the background embedding of the turns just stored (~3 ms of CPU per
turn with its context) ran beside the next call's recall and slowed it by ~0.7 ms on two cores,
SCHED_IDLE notwithstanding (it takes the moments a thread waits for the GIL or a lock, and
the caches). So a background thread gives way between texts: it waits until this process has
had no foreground work for `QUIET_SECONDS`, or `MAX_WAIT_SECONDS` passed. A real model call is
a pause of hundreds of milliseconds; the bound keeps a backlog moving under constant load.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["foreground", "give_way", "mark_background_thread"]

QUIET_SECONDS = 0.005
MAX_WAIT_SECONDS = 0.05

_active = 0
_last_ended = 0.0
_changed = threading.Condition(threading.Lock())
_thread = threading.local()


def _reset_in_child() -> None:
    # A fork copies the lock as it was (perhaps held by a thread that does not exist there)
    # and the parent's calls in progress, which the child will never end.
    global _active, _changed
    _active = 0
    _changed = threading.Condition(threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


@contextmanager
def foreground() -> Iterator[None]:
    """Mark the enclosed work as something a caller waits on."""
    global _active, _last_ended
    with _changed:
        _active += 1
    try:
        yield
    finally:
        with _changed:
            _active -= 1
            _last_ended = time.monotonic()
            if _active == 0:
                _changed.notify_all()


def mark_background_thread() -> None:
    """Make `give_way()` wait in the calling thread (an embedding worker)."""
    _thread.background = True


def give_way(quiet: float = QUIET_SECONDS, max_wait: float = MAX_WAIT_SECONDS) -> None:
    """In a background thread, wait until no foreground work ran for `quiet` seconds (at most
    `max_wait` seconds); in any other thread return at once."""
    if not getattr(_thread, "background", False):
        return
    deadline = time.monotonic() + max_wait
    with _changed:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if _active:
                _changed.wait(deadline - now)
                continue
            quiet_for = now - _last_ended
            if quiet_for >= quiet:
                return
            _changed.wait(min(quiet - quiet_for, deadline - now))
