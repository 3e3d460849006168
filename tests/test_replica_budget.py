"""The model-wide replica budget (``solvers/budget.py``) and ``placement solve --redundant-total``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cluster import load_cluster
from moe_placement.errors import InfeasibleError, PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan
from moe_placement.shapes import model_shape
from moe_placement.solvers import PlacementProblem, SolverConfig
from moe_placement.solvers.budget import (
    allocate,
    first_step,
    redundant_for_memory,
    solve_with_budget,
    total_from_args,
)
from moe_placement.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "traces" / "data" / "tiny_moe_trace.parquet"


def _load_only(load: np.ndarray) -> Workload:
    shape = model_shape("mixtral-8x7b").replace(
        num_moe_layers=load.shape[0], num_experts=load.shape[1], top_k=2
    )
    return Workload(shape=shape, load=load, num_tokens=int(load[0].sum() / 2), source="test")


def _skewed_problem(num_redundant: int = 8) -> PlacementProblem:
    flat = np.full(16, 100.0)
    skewed = flat.copy()
    skewed[0] = 1500.0  # one very hot expert: this layer gains from replicas, the flat one does not
    load = np.stack([flat, skewed, flat])
    cluster = load_cluster(None).with_counts(8, 4)
    return PlacementProblem(
        workloads=(_load_only(load),), cluster=cluster, num_redundant=num_redundant
    )


def test_allocate_spends_the_budget_where_it_pays() -> None:
    problem = _skewed_problem()
    one_step = allocate(problem, 8)  # one slot per GPU to give: the skewed layer takes it
    assert one_step.redundant == (0, 8, 0)
    assert sum(one_step.predicted_us) < sum(one_step.predicted_uniform_us)  # uniform: 0 each
    budget = allocate(problem, 24)
    assert sum(budget.redundant) == 24
    assert all(r % 8 == 0 and r >= first_step(16, 8) for r in budget.redundant)
    assert budget.redundant[1] == max(budget.redundant)
    assert budget.uniform == 8
    assert sum(budget.predicted_us) <= sum(budget.predicted_uniform_us)


def test_allocate_refuses_budgets_that_do_not_fit() -> None:
    problem = _skewed_problem()
    with pytest.raises(PlacementError, match="multiple of 8"):
        allocate(problem, 20)
    odd = PlacementProblem(
        workloads=(_load_only(np.full((2, 12), 10.0)),),
        cluster=load_cluster(None).with_counts(8, 4),
        num_redundant=4,
    )
    with pytest.raises(InfeasibleError, match="below"):
        allocate(odd, 4)  # 12 experts on 8 GPUs need 4 per layer: 8 in all


def test_memory_sets_the_total() -> None:
    problem = _skewed_problem()
    per_expert = problem.workload.shape.expert_weight_bytes
    # room for 10 slots per GPU over all layers: 80 slots, 48 for the experts, 32 redundant
    gib = 10.5 * per_expert / (1 << 30)
    assert redundant_for_memory(gib, problem) == 80 - 48
    assert total_from_args(problem, None, gib) == 32
    assert total_from_args(problem, 16, gib) == 16
    with pytest.raises(InfeasibleError, match="cannot hold"):
        redundant_for_memory(4 * per_expert / (1 << 30), problem)


def test_solve_with_budget_pads_to_equal_slots_and_times_each_layer() -> None:
    problem = _skewed_problem()
    result = solve_with_budget(problem, SolverConfig(time_limit_s=1.0), "eplb-global", 24)
    plan = result.plan
    widest = (16 + max(result.budget.redundant)) // 8
    assert plan.slots_per_gpu == widest
    shares = plan.shares()
    for layer, r in enumerate(result.budget.redundant):
        used = (shares[layer] > 0).sum()
        assert used >= 16 + r - 1e-9 or r == max(result.budget.redundant)
        assert (shares[layer] == 0).sum() == (widest * 8) - (16 + r)  # the pads, and only them
    # pads take no tokens: every layer's GPU loads are those of the layer as solved
    [padded] = evaluate_many([plan], problem.cluster, problem.workload)
    assert padded.gpu_load.sum() == pytest.approx(problem.workload.load.sum())
    assert result.uneven_layer_us.shape == (3,)
    assert result.gain == pytest.approx(
        1 - result.uneven_layer_us.sum() / result.uniform_layer_us.sum()
    )
    assert plan.provenance.extra["redundant_per_layer"] == list(result.budget.redundant)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe_placement.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # two CLI runs on the per-token trace: 20-100 s on a loaded 2-core machine
def test_cli_redundant_total(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    base = ["solve", "--trace", str(BUNDLED), "--gpus", "8", "--gpus-per-node", "4"]
    done = _cli(
        *base, "--solver", "eplb-global", "--redundant-total", "32", "--json", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    budget = json.loads(done.stdout)["budget"]
    assert budget["redundant_total"] == 32 and sum(budget["redundant_per_layer"]) == 32
    plan = Plan.load(out)
    assert plan.provenance.extra["redundant_per_layer"] == budget["redundant_per_layer"]
    bad = _cli(*base, "--redundant-total", "5", "--out", str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert "multiple of 8" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.json").exists()
