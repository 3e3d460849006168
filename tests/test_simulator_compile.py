"""The parallel compile of the simulator's kernels (moe_placement.simulator.warmup): its registry, its
scheduler, its failure and timeout paths, and (slow) that a cold warm-up leaves nothing for any
``simulate`` path to compile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from moe_placement.simulator import kernels
from moe_placement.simulator.warmup import ENTRIES, Entry, _next_ready, drop_stale_caches, warm_up

needs_numba = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba absent: nothing compiles")


def test_registry_names_are_unique_and_its_order_can_be_followed() -> None:
    names = [e.name for e in ENTRIES]
    assert len(set(names)) == len(names)
    for entry in ENTRIES:
        assert set(entry.after) <= set(names) - {entry.name}, entry
    # the scheduler hands out every entry, each after the entries it names
    pending, done = set(names), []
    while pending:
        name = _next_ready(ENTRIES, pending, set())
        assert name is not None, f"no entry can start; left: {sorted(pending)}"
        entry = next(e for e in ENTRIES if e.name == name)
        assert set(entry.after) <= set(done)
        pending.discard(name)
        done.append(name)


def test_caches_of_kernels_calling_kernels_py_older_than_it_are_dropped(tmp_path: Path) -> None:
    # numba checks a cache against its own source only: the phase loop's would keep old kernels
    source = tmp_path / "kernels.py"
    source.write_text("")
    os.utime(source, (2000, 2000))
    names = {
        "phaseloop.play-10.py311.nbi": 1000,  # compiled before kernels.py changed: stale
        "phaseloop._send-5.py311.nbi": 3000,  # compiled after: current
        "kernels.solve-7.py311.nbi": 1000,  # numba checks it against kernels.py itself
        "routing._route_gpu-3.py311.nbi": 1000,  # calls no kernel of kernels.py
    }
    for name, mtime in names.items():
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (mtime, mtime))
    assert drop_stale_caches(tmp_path, {"kernels": source}) == ["phaseloop.play-10.py311.nbi"]
    assert sorted(p.name for p in tmp_path.glob("*.nbi")) == sorted(
        set(names) - {"phaseloop.play-10.py311.nbi"}
    )


def test_caches_compiled_before_a_change_to_the_bundles_are_dropped(tmp_path: Path) -> None:
    # the bundles' intrinsics compile into the kernels of kernels.py and of the phase loop
    source = tmp_path / "bundles.py"
    source.write_text("")
    os.utime(source, (2000, 2000))
    names = {
        "phaseloop.play-10.py311.nbi": 1000,
        "kernels.solve-7.py311.nbi": 1000,
        "kernels.advance-3.py311.nbi": 3000,  # compiled after the change: current
        "bundles._packed-2.py311.nbi": 1000,  # numba checks it against bundles.py itself
        "routing._route_gpu-3.py311.nbi": 1000,
    }
    for name, mtime in names.items():
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (mtime, mtime))
    assert sorted(drop_stale_caches(tmp_path, {"bundles": source})) == [
        "kernels.solve-7.py311.nbi",
        "phaseloop.play-10.py311.nbi",
    ]


@needs_numba
def test_an_entry_that_fails_is_reported_not_raised() -> None:
    unknown = Entry("no-such-entry", lambda: (), lambda: None)
    report = warm_up([unknown], workers=1, timeout_s=120)
    assert report.workers == 1
    assert report.failed["no-such-entry"].startswith("KeyError"), report
    assert not report.compiled and not report.ok


@needs_numba
def test_a_warm_up_past_its_timeout_stops_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an empty cache: the worker is still compiling (or starting) when the time is up
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    start = time.perf_counter()
    report = warm_up(ENTRIES[:1], workers=1, timeout_s=0.3)
    assert time.perf_counter() - start < 10
    assert report.left == [ENTRIES[0].name] and not report.ok


_PATHS = """
from moe_placement.simulator.warmup import needed
print("cold:", [entry.name for entry in needed()])
import numpy as np
from numba.core.registry import CPUDispatcher
from moe_placement.cli.commands._common import load_workload
from moe_placement.cluster import load_cluster
from moe_placement.plan import Plan, Provenance
from moe_placement.simulator import bundles, kernels, phaseloop, routing, simulate_moe, simulate_uniform
from moe_placement.simulator.collectives import ALGOS

cluster = load_cluster("h800-mpft")
for algo in ALGOS:
    simulate_uniform(cluster.with_counts(16, 8), tokens=32, top_k=4, algo=algo)
plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance("round-robin"))
workload = load_workload({trace!r}, 8, progress=False)
simulate_moe(plan, cluster.with_counts(8, 4), workload, algo="deepep", progress=False)
missed = sorted(
    f"{{module.__name__}}.{{name}}"
    for module in (bundles, kernels, routing, phaseloop)
    for name, fn in vars(module).items()
    if isinstance(fn, CPUDispatcher) and fn.stats.cache_misses
)
print("compiled here:", missed)
"""


@pytest.mark.slow
@needs_numba
def test_a_cold_warm_up_leaves_nothing_to_compile_for_any_simulate_path(
    tmp_path: Path, tiny_trace: Path
) -> None:
    # minutes: a cold compile of every kernel, on every CPU
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    warm = [sys.executable, "-m", "moe_placement.simulator.warmup"]
    cold = subprocess.run(warm, env=env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert f"compiled {len(ENTRIES)} of {len(ENTRIES)} simulator entries" in cold.stdout
    code = _PATHS.format(trace=str(tiny_trace))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "compiled here: []" in run.stdout, run.stdout  # every kernel loaded from the cache
    assert "cold: []" in run.stdout and "compiling simulator kernels" not in run.stderr, run.stdout
    again = subprocess.run(warm, env=env, capture_output=True, text=True)
    assert "already compiled" in again.stdout


@needs_numba
def test_the_loop_callees_compile_for_the_types_play_passes() -> None:
    # the warm-up compiles play's largest callees side by side for the example arguments of
    # callee_arguments; play's compile loads them only if its calls have exactly those types. Typing
    # play and the callers in between (a cache load of each callee, no lowering) records the types
    # they pass in each callee's signatures.
    import numba
    from numba.core import compiler, typed_passes
    from numba.core.registry import cpu_target

    from moe_placement.simulator.warmup import _loop_callees

    examples = _loop_callees()  # the bundles as their types: nothing compiled yet in this process
    # what a compile does first: the typing context learns numba's builtins (bool, len, ...)
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()

    def types_of(args: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(numba.typeof(arg) for arg in args)

    def type_body(dispatcher: Any, types: tuple[object, ...]) -> None:
        typed_passes.type_inference_stage(
            cpu_target.typing_context,
            cpu_target.target_context,
            compiler.run_frontend(dispatcher.py_func),
            types,
            None,
        )

    for dispatcher, args in examples.values():  # each caller records its callees' signatures
        type_body(dispatcher, types_of(args))
    # a kernel inlined into its callers (refill_view, solve_view) may load from the cache, where its
    # callees are not typed again: type its body for each signature its callers recorded
    for name in ("solve_view", "refill_view"):
        inlined = getattr(kernels, name)
        for signature in list(inlined.signatures):
            type_body(inlined, tuple(signature))
    for name, (dispatcher, args) in examples.items():
        if name != "play":  # called from Python: nothing compiled types it
            assert types_of(args) in dispatcher.signatures, (name, dispatcher.signatures)


def test_a_rare_kernel_announces_its_compile_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the phase loop's regrouping is not in the warm-up: its first use says it compiles, once
    monkeypatch.setattr(kernels, "HAVE_NUMBA", True)
    monkeypatch.setattr(kernels, "_cache_is_cold", lambda dispatcher: True)
    monkeypatch.setattr(kernels, "_rare_seen", [])
    monkeypatch.delenv(kernels.WARMUP_WORKER_ENV, raising=False)
    rare = object()
    kernels.announce_rare_compile(rare, "a rare path", 4)
    kernels.announce_rare_compile(rare, "a rare path", 4)
    assert capsys.readouterr().err == "compiling a rare path (once, ~4 s)...\n"
