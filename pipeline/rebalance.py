"""Replay a time-ordered trace under a rebalancing policy (``placement rebalance``).

The trace is cut into ``windows`` consecutive token windows (file order is serving order,
:mod:`moe_placement.traces.windows`); each window stands for ``steps_per_window`` serving steps. The
first window fits the initial plan; every later window is served by the plan in force, timed by the
evaluator. Every ``interval`` windows the plan is re-solved on the window just served, from the plan in
force (``current``) with at most ``max_moves`` moved slots (``None``: a full re-placement, as EPLB's
periodic rebalance does). A move copies one expert's weights to its new GPU: the busiest receiving GPU
takes ``moved slots x expert bytes / NIC bandwidth``; overlapped with serving, only what exceeds the
window's serving time is exposed. The replay reports, per window, imbalance, MoE time, slots and bytes
moved, and the total time for each interval tried, so that the best interval can be read off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.windows import token_bounds, window_workload
from moe_placement.workload import Workload


@dataclass(frozen=True)
class Policy:
    """When and how much to rebalance. ``interval`` None: never."""

    interval: int | None
    max_moves: int | None
    overlap: bool = True


@dataclass(frozen=True)
class WindowRow:
    """One served window: its imbalance, MoE time (us per step, all MoE layers), and the migration
    that followed it (slots, bytes, us of transfer, us exposed to serving)."""

    window: int
    max_over_mean: float
    moe_time_us: float
    moved_slots: int
    moved_bytes: float
    migration_us: float
    exposed_us: float


def moved_slots_per_gpu(old: Plan, new: Plan) -> np.ndarray:
    """Experts each GPU must receive (summed over layers): those it holds in ``new`` but not in
    ``old``. Reordering a GPU's own slots moves no weights."""
    G = old.num_gpus
    received = np.zeros(G, dtype=np.int64)
    before = old.phy2log.reshape(old.num_layers, G, old.slots_per_gpu)
    after = new.phy2log.reshape(new.num_layers, G, new.slots_per_gpu)
    for layer in range(old.num_layers):
        for g in range(G):
            received[g] += len(set(after[layer, g].tolist()) - set(before[layer, g].tolist()))
    return received


def replay(
    windows: list[Workload],
    cluster: ClusterSpec,
    num_redundant: int,
    policy: Policy,
    solver: str,
    config: SolverConfig,
    steps_per_window: int,
) -> list[WindowRow]:
    """Serve windows 1.. with the plan fitted on window 0, rebalancing under ``policy``."""

    def solve(wl: Workload, current: Plan | None, max_moves: int | None) -> Plan:
        problem = PlacementProblem(
            workloads=(wl,),
            cluster=cluster,
            num_redundant=num_redundant,
            current=current,
            max_moves=max_moves if current is not None else None,
        )
        return run_solver(solver, problem, config)

    plan = solve(windows[0], None, None)
    expert_bytes = windows[0].shape.expert_weight_bytes
    nic_bytes_per_us = cluster.nic_effective_gbytes_per_s * 1e3
    rows = []
    for w in range(1, len(windows)):
        summary = evaluate(plan, cluster, windows[w]).summary()
        moe_us = float(summary["moe_time_us"])
        moved, moved_bytes, migration_us, exposed_us = 0, 0.0, 0.0, 0.0
        due = policy.interval is not None and w % policy.interval == 0 and w + 1 < len(windows)
        if due:
            new = solve(windows[w], plan, policy.max_moves)
            per_gpu = moved_slots_per_gpu(plan, new)
            moved = int(per_gpu.sum())
            moved_bytes = moved * expert_bytes
            migration_us = float(per_gpu.max()) * expert_bytes / nic_bytes_per_us
            serving_us = moe_us * steps_per_window
            exposed_us = max(0.0, migration_us - serving_us) if policy.overlap else migration_us
            plan = new
        rows.append(
            WindowRow(
                window=w,
                max_over_mean=float(summary["mean_max_over_mean"]),
                moe_time_us=moe_us,
                moved_slots=moved,
                moved_bytes=moved_bytes,
                migration_us=migration_us,
                exposed_us=exposed_us,
            )
        )
    return rows


def total_us(rows: list[WindowRow], steps_per_window: int) -> float:
    """Serving plus exposed migration time over the replay (us)."""
    return sum(r.moe_time_us * steps_per_window + r.exposed_us for r in rows)


def trace_windows(path: str, windows: int, num_gpus: int) -> list[Workload]:
    """The trace cut into ``windows`` consecutive token windows, each derived for ``num_gpus`` homes."""
    total = TraceFile(path).num_tokens
    return [
        window_workload(path, lo, hi, num_gpus=num_gpus) for lo, hi in token_bounds(total, windows)
    ]


def compare_intervals(
    windows: list[Workload],
    cluster: ClusterSpec,
    num_redundant: int,
    intervals: list[int | None],
    max_moves: int | None,
    overlap: bool,
    solver: str,
    config: SolverConfig,
    steps_per_window: int,
) -> dict[int | None, list[WindowRow]]:
    """One replay per interval (None: never rebalance)."""
    return {
        interval: replay(
            windows,
            cluster,
            num_redundant,
            dataclasses.replace(Policy(interval, max_moves, overlap)),
            solver,
            config,
            steps_per_window,
        )
        for interval in intervals
    }
