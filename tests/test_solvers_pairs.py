"""Swap search, the partition pair bound, node-limited routing and ``placement compare``."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.context import layer_spec, make_context
from moe_placement.solvers.cpsat import analytic_bound_us, objective_us
from moe_placement.solvers.pairsearch import partition_pair_bound, swap_search
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate


def _partitions(items: list[int], size: int):  # type: ignore[no-untyped-def]
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for others in itertools.combinations(rest, size - 1):
        left = [i for i in rest if i not in others]
        for tail in _partitions(left, size):
            yield [[first, *others], *tail]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=28, max_size=28), st.sampled_from([(2, 4), (4, 2)]))
def test_partition_pair_bound_is_valid(values: list[int], shape: tuple[int, int]) -> None:
    groups, size = shape
    C = np.zeros((8, 8))
    C[np.triu_indices(8, 1)] = values
    C = C + C.T
    best = max(
        sum(C[e, f] for g in part for e, f in itertools.combinations(g, 2))
        for part in _partitions(list(range(8)), size)
    )
    assert partition_pair_bound(C, groups, size) >= best - 1e-6


@pytest.fixture(scope="module")
def olmoe_like(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("pairs") / "olmoe.parquet"
    cfg = SynthConfig(num_layers=2, num_experts=32, top_k=8, num_tokens=2048, group_size=8)
    generate(cfg, path, seed=5)
    return path


def test_swap_search_never_worsens(olmoe_like: Path) -> None:
    wl = derive_workload(TraceFile(olmoe_like), num_gpus=4)
    problem = PlacementProblem(
        workloads=(wl,), cluster=load_cluster("h100-multirail").with_counts(4, 4)
    )
    ctx = make_context(problem, SolverConfig(time_limit_s=5.0))
    spec = layer_spec(ctx, 0)
    start = [list(range(g * 8, (g + 1) * 8)) for g in range(4)]
    held = swap_search(
        spec.loads[0],
        spec.coact,
        start,
        compute_us=spec.time.us_per_assignment,
        hit_us=spec.nvlink_hit_us(),
        pair_factor=spec.pair_factor,
        until=float("inf"),
        rng=np.random.default_rng(0),
        max_steps=300,
    )
    assert sorted(e for row in held for e in row) == list(range(32))
    assert all(len(row) == 8 for row in held)
    ones = np.ones(32)
    after = objective_us(spec, held, ones)
    assert after <= objective_us(spec, start, ones) + 1e-9
    assert analytic_bound_us(spec, 0) <= after + 1e-9


def test_best_single_node_uses_swap_search(olmoe_like: Path) -> None:
    wl = derive_workload(TraceFile(olmoe_like), num_gpus=4)
    cluster = load_cluster("h100-multirail").with_counts(4, 4)
    problem = PlacementProblem(workloads=(wl,), cluster=cluster)
    config = SolverConfig(time_limit_s=2.0, extra={"deterministic": True})
    best = run_solver("best", problem, config).provenance
    greedy = run_solver("greedy", problem, config).provenance
    assert best.bound is not None and best.objective is not None and greedy.objective is not None
    assert best.bound <= best.objective + 1e-9
    assert best.objective <= greedy.objective + 1e-9


def test_node_limit_lowers_nic_term(olmoe_like: Path) -> None:
    wl = derive_workload(TraceFile(olmoe_like), num_gpus=8)
    cluster = load_cluster("h100-multirail").with_counts(8, 2)  # 4 nodes
    problem = PlacementProblem(workloads=(wl,), cluster=cluster)
    plan = run_solver("contiguous", problem, SolverConfig(time_limit_s=1.0))
    free = SolverConfig(time_limit_s=1.0)
    limited = SolverConfig(time_limit_s=1.0, node_limit=1)
    held = plan.phy2log[0].reshape(8, -1).tolist()
    share = np.ones(plan.phy2log.shape[1])
    spec_free = layer_spec(make_context(problem, free), 0)
    spec_lim = layer_spec(make_context(problem, limited), 0)
    assert objective_us(spec_lim, held, share) < objective_us(spec_free, held, share)
    assert analytic_bound_us(spec_lim, 0) <= objective_us(spec_lim, held, share) + 1e-9
    solved = run_solver("best", problem, limited).provenance
    assert solved.bound is not None and solved.objective is not None
    assert solved.bound <= solved.objective + 1e-9
    with pytest.raises(PlacementError):
        SolverConfig(node_limit=0)


def test_compare_cli(olmoe_like: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--trace", str(olmoe_like), "--gpus", "4", "--gpus-per-node", "2"]
    rc = main(
        ["compare", *base, "--time-limit", "1", "--solvers", "greedy,best", "--node-limit", "1"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "greedy" in out and "best" in out and "gap" in out
    assert main(["compare", *base, "--solvers", "magic"]) == 2
    assert "unknown solver" in capsys.readouterr().err
    assert (
        main(["solve", *base, "--node-limit", "0", "--out", str(olmoe_like.parent / "p.json")]) == 2
    )
