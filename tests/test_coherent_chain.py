"""Coherent mode out of sample (issue 16 part 4): ``robust --mode coherent`` (the chain placement of
``solvers/chain.py``) fitted on the first half of the bundled trace, scored on the second half; and
what every plan's bound says it covers (part 5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.bounds import bound_statement
from moe_placement.solvers.chain import ChainParams, chain_plan
from moe_placement.traces.windows import split_workloads

BUNDLED = Path(__file__).resolve().parents[1] / "traces" / "data" / "tiny_moe_trace.parquet"
# measured 28.5% fewer hops than contiguous out of sample (max/mean 1.790 vs 1.865); the issue asks 25%
MIN_HOP_REDUCTION = 0.25
BALANCE_SLACK = 0.05


def _config() -> SolverConfig:
    return SolverConfig(time_limit_s=1.0, seed=0, extra={"deterministic": True})


def test_robust_coherent_beats_contiguous_on_unseen_tokens() -> None:
    fit, score = split_workloads(BUNDLED, num_gpus=16)
    cluster = load_cluster(None).with_counts(16, 8)
    problem = PlacementProblem(workloads=(fit,), cluster=cluster, num_redundant=16, mode="coherent")
    robust = run_solver("robust", problem, _config())
    contiguous = run_solver("contiguous", problem, _config())
    assert robust.provenance.method.startswith("coherent chain")
    ours, base = (
        ev.summary() for ev in evaluate_many([robust, contiguous], cluster, score, mode="coherent")
    )
    reduction = 1.0 - ours["hops"] / base["hops"]
    assert reduction >= MIN_HOP_REDUCTION, f"only {100 * reduction:.1f}% fewer hops than contiguous"
    assert ours["mean_max_over_mean"] <= base["mean_max_over_mean"] * (1 + BALANCE_SLACK)


def test_chain_plan_is_valid_and_holds_every_expert() -> None:
    fit, _ = split_workloads(BUNDLED, num_gpus=8)
    for params in (ChainParams(0.0, 0.0, 0.0), ChainParams(1.0, 100.0, 0.9)):
        plan = chain_plan(fit, 8, 4, 8, params).validate()
        for layer in range(plan.num_layers):
            assert set(plan.phy2log[layer].tolist()) == set(range(fit.num_experts))
            per_gpu = plan.phy2log[layer].reshape(8, -1)
            assert all(
                len(set(row.tolist())) == row.size for row in per_gpu
            )  # no expert twice on a GPU


def test_chain_refuses_load_only_input() -> None:
    fit, _ = split_workloads(BUNDLED, num_gpus=16)
    load_only = dataclasses.replace(fit, chunk_source=None)
    with pytest.raises(PlacementError, match="per-token"):
        chain_plan(load_only, 16, 8, 16, ChainParams(0.0, 0.0, 0.3))


def test_every_plan_says_what_its_bound_covers() -> None:
    fit, _ = split_workloads(BUNDLED, num_gpus=16)
    cluster = load_cluster(None).with_counts(16, 8)
    for mode, words in (("standard", "dispatch and combine floors"), ("coherent", "counted as 0")):
        problem = PlacementProblem(workloads=(fit,), cluster=cluster, num_redundant=16, mode=mode)
        for solver in ("contiguous", "robust"):
            prov = run_solver(solver, problem, _config()).provenance
            assert prov.bound is not None and prov.objective is not None
            assert prov.bound <= prov.objective  # no plan beats the bound
            covers = prov.extra["bound_covers"]
            assert words in covers and "Loose" in covers
    load_only = dataclasses.replace(fit, chunk_source=None)
    assert "load-only" in bound_statement(load_only, cluster)
