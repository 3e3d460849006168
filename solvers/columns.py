"""Column bounds on the busiest GPU's hits: every expert's GPU is one feasible *column* (``spg`` experts).

Whatever the layout, the GPU that holds expert ``e`` carries at least the fewest hits of any column
containing ``e`` (``hits = sum of loads - pair savings of experts sharing the GPU``), so the busiest
GPU's hits are at least ``max_e min_{column containing e} hits``. On skewed layers (a hot expert with
few co-activation partners) this is far stronger than the average-hits bound from the partition pair
bound: the hot expert's GPU cannot shed its load, and its partners save little.

* :func:`cheap_column_bound`: a closed form per expert, each pair's saving split between its two ends
  and each end credited with its strongest partners (valid, instant, weaker);
* :func:`exact_column_bound`: the same minimum solved by a small CP-SAT model per expert (pair
  variables with the partner cut ``sum_f y[e, f] <= (spg - 1) x[e]``, which makes its LP relaxation
  tight enough to prove in about 0.1 s at 64 experts), on the caller's integer coefficients so that it
  is exactly a valid cut of the caller's model; experts are tried in order of their cheap bound and
  the search stops once no remaining expert's cheap bound can beat the best proven one.

Column generation over whole partitions (the LP of set partitioning) would also bound the average;
see docs/solvers.md for what was measured.
"""

from __future__ import annotations

import time

import numpy as np
from ortools.sat.python import cp_model


def cheap_column_bound(
    load: np.ndarray, coact: np.ndarray, pair_factor: float, spg: int
) -> np.ndarray:
    """``[E]`` lower bounds on the hits of any ``spg``-expert column containing each expert.

    ``hits(col) = sum_{f in col} load[f] - pair_factor * sum_{f < g in col} coact[f, g]``. For a column
    with ``e``: pairs with ``e`` are charged to the partner, every other pair half to each end, and each
    end's half is at most half its ``spg - 2`` strongest partners among the experts other than ``e``.
    """
    E = load.size
    C = coact.astype(np.float64).copy()
    np.fill_diagonal(C, 0.0)
    out = np.empty(E)
    if spg <= 1:
        return load.astype(np.float64).copy()
    for e in range(E):
        others = np.flatnonzero(np.arange(E) != e)
        sub = C[np.ix_(others, others)]
        top = (-np.sort(-sub, axis=1))[:, : max(spg - 2, 0)].sum(axis=1)
        w = load[others] - pair_factor * C[e, others] - 0.5 * pair_factor * top
        out[e] = float(load[e]) + float(np.sort(w)[: spg - 1].sum())
    return out


def _min_hits_model(
    prim: np.ndarray,
    pairs: list[tuple[int, int, int]],
    spg: int,
    expert: int,
    time_limit_s: float,
    seed: int,
    deterministic: bool = False,
) -> tuple[int, int]:
    """(proven lower bound, best found) on ``min sum prim[col] - sum saving[pairs in col]`` over columns of
    ``spg`` experts containing ``expert``; integer coefficients, savings ``>= 0``."""
    E = prim.size
    m = cp_model.CpModel()
    x = [m.new_bool_var(f"x{f}") for f in range(E)]
    m.add(x[expert] == 1)
    m.add(sum(x) == spg)
    partners: list[list[cp_model.IntVar]] = [[] for _ in range(E)]
    saved = []
    for f, g, sav in pairs:
        y = m.new_bool_var(f"y{f}_{g}")
        m.add_implication(y, x[f])
        m.add_implication(y, x[g])
        partners[f].append(y)
        partners[g].append(y)
        saved.append(sav * y)
    # an expert has at most spg - 1 partners in the column: the cut that makes the relaxation tight
    for f in range(E):
        if len(partners[f]) > spg - 1:
            m.add(sum(partners[f]) <= (spg - 1) * x[f])
    m.minimize(sum(int(prim[f]) * x[f] for f in range(E)) - sum(saved))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1  # tiny model: one worker is fastest and deterministic
    solver.parameters.random_seed = seed
    solver.parameters.catch_sigint_signal = (
        False  # SIGINT is the command's (moe_placement.interrupt)
    )
    if deterministic:  # the same bound on every run and machine
        solver.parameters.max_deterministic_time = max(time_limit_s, 0.01)
    else:
        solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    status = solver.solve(m)
    lower = int(np.floor(solver.best_objective_bound + 1e-9))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return lower, int(prim.sum())
    return lower, round(solver.objective_value)


def exact_column_bound(
    prim: np.ndarray,
    pairs: list[tuple[int, int, int]],
    spg: int,
    *,
    time_limit_s: float,
    seed: int = 0,
    max_experts: int = 12,
    deterministic: bool = False,
) -> int:
    """A proven lower bound (integer units of ``prim``) on the busiest GPU's hits of any layout with one
    replica per expert: ``max_e min_{column containing e} hits``. ``pairs`` are ``(f, g, saving)`` with
    integer savings. Experts are solved in decreasing order of :func:`cheap_column_bound` (on the same
    coefficients) until the next one's cheap bound cannot raise the result, ``max_experts`` were tried,
    or ``time_limit_s`` is spent; the cheap bound is the floor of the answer."""
    E = prim.size
    if spg <= 1 or spg > E:
        return int(prim.max()) if spg == 1 and E else 0
    start = time.perf_counter()
    budget_s = time_limit_s
    save = np.zeros((E, E))
    for f, g, sav in pairs:
        save[f, g] = save[g, f] = sav
    cheap = cheap_column_bound(prim.astype(np.float64), save, 1.0, spg)
    best = int(np.floor(float(cheap.max()) + 1e-9))
    upper = np.array([_greedy_column(prim, save, spg, e) for e in range(E)])
    order = np.argsort(-cheap, kind="stable")
    tried = 0
    for e in order.tolist():
        # deterministic runs: every expert gets the same deterministic-time share, no wall clock
        left = (
            budget_s / max_experts
            if deterministic
            else time_limit_s - (time.perf_counter() - start)
        )
        if tried >= max_experts or left <= 0.01:
            break
        # a feasible column bounds the expert's minimum from above: no solve can raise `best` then
        if upper[e] <= best:
            continue
        lower, _ = _min_hits_model(prim, pairs, spg, int(e), left, seed, deterministic)
        tried += 1
        best = max(best, lower)
    return best


def _greedy_column(prim: np.ndarray, save: np.ndarray, spg: int, expert: int) -> float:
    """Hits of a greedy column containing ``expert`` (each step adds the expert with the fewest net
    hits given the members): an upper bound on that expert's minimum."""
    members = [expert]
    net = prim.astype(np.float64) - save[expert]
    net[expert] = np.inf
    total = float(prim[expert])
    for _ in range(spg - 1):
        f = int(np.argmin(net))
        total += float(net[f])
        members.append(f)
        net = net - save[f]
        net[members] = np.inf
    return total
