"""Compile the simulator's numba kernels ahead of use, in parallel worker processes.

A cold compile of every kernel ``placement simulate`` runs costs about 25 CPU-s (docs/simulator.md,
Compilation): numba's typing and lowering in Python, and LLVM generating the code of each compiled
function's whole call tree; one process compiles one function at a time. The *entry kernels* (those
called from Python) are independent of each other, so they compile in worker processes side by side,
one per CPU, each writing numba's on-disk cache (``cache=True``); the process that needs them then loads
the cache (a few tens of ms a kernel). It happens once: at first use
(:func:`moe_placement.simulator.kernels.announce_compile` calls :func:`warm_up` when a kernel it is
handed has no cached machine code) or at set-up time (``python -m moe_placement.simulator.warmup``,
``make warmup``).

The registry, :data:`ENTRIES`, lists each entry kernel with a way to compile it: its example arguments
(only their numba types matter: :func:`compile_for` compiles for exactly those types, running nothing), or
a tiny run through the code that calls it (robust to a change of the kernel's arguments). A new entry
kernel joins by being listed. ``after`` names entries whose kernels this one calls: it starts once they are
in the cache, so it loads them instead of compiling them again. That the registry leaves nothing for a
``simulate`` path to compile is a test (``tests/test_simulator_compile.py``, slow): a kernel left out
would compile in the calling process at its first call, correct but slower.

Robust by construction: a worker that fails or dies leaves its entries to be compiled in the calling
process as before (same results, only slower); an overall timeout bounds the wait; without numba, or with
one CPU, nothing runs here. Workers are ``python -m moe_placement.simulator.warmup --serve`` processes that
read entry names on stdin and answer one line each; they inherit the environment, so numba picks the same
cache directory (next to the sources, or the user's cache when that is not writable, or
``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from moe_placement.simulator import bundles, kernels

# Set in the workers' environment: announce_compile stays silent there and starts no workers of its own.
WORKER_ENV = kernels.WARMUP_WORKER_ENV

# The most a warm-up waits for its workers, in seconds; past it they are stopped and the calling process
# compiles what is left itself.
TIMEOUT_S = 300.0

_REPLY = "warmup:"  # prefix of a worker's answer lines (anything else on its stdout is ignored)


@dataclass(frozen=True)
class Entry:
    """One entry kernel (or a tiny run) of the registry.

    ``kernels()``: the numba dispatchers it compiles (their cache tells whether it is needed; none: it runs
    whenever a warm-up does); ``warm()``: compiles them; ``after``: names of entries to have in the cache
    first (their kernels are called by this one's)."""

    name: str
    kernels: Callable[[], tuple[Any, ...]]
    warm: Callable[[], None]
    after: tuple[str, ...] = ()


def compile_for(dispatcher: Any, *example: Any) -> None:
    """Compile ``dispatcher`` for the numba types of ``example`` (values unused), into its cache."""
    import numba

    dispatcher.compile(tuple(numba.typeof(arg) for arg in example))


def _bundle() -> Any:
    """A fluid network's kernel bundle as the engine builds it (its dtypes are what matters)."""
    import simpy

    from moe_placement.simulator.engine import FluidNetwork

    return FluidNetwork(simpy.Environment(), [1.0, 1.0])._arrays


_IDS = np.zeros(1, dtype=np.int64)  # any int64 vector argument


def _network_entry(
    name: str, example: Callable[[], tuple[Any, ...]], after: tuple[str, ...] = ()
) -> Entry:
    """An entry kernel of :mod:`~moe_placement.simulator.kernels` compiled for ``example()``'s types, which
    mirror how :class:`~moe_placement.simulator.engine.FluidNetwork` calls it."""

    def warm() -> None:
        with bundles.types_only():
            arguments = example()
        compile_for(getattr(kernels, name), *arguments)

    return Entry(name, lambda: (getattr(kernels, name),), warm, after)


def _warm_routing() -> None:
    from moe_placement.simulator.routing import uniform_routing

    uniform_routing(
        4, 2, tokens=4, top_k=2, num_experts=8, node_limit=None, rng=np.random.default_rng(0)
    )


def _routing_kernels() -> tuple[Any, ...]:
    import moe_placement.simulator.routing as routing

    return (routing._route_gpu,)


def _loop_callees(types_only: bool = True) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """The phase loop's largest callees with arguments typed as :func:`phaseloop.play` passes them: its
    bundles as their types alone (:func:`bundles.types_only`), or packed (``types_only=False``, which
    compiles the packers)."""
    from moe_placement.cluster import load_cluster
    from moe_placement.simulator.moe import uniform_phase_pair
    from moe_placement.simulator.phaseloop import callee_arguments

    cluster = load_cluster(None).with_counts(4, 2)
    topo, phases = uniform_phase_pair(
        cluster, tokens=4, hidden=16, top_k=2, num_experts=8, algo="deepep"
    )
    if not types_only:
        return callee_arguments(topo, phases)
    with bundles.types_only():
        return callee_arguments(topo, phases)


def _packer_kernels() -> tuple[Any, ...]:
    return (kernels._pack_net, bundles._packed)


def _warm_packers() -> None:
    """Every bundle type the phase loop and the SimPy engine pack from Python, packed once for real."""
    _loop_callees(types_only=False)
    _bundle()


def _loop_entry(name: str, *callees: str, after: tuple[str, ...] = ()) -> Entry:
    """The phase loop and its callees (names in :mod:`~moe_placement.simulator.phaseloop`, or in
    :mod:`~moe_placement.simulator.kernels` for the filling's), compiled in turn for the argument types
    play passes (:func:`~moe_placement.simulator.phaseloop.callee_arguments`)."""

    def kernels_() -> tuple[Any, ...]:
        import moe_placement.simulator.phaseloop as phaseloop

        # play's callees live in the phase loop's module, the filling's in the kernels' module
        return tuple(
            getattr(phaseloop, callee, None) or getattr(kernels, callee) for callee in callees
        )

    def warm() -> None:
        examples = _loop_callees()
        for callee in callees:
            dispatcher, example = examples[callee]
            compile_for(dispatcher, *example)

    return Entry(name, kernels_, warm, after)


# The registry, in priority order: a free worker takes the first entry whose ``after`` entries are done.
# The phase loop is the longest chain (each level of play's call tree compiles once, then loads in its
# caller): refill -> the loop's solver -> play. Its callees come first, the deepest first, ordered so
# that two workers finish them at about the same time (the worker free after refill takes the driver's
# steps while the other compiles the solver); the packers and the kernels only the SimPy engine and the
# routing draw need compile beside play. The loop's regrouping
# (phaseloop.regroup_step) is left out: play leaves it to Python, and the loop regroups only when its
# classes outgrow their room (never on the simulate paths), so it compiles at its first use.
ENTRIES: tuple[Entry, ...] = (
    _loop_entry("refill", "refill"),
    _network_entry("classify", lambda: (_bundle(), _IDS, True, True)),
    _loop_entry(
        "loop_classes",
        "_new_classes",
        "_advance_classes",
        "_lazy_overloaded",
        "_compact_act",
        "_rebuild_finishes",
    ),
    _loop_entry("loop_solve", "_solve", after=("refill", "loop_classes")),
    _loop_entry(
        "loop_events", "_start", "_relay_arrive", "_do_action", "_on_sent", "_on_delivered"
    ),
    _loop_entry("loop_finish_due", "_finish_due"),
    _loop_entry(
        "loop_play",
        "play",
        after=("loop_solve", "classify", "loop_finish_due", "loop_events"),
    ),
    Entry("packers", _packer_kernels, _warm_packers),
    Entry("uniform_routing", _routing_kernels, _warm_routing),
    _network_entry(
        "solve",
        lambda: (_bundle(), _IDS, _IDS, _IDS, 1.0, True, 0.0, 0, kernels.scratch(1, 2)),
        after=("refill",),
    ),
    _network_entry("pop_finished", lambda: (_bundle(), _IDS, 0.0, 1e-9)),
    _network_entry("build_classes", lambda: (_bundle(), 0, _IDS, _IDS, 0)),
    _network_entry("link_index", lambda: (_IDS, _IDS, _IDS, 1)),
    _network_entry("advance", lambda: (_bundle(), _IDS, 0.0)),
)


# Modules whose kernels call those of kernels.py: numba checks a kernel's cache against its own source
# file only (numba/numba#1833), so theirs would keep kernels.py's old machine code after it changes.
# kept here too for the warm-up's callers (they live in the kernels' module, which applies them)
CALLERS_OF_KERNELS = kernels.CALLERS_OF_KERNELS
drop_stale_caches = kernels.drop_stale_caches


def needed(entries: Sequence[Entry] = ENTRIES) -> list[Entry]:
    """The entries with a kernel that has no cached machine code (or that list none: they always run)."""
    return [e for e in entries if _is_cold(e)]


def _is_cold(entry: Entry) -> bool:
    try:
        dispatchers = entry.kernels()
    except Exception:  # a kernel renamed or gone: its warm() reports what is wrong
        return True
    return not dispatchers or any(map(kernels._cache_is_cold, dispatchers))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class WarmReport:
    """What a warm-up did: entries compiled, failed (with the worker's one-line reason) and left."""

    workers: int = 0
    wall_s: float = 0.0
    compiled: dict[str, float] = field(default_factory=dict)  # entry -> its worker's seconds
    failed: dict[str, str] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # not started (timeout, or no worker left)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.left


@dataclass
class _Worker:
    proc: subprocess.Popen[str]
    entry: str | None = None  # in flight


def _die_with_parent() -> None:
    """In a worker, before it runs: the kernel ends it when its parent dies (Linux ``PR_SET_PDEATHSIG``),
    so a caller killed mid-compile (SIGKILL, or SIGTERM outside Python) leaves no compiler running."""
    import ctypes
    import signal

    # not Linux (no prctl): the worker ends at EOF on its stdin instead
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG


def _start_worker() -> _Worker:
    env = {**os.environ, WORKER_ENV: "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moe_placement.simulator.warmup", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        env=env,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    return _Worker(proc)


def warm_up(
    entries: Sequence[Entry] | None = None,
    *,
    workers: int | None = None,
    timeout_s: float = TIMEOUT_S,
) -> WarmReport:
    """Compile ``entries`` (default: those of :data:`ENTRIES` not yet in the cache) in ``workers`` processes
    (default: one per usable CPU, at most one per entry), each entry once the entries it comes ``after``
    are done. Never raises for a failed compile: it is reported, and the caller compiles in-process."""
    start = time.perf_counter()
    todo = list(needed() if entries is None else entries)
    report = WarmReport()
    if not todo or not kernels.HAVE_NUMBA:
        return report
    count = min(workers or usable_cpus(), len(todo))
    pending = {e.name for e in todo}
    running: set[str] = set()
    pool: list[_Worker] = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(count):
            worker = _start_worker()
            pool.append(worker)
            assert worker.proc.stdout is not None
            selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
        report.workers = len(pool)
        deadline = start + timeout_s
        while pending or running:
            for worker in pool:
                ready = _next_ready(todo, pending, running)
                idle = worker.entry is None and worker.proc.poll() is None
                if ready and idle and _send(worker, ready):
                    pending.discard(ready)
                    running.add(ready)
            if not running or time.perf_counter() >= deadline:
                break
            for key, _ in selector.select(timeout=max(0.0, deadline - time.perf_counter())):
                worker = key.data
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if not line:  # the worker died: its entry is left to the caller
                    selector.unregister(key.fileobj)
                    if worker.entry is not None:
                        report.failed[worker.entry] = "worker exited"
                        running.discard(worker.entry)
                        worker.entry = None
                    worker.proc.wait()
                elif line.startswith(_REPLY):
                    _record(report, line[len(_REPLY) :].strip())
                    running.discard(worker.entry or "")
                    worker.entry = None
    finally:
        selector.close()
        for worker in pool:
            _stop(worker)
    report.left = sorted(pending | running)
    report.wall_s = time.perf_counter() - start
    return report


def _next_ready(todo: Sequence[Entry], pending: set[str], running: set[str]) -> str | None:
    """The first pending entry none of whose ``after`` entries is still pending or running."""
    for entry in todo:
        if entry.name in pending and not set(entry.after) & (pending | running):
            return entry.name
    return None


def _send(worker: _Worker, name: str) -> bool:
    try:
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(name + "\n")
        worker.proc.stdin.flush()
    except (BrokenPipeError, OSError):
        return False
    worker.entry = name
    return True


def _record(report: WarmReport, answer: str) -> None:
    status, name, detail = [*answer.split(" ", 2), "", ""][:3]
    if status == "ok":
        report.compiled[name] = float(detail)
    else:
        report.failed[name] = detail


def _stop(worker: _Worker) -> None:
    """End a worker: EOF on its stdin lets it exit; one that does not (stuck) is killed."""
    with contextlib.suppress(OSError):
        if worker.proc.stdin is not None:
            worker.proc.stdin.close()
    try:
        worker.proc.wait(timeout=0.5 if worker.entry is None else 0.0)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """A worker's loop: compile each entry named on ``stdin``; answer ``ok NAME SECONDS`` or
    ``error NAME REASON`` on ``stdout``, one line each."""
    by_name = {e.name: e for e in ENTRIES}
    for line in stdin:
        name = line.strip()
        start = time.perf_counter()
        try:
            by_name[name].warm()
            answer = f"ok {name} {time.perf_counter() - start:.3f}"
        except Exception as exc:  # reported, never fatal: the caller compiles in-process instead
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            answer = f"error {name} {reason}"
        stdout.write(f"{_REPLY}{answer}\n")
        stdout.flush()


def warm_serially(entries: Sequence[Entry]) -> WarmReport:
    """Compile ``entries`` here, one after the other (the reference the parallel warm-up is timed
    against, and the path with one CPU)."""
    report = WarmReport()
    start = time.perf_counter()
    for entry in entries:
        t0 = time.perf_counter()
        entry.warm()
        report.compiled[entry.name] = time.perf_counter() - t0
    report.wall_s = time.perf_counter() - start
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m moe_placement.simulator.warmup``: compile the kernels ``placement simulate`` uses
    now (set-up time) instead of at their first use."""
    parser = argparse.ArgumentParser(
        prog="python -m moe_placement.simulator.warmup", description=main.__doc__
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: one per CPU)"
    )
    parser.add_argument("--serial", action="store_true", help="compile in this process, one by one")
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds (default %(default)s)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        os.environ[WORKER_ENV] = "1"
        serve(sys.stdin, sys.stdout)
        return 0
    if not kernels.HAVE_NUMBA:
        print(
            "numba is not installed: the simulator's kernels run as plain Python (nothing to compile)"
        )
        return 0
    drop_stale_caches()
    todo = needed()
    if not todo:
        print("simulator kernels already compiled (numba cache)")
        return 0
    cpu_start = time.process_time()
    if args.serial or (usable_cpus() < 2 and args.workers is None):
        os.environ[WORKER_ENV] = "1"  # the tiny runs' own announce_compile: no second warm-up
        report = warm_serially(todo)
    else:
        report = warm_up(todo, workers=args.workers, timeout_s=args.timeout)
    for name, seconds in report.compiled.items():
        print(f"  {name}: {seconds:.2f} s")
    for name, reason in report.failed.items():
        print(f"  {name}: FAILED ({reason})")
    for name in report.left:
        print(f"  {name}: not compiled (timeout)")
    where = f"{report.workers} worker processes" if report.workers else "this process"
    print(
        f"compiled {len(report.compiled)} of {len(todo)} simulator entries in {report.wall_s:.1f} s "
        f"wall on {where} (this process {time.process_time() - cpu_start:.1f} CPU-s)"
    )
    return 0 if report.ok else 1


def _warm_up_in_workers() -> None:
    """The parallel warm-up, if it can run here; any failure leaves the compile to this process."""
    if usable_cpus() < 2:
        return  # one CPU: workers would only add their start-up
    try:
        report = warm_up()
    except Exception as exc:  # e.g. no process may be started here: compile in this process
        report = None
        print(f"(parallel compile unavailable: {exc}; compiling here)", file=sys.stderr, flush=True)
    if report is not None and not report.ok:
        missed = ", ".join([*report.failed, *report.left])
        print(f"(not compiled in parallel: {missed}; compiling here)", file=sys.stderr, flush=True)


def install() -> None:
    """Make a cold kernel cache compile in parallel workers (:func:`kernels.announce_compile` then runs
    :func:`warm_up`). Called by the commands that simulate (CLI, pipeline, executor); the library alone
    compiles in its own process, with the same message. Not done on import of the package: this module
    imports the kernels' callers, which the package imports."""
    kernels.set_parallel_compile(_warm_up_in_workers)


if __name__ == "__main__":
    sys.exit(main())
