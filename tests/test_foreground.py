"""Background embedding gives way to the calls a user waits on, and still makes progress."""

from __future__ import annotations

import threading
import time

from memori_core._foreground import foreground, give_way, mark_background_thread


def _give_way_in_background(quiet: float, max_wait: float) -> tuple[float, float]:
    """(start, end) monotonic times of `give_way` in a thread marked as background."""
    times: list[float] = []

    def worker() -> None:
        mark_background_thread()
        times.append(time.monotonic())
        give_way(quiet, max_wait)
        times.append(time.monotonic())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    return times[0], times[1]


def test_other_threads_never_wait() -> None:
    with foreground():
        start = time.monotonic()
        give_way(quiet=5.0, max_wait=5.0)
        assert time.monotonic() - start < 0.5


def test_background_waits_while_calls_run_then_for_a_pause() -> None:
    release = threading.Event()
    entered = threading.Event()
    call_ended: list[float] = []

    def call() -> None:
        with foreground():
            entered.set()
            release.wait(10)
        call_ended.append(time.monotonic())

    caller = threading.Thread(target=call)
    caller.start()
    entered.wait(10)
    threading.Timer(0.3, release.set).start()
    _, went_ahead = _give_way_in_background(quiet=0.2, max_wait=5.0)
    caller.join(10)
    # Not while the call ran, and only after 0.2 s without calls.
    assert went_ahead - call_ended[0] >= 0.15
    assert went_ahead - call_ended[0] < 3.0


def test_background_goes_ahead_after_max_wait_under_constant_calls() -> None:
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with foreground():
                time.sleep(0.001)

    caller = threading.Thread(target=busy)
    caller.start()
    try:
        start, went_ahead = _give_way_in_background(quiet=0.2, max_wait=0.3)
    finally:
        stop.set()
        caller.join(10)
    assert 0.25 <= went_ahead - start < 3.0


def test_a_forked_child_does_not_wait_for_the_parents_calls() -> None:
    """A call in progress when the process forks never ends in the child: its background
    work must not wait for it (nor on a lock a parent thread held)."""
    import multiprocessing

    release = threading.Event()
    entered = threading.Event()

    def call() -> None:
        with foreground():
            entered.set()
            release.wait(10)

    caller = threading.Thread(target=call)
    caller.start()
    entered.wait(10)
    try:
        child = multiprocessing.get_context("fork").Process(target=_child_gives_way_at_once)
        child.start()
        child.join(20)
        assert child.exitcode == 0
    finally:
        release.set()
        caller.join(10)


def _child_gives_way_at_once() -> None:
    start, went_ahead = _give_way_in_background(quiet=0.0, max_wait=5.0)
    raise SystemExit(0 if went_ahead - start < 1.0 else 1)
