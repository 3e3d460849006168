"""The solvers' time model against the project's one metrics module (placement.metrics.evaluate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.objective import score_plan
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile

TRACE = Path(__file__).resolve().parents[1] / "traces" / "data" / "tiny_moe_trace.parquet"


def _problem(gpus: int, gpn: int, redundant: int) -> PlacementProblem:
    cluster = load_cluster("h100-multirail").with_counts(gpus, gpn)
    wl = derive_workload(TraceFile(TRACE), num_gpus=gpus)
    return PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=redundant)


@pytest.mark.parametrize(("gpus", "gpn"), [(8, 4), (4, 4)])
def test_model_tracks_evaluator_without_replicas(gpus: int, gpn: int) -> None:
    problem = _problem(gpus, gpn, 0)
    config = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})
    for name in ("contiguous", "round-robin", "greedy"):
        plan = run_solver(name, problem, config)
        model, bound = score_plan(problem, config, plan)
        truth = evaluate(plan, problem.cluster, problem.workload).summary()["moe_time_us"]
        assert bound <= model + 1e-9
        assert abs(model - truth) / truth < 0.05, (name, model, truth)


@pytest.mark.parametrize("redundant", [0, 8])
def test_best_no_worse_than_baselines_by_evaluator(redundant: int) -> None:
    problem = _problem(8, 4, redundant)
    config = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})
    times = {}
    for name in ("best", "greedy", "eplb", "eplb-global", "contiguous"):
        plan = run_solver(name, problem, config)
        times[name] = evaluate(plan, problem.cluster, problem.workload).summary()["moe_time_us"]
    assert times["best"] <= min(v for k, v in times.items() if k != "best") * (1 + 1e-9), times
