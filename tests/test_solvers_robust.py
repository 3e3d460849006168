"""Robust placement (``solvers/robust.py``), the trace time windows it and the bench rely on
(``traces/windows.py``), and the placement-free bound (``solvers/bounds.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.bounds import layer_bounds_us
from moe_placement.solvers.robust import (
    scenario_shares,
    shrink,
    window_loads,
    window_workloads,
)
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate
from moe_placement.traces.windows import TraceWindow, split_workloads, token_bounds


@pytest.fixture(scope="module")
def drift_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("robust") / "drift.parquet"
    config = SynthConfig(num_layers=2, num_experts=16, top_k=2, num_tokens=2048, drift=0.8)
    generate(config, path, seed=3)
    return path


def test_trace_window_reads_exactly_its_tokens(drift_trace: Path) -> None:
    whole = TraceFile(drift_trace).read_all()
    part = TraceWindow(drift_trace, 300, 1100).read_all()
    assert part.num_tokens == 800
    assert np.array_equal(part.expert_ids, whole.expert_ids[:, 300:1100])
    assert np.array_equal(part.seq_id, whole.seq_id[300:1100])
    with pytest.raises(PlacementError, match="outside"):
        TraceWindow(drift_trace, 0, 5000)
    assert token_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]


def test_split_halves_add_up_to_the_trace(drift_trace: Path) -> None:
    whole = derive_workload(TraceFile(drift_trace), num_gpus=4)
    fit, score = split_workloads(drift_trace, num_gpus=4)
    assert fit.num_tokens + score.num_tokens == whole.num_tokens
    np.testing.assert_allclose(fit.load + score.load, whole.load)
    assert fit.home_demand is not None and score.home_demand is not None
    np.testing.assert_allclose(fit.home_demand + score.home_demand, whole.home_demand)
    # the drift is visible: the halves' popularity differs more than sampling noise would make it
    share_fit = fit.load / fit.load.sum(axis=1, keepdims=True)
    share_score = score.load / score.load.sum(axis=1, keepdims=True)
    assert np.abs(share_fit - share_score).max() > 0.03


def test_window_workloads_partition_the_sample(drift_trace: Path) -> None:
    wl = derive_workload(TraceFile(drift_trace), num_gpus=4)
    parts = window_workloads(wl, 4)
    assert [p.num_tokens for p in parts] == [512] * 4
    np.testing.assert_allclose(sum(p.load for p in parts), wl.load)
    np.testing.assert_allclose(sum(p.home_demand for p in parts), wl.home_demand)  # type: ignore[misc]
    # each window streams its own tokens, so the evaluator sees that window only
    assert sum(c.seq_id.shape[0] for c in parts[1].chunks()) == 512
    scaled = window_loads(wl, 4)
    assert scaled is not None
    np.testing.assert_allclose(scaled.mean(axis=0), wl.load)


def test_shrink_keeps_totals_and_pulls_noisy_loads_to_the_mean() -> None:
    load = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert np.allclose(shrink(load, np.zeros_like(load)), load)  # no noise: unchanged
    noisy = shrink(load, np.full_like(load, 1e6))  # noise dwarfs the spread: the mean
    np.testing.assert_allclose(noisy, np.full_like(load, 25.0), rtol=1e-3)
    mid = shrink(load, np.full_like(load, 50.0))
    assert mid.sum() == pytest.approx(load.sum())
    assert np.all(np.abs(mid - 25.0) < np.abs(load - 25.0))


def test_scenario_shares_balance_every_scenario_no_worse_than_an_even_split() -> None:
    held = [[0, 1], [0, 2], [3, 1]]  # experts 0 and 1 have two replicas
    scenarios = np.array([[90.0, 10.0, 30.0, 20.0], [40.0, 60.0, 30.0, 20.0]])
    flat = np.asarray(held).ravel()
    even = 1.0 / np.bincount(flat)[flat]

    def worst_peak(share: np.ndarray) -> float:
        return max(float((s[flat] * share).reshape(3, 2).sum(axis=1).max()) for s in scenarios)

    for worst in (False, True):
        share = scenario_shares(scenarios, np.array([0.5, 0.5]), held, worst)
        np.testing.assert_allclose(np.bincount(flat, weights=share), 1.0)
        assert share.min() >= 0
        assert worst_peak(share) <= worst_peak(even) + 1e-9


def test_robust_solver_picks_per_layer_the_fastest_candidate_over_the_windows(
    drift_trace: Path,
) -> None:
    cluster = load_cluster(None).with_counts(4, 2)
    fit, score = split_workloads(drift_trace, num_gpus=4)
    problem = PlacementProblem(workloads=(fit,), cluster=cluster, num_redundant=4)
    config = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})
    plan = run_solver("robust", problem, config)
    extra = plan.provenance.extra
    assert extra["windows"] == 4
    # per layer the fastest over the windows: never slower there than any whole candidate
    parts = window_workloads(fit, 4)
    mine = np.mean([evaluate_many([plan], cluster, part)[0].layer_us().sum() for part in parts])
    assert mine <= min(extra["candidate_window_us"]) + 1e-6
    assert plan.provenance.objective is not None and plan.provenance.bound is not None
    [ev] = evaluate_many([plan], cluster, score)  # it places the traffic it has not seen
    assert ev.summary()["moe_time_us"] > 0


def test_robust_solver_refuses_several_traces(drift_trace: Path) -> None:
    cluster = load_cluster(None).with_counts(4, 2)
    wl = derive_workload(TraceFile(drift_trace), num_gpus=4)
    problem = PlacementProblem(workloads=(wl, wl), cluster=cluster)
    with pytest.raises(PlacementError, match="one --trace"):
        run_solver("robust", problem, SolverConfig(time_limit_s=1.0))


def test_bound_counts_communication_and_holds_for_every_baseline(tmp_path: Path) -> None:
    path = tmp_path / "top4.parquet"
    generate(SynthConfig(num_layers=2, num_experts=32, top_k=4, num_tokens=2048), path, seed=1)
    cluster = load_cluster(None).with_counts(16, 8)
    wl = derive_workload(TraceFile(path), num_gpus=16)
    compute, comm = layer_bounds_us(wl, cluster, 16)
    assert np.all(comm > 0)  # two nodes, top-4: some copies must cross
    problem = PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=16)
    names = ["contiguous", "eplb", "eplb-global", "greedy", "random", "round-robin"]
    plans = [run_solver(n, problem, SolverConfig(time_limit_s=1.0)) for n in names]
    for plan, ev in zip(plans, evaluate_many(plans, cluster, wl), strict=True):
        assert np.all(ev.layer_us() >= compute + comm - 1e-6), plan.provenance.solver
        assert plan.provenance.bound == pytest.approx(float((compute + comm).sum()))
