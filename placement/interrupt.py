"""Cooperative stop on SIGINT and SIGTERM: long searches end with their best result so far.

The command line installs :func:`graceful_stop` around a command. Then:

* the first SIGINT asks the work to stop (:func:`requested` returns the reason, ``"stopped by the user"``):
  solvers treat it as their deadline and return the best plan found so far, which the command writes
  whole and marks in provenance;
* a second SIGINT raises :class:`KeyboardInterrupt` at once (exit 130); temporary files are removed by
  the ``finally`` of :func:`moe_placement.atomic.atomic_path` on the way out;
* SIGTERM raises :class:`Terminated` (exit 143), with the same clean-up.

:func:`deadline` makes the same request when a time limit runs out, so one mechanism stops the work
either way.

Python runs signal handlers only in the main thread and only between bytecodes, so a main thread inside a
long C++ call (a CP-SAT search) would not see the signal until that call returned. A watcher thread reads
the signal numbers that the interpreter writes to a wake-up pipe the moment a signal arrives and runs the
registered stop callbacks (:func:`stoppable`, e.g. ``CpSolver.stop_search``, which is thread-safe), so the
C++ call returns and the main thread's handler runs. If the main thread still has not exited
``HARD_EXIT_AFTER_S`` after a second SIGINT, the watcher ends the process with exit 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

STOPPED_BY_USER = "stopped by the user"
TERMINATED = "terminated (SIGTERM)"
TIME_LIMIT_REACHED = "time limit reached"
HARD_EXIT_AFTER_S = 3.0  # a second SIGINT: how long the main thread gets to unwind before exit 130

_lock = threading.Lock()
_reason: str | None = None
_callbacks: dict[int, Callable[[], None]] = {}
_next_id = 0


class Terminated(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """SIGTERM arrived: unwind (running ``finally`` clean-ups) and exit 143."""


def requested() -> str | None:
    """The reason a stop was asked for (``"stopped by the user"``), or None while work may go on."""
    return _reason


def user_requested() -> str | None:
    """The reason of a stop the user asked for (SIGINT, SIGTERM); None for none or the time limit."""
    reason = _reason
    return reason if reason in (STOPPED_BY_USER, TERMINATED) else None


def request(reason: str) -> None:
    """Ask running work to stop: remember ``reason`` and run every stop callback. The first reason wins,
    except that the user's (SIGINT, SIGTERM) replaces a time limit's, which lasts only for its block."""
    global _reason
    with _lock:
        if _reason is None or _reason == TIME_LIMIT_REACHED:
            _reason = reason
        callbacks = list(_callbacks.values())
    for callback in callbacks:
        with contextlib.suppress(
            Exception
        ):  # a finished solver may refuse; stopping is best effort
            callback()


def reset() -> None:
    """Forget a stop request (for a new command in the same process, e.g. tests)."""
    global _reason
    with _lock:
        _reason = None


@contextlib.contextmanager
def stoppable(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` if a stop is requested while the block runs (at once if one already was)."""
    global _next_id
    with _lock:
        key = _next_id
        _next_id += 1
        _callbacks[key] = callback
        already = _reason is not None
    try:
        if already:
            with contextlib.suppress(Exception):
                callback()
        yield
    finally:
        with _lock:
            _callbacks.pop(key, None)


def _watch(read_fd: int, sigints: list[int], timers: list[threading.Timer]) -> None:
    """Watcher thread: for each signal byte, run the stop callbacks; after a second SIGINT, a deadline."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum == signal.SIGINT:
                sigints[0] += 1
                request(STOPPED_BY_USER)
                if sigints[0] >= 2:
                    timer = threading.Timer(HARD_EXIT_AFTER_S, os._exit, args=(130,))
                    timer.daemon = True
                    timers.append(timer)
                    timer.start()
            elif signum == signal.SIGTERM:
                request(TERMINATED)


@contextlib.contextmanager
def graceful_stop(notice: str | None = None) -> Iterator[None]:
    """Install the SIGINT / SIGTERM behaviour described in the module docstring for the block.

    ``notice``: printed on stderr at the first SIGINT (what the command does now). Outside the main
    thread (signal handlers cannot be set there) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    sigints = [0]  # counted by the handler; the watcher keeps its own count
    watcher_sigints = [0]
    timers: list[threading.Timer] = []

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        sigints[0] += 1
        if sigints[0] >= 2:
            raise KeyboardInterrupt
        request(STOPPED_BY_USER)
        if notice:
            sys.stderr.write(f"{notice}\n")
            sys.stderr.flush()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        request(TERMINATED)
        raise Terminated

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_int = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    thread = threading.Thread(
        target=_watch, args=(read_fd, watcher_sigints, timers), name="stop-watcher", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        os.close(write_fd)  # the watcher's read returns b"" and it ends
        thread.join(timeout=1.0)
        for timer in timers:  # the main thread unwound in time: no hard exit
            timer.cancel()
        with contextlib.suppress(OSError):
            os.close(read_fd)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block, so ``finally`` clean-ups (temporary files) run
    before the process exits, instead of the default instant death that leaves them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        request(TERMINATED)
        raise Terminated

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Deadline:
    """The hard edge of a time limit: once ``seconds`` of wall time have passed since :meth:`start`, ask
    the work to stop (reason ``"time limit reached"``), for whatever would run past the solvers' own
    budgets (a CP-SAT call, a new layer model). :meth:`finish` ends the request, so the next solve in
    the same process (a sweep's next scenario) starts afresh; a user's stop stays. ``seconds`` None:
    no edge."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.reached = False
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        self.reached = True
        request(TIME_LIMIT_REACHED)

    def start(self) -> Deadline:
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def finish(self) -> bool:
        """Cancel the edge and end its stop request; return whether the time ran out."""
        global _reason
        if self._timer is not None:
            self._timer.cancel()
            # a timer that fired as the block ended may still be asking for the stop: wait for it, or
            # its request would land after the clearing below and stop the next solve of the process
            # at once (a deterministic run then gave another plan than the same run again)
            if self._timer is not threading.current_thread():
                self._timer.join()
            self._timer = None
        with _lock:
            if _reason == TIME_LIMIT_REACHED:
                _reason = None
        return self.reached


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[Deadline]:
    """:class:`Deadline` for the block."""
    edge = Deadline(seconds).start()
    try:
        yield edge
    finally:
        edge.finish()
