"""Property tests on small random instances: bounds never exceed objectives, the exact model matches
brute force, the load bounds are valid, EPLB packing never puts one expert twice on a GPU."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate
from moe_placement.shapes import ModelShape
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.common import load_bound, optimal_shares
from moe_placement.solvers.context import layer_spec, make_context
from moe_placement.solvers.cpsat import objective_us
from moe_placement.solvers.eplb import eplb_layer
from moe_placement.workload import Workload

CONFIG = SolverConfig(time_limit_s=2.0, extra={"deterministic": True})


def workload(load: np.ndarray, coact: np.ndarray | None = None, top_k: int = 2) -> Workload:
    layers, experts = load.shape
    shape = ModelShape("tiny", layers, experts, top_k, 256, 128)
    return Workload(
        shape=shape,
        load=load,
        num_tokens=max(1, int(load.sum(axis=1).mean() / top_k)),
        source="test",
        coact=coact,
    )


def layouts(experts: int, gpus: int, spg: int):  # type: ignore[no-untyped-def]
    """Every assignment of ``experts`` distinct experts to ``gpus`` GPUs of ``spg`` slots."""
    for perm in itertools.permutations(range(experts)):
        yield [list(perm[g * spg : (g + 1) * spg]) for g in range(gpus)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 500), min_size=4, max_size=4),
    st.sampled_from([(2, 1), (2, 2), (4, 2)]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_best_equals_brute_force(
    loads: list[int], gpus: tuple[int, int], with_coact: bool, seed: int
) -> None:
    G, gpn = gpus
    E = 4
    load = np.array([loads], dtype=float)
    coact = None
    if with_coact:
        rng = np.random.default_rng(seed)
        # a pair cannot be chosen together more often than either expert is chosen at all
        cap = np.minimum.outer(load[0], load[0])
        c = np.triu(np.floor(rng.random((E, E)) * (cap + 1)), 1)
        coact = (c + c.T)[None]
    wl = workload(load, coact)
    problem = PlacementProblem(
        workloads=(wl,), cluster=load_cluster("h100-multirail").with_counts(G, gpn)
    )
    ctx = make_context(problem, CONFIG)
    spec = layer_spec(ctx, 0)
    spg = E // G
    best = min(objective_us(spec, held, np.ones(E)) for held in layouts(E, G, spg))
    # the exact model (no safeguard): its optimum is the brute-force optimum of the same objective
    exact = run_solver("cpsat", problem, CONFIG).provenance.extra
    assert exact["search_objective"] <= best * (1 + 1e-9) + 1e-9
    assert exact["search_objective"] >= best * (1 - 1e-9) - 1e-9
    assert exact["search_bound"] <= best * (1 + 1e-9) + 1e-9
    plan = run_solver("best", problem, CONFIG)
    search = plan.provenance.extra["search_objective"]
    assert search >= best * (1 - 1e-9) - 1e-9
    assert plan.provenance.extra["search_bound"] <= best * (1 + 1e-9) + 1e-9
    if not plan.provenance.extra.get("safeguard_layers"):
        assert search <= best * (1 + 1e-9) + 1e-9
    else:
        # the safeguard swapped in a layer the evaluator times faster (its load-only estimate ignores
        # co-activation, so it may disagree with the model): never slower than the exact model's plan
        mine = evaluate(plan, problem.cluster, wl).layer_us()
        theirs = evaluate(run_solver("cpsat", problem, CONFIG), problem.cluster, wl).layer_us()
        assert np.all(mine <= theirs * (1 + 1e-9) + 1e-9)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 1000), min_size=8, max_size=8),
    st.sampled_from([0, 4, 8]),
    st.sampled_from(["best", "eplb", "greedy", "cpsat"]),
)
def test_bound_below_objective(loads: list[int], redundant: int, name: str) -> None:
    load = np.array([loads], dtype=float) + 1.0
    problem = PlacementProblem(
        workloads=(workload(load),),
        cluster=load_cluster("h100-multirail").with_counts(4, 2),
        num_redundant=redundant,
    )
    plan = run_solver(name, problem, CONFIG)
    assert plan.provenance.bound <= plan.provenance.objective * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=6, max_size=6))
def test_load_bound_is_valid(loads: list[int]) -> None:
    load = np.array(loads, dtype=float)
    bound = load_bound(load, 3, 2, 0)
    optimum = min(max(load[h].sum() for h in held) for held in layouts(6, 3, 2))
    assert bound <= optimum + 1e-9


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=8, max_size=8), st.sampled_from([0, 4, 8, 16]))
def test_eplb_never_duplicates(loads: list[int], redundant: int) -> None:
    load = np.array(loads, dtype=float)
    spg = (8 + redundant) // 4
    modes = ((4, 2), (1, 1)) if spg <= 4 else ((1, 1),)  # a node's 4 experts fill <= 2 x 4 slots
    for groups, nodes in modes:
        row = eplb_layer(load, groups, nodes, 4 // nodes, spg)
        assert np.bincount(row, minlength=8).min() >= 1
        for g in range(4):
            assert len(set(row[g * spg : (g + 1) * spg].tolist())) == spg


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=6, max_size=6))
def test_shares_lp_balances(loads: list[int]) -> None:
    load = np.array(loads, dtype=float)
    held = [[0, 1, 2], [0, 3, 4], [1, 5, 2]]
    share, peak = optimal_shares(load, held)
    flat = np.array(held).ravel()
    assert np.allclose(np.bincount(flat, weights=share, minlength=6), 1.0)
    even = np.bincount(np.arange(9) // 3, weights=load[flat] / np.bincount(flat)[flat]).max()
    assert peak <= even + 1e-6
    assert peak >= load.sum() / 3 - 1e-6
