"""Robust placement: a plan for the traffic to come, not only for the sample it was fitted to.

A plan fitted to one sample balances that sample almost perfectly (replica shares tuned by an LP to its
exact loads) and loses much of it on the next tokens. The ``robust`` solver fits the *variation* as well:

* **time windows as scenarios** (per-token traces): the sample is cut into ``W`` consecutive windows
  (``config.extra["windows"]``, default :data:`DEFAULT_WINDOWS`); each window's load, scaled to the whole
  sample, is a scenario of what the next traffic may look like;
* **shrunk expected load**: each expert's load is pulled toward its layer's mean by its statistical
  uncertainty (empirical Bayes: the between-window variance, or the Poisson variance of a load-only
  count, against the spread of the loads), so replica counts follow what is reliably hot;
* **search over the scenarios**: the ``best`` solver's layer models see the shrunk load and every window
  (weight 1/2 on the expected load, 1/2 spread over the windows: the expected busiest GPU over what the
  traffic may be), or the worst of them with ``config.robust == "worst"``;
* **replica shares by a scenario LP**: the shares minimise the same weighted (or worst) busiest-GPU load
  over the scenarios, instead of fitting the sample exactly.

Load-only inputs (``logical_count`` JSON) carry no time order: their only uncertainty is the count's
Poisson noise, negligible on large samples, so there ``robust`` returns ``best``'s plan for the shrunk
load. With a large stationary sample the windows agree, the shrinkage vanishes and the plan converges to
``best``'s.

In coherent mode ``robust`` is the chain placement of :mod:`moe_placement.solvers.chain` (experts placed
with their likely predecessors, shrunk transitions, chosen by held-out hops over time windows).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers import chain
from moe_placement.solvers.base import REGISTRY, register
from moe_placement.solvers.common import make_plan
from moe_placement.solvers.problem import PlacementProblem, SolverConfig
from moe_placement.workload import Workload, home_gpus

DEFAULT_WINDOWS = 4
MIN_TOKENS_PER_WINDOW = 64  # fewer and a window's load is mostly noise: use fewer windows
# load-only inputs have no time order: their scenarios can only be drawn, log-normal around the counts
# (``config.extra["drift_sigma"]``). Between two runs of one phase of DeepSeek-V3 serving (the shared
# logical_count files) the per-expert log-load ratio has a standard deviation of 0.30 (prefill 1024 vs 4096
# input tokens) and 0.295 (the two decode runs); between prefill and decode 0.35-0.54. Hedging with
# sigma 0.3 cost 3.9% in-sample and gained nothing on decode (bench/solvers_robustness.py, dsv3-p2d: the
# shift is a few experts turning hot, not noise), so the default draws none
DRIFT_SIGMA = 0.0
DRIFT_DRAWS = 6
COHERENT_FOLDS = 4  # coherent mode: candidates fitted on 3 of 4 time windows, scored on the 4th
EXPECTED_WEIGHT = 0.5  # weight of the shrunk expected load among the scenarios (rest: the windows)


@dataclass(frozen=True)
class _WindowChunk:
    """Complete tokens of one window (the :class:`moe_placement.workload.Chunk` fields)."""

    step: np.ndarray
    seq_id: np.ndarray
    pos: np.ndarray
    expert_ids: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.seq_id.shape[0])


def _window_chunks(workload: Workload, lo: int, hi: int) -> Iterator[_WindowChunk]:
    """The tokens ``[lo, hi)`` (stream order) of a per-token workload."""
    seen = 0
    for chunk in workload.chunks():
        n = int(np.asarray(chunk.seq_id).shape[0])
        a, b = max(lo - seen, 0), min(hi - seen, n)
        seen += n
        if a < b:
            yield _WindowChunk(
                np.asarray(chunk.step)[a:b],
                np.asarray(chunk.seq_id)[a:b],
                np.asarray(chunk.pos)[a:b],
                np.asarray(chunk.expert_ids)[:, a:b],
            )
        if seen >= hi:
            return


def window_workloads(workload: Workload, windows: int) -> list[Workload]:
    """``windows`` consecutive token windows of a per-token trace (stream order = time order), each a
    workload of its own (load and home demand of its tokens, the whole trace's routing tables); empty
    for load-only inputs or when the sample has too few tokens for two windows."""
    if not workload.per_token:
        return []
    total = int(workload.num_tokens)
    windows = min(windows, total // MIN_TOKENS_PER_WINDOW)
    if windows < 2:
        return []
    L, E = workload.num_layers, workload.num_experts
    G = workload.home_num_gpus
    edges = [(i * total) // windows for i in range(windows + 1)]
    load = np.zeros((windows, L, E))
    demand = None if G is None else np.zeros((windows, L, G, E))
    seen = 0
    for chunk in workload.chunks():
        ids = np.asarray(chunk.expert_ids)  # [layers, n, k]
        n, k = ids.shape[1], ids.shape[2]
        which = np.searchsorted(edges, np.arange(seen, seen + n), side="right") - 1
        home = None if G is None else home_gpus(chunk.seq_id, chunk.pos, G, workload.home_policy)
        seen += n
        for layer in range(L):
            flat = np.repeat(which, k) * E + ids[layer].ravel()
            load[:, layer] += np.bincount(flat, minlength=windows * E).reshape(windows, E)
            if demand is not None and home is not None and G is not None:
                cell = (np.repeat(which, k) * G + np.repeat(home, k)) * E + ids[layer].ravel()
                demand[:, layer] += np.bincount(cell, minlength=windows * G * E).reshape(
                    windows, G, E
                )
    out = []
    for w in range(windows):
        lo, hi = edges[w], edges[w + 1]
        out.append(
            dataclasses.replace(
                workload,
                load=load[w],
                num_tokens=hi - lo,
                source=f"{workload.source} (tokens {lo}-{hi})",
                home_demand=None if demand is None else demand[w],
                chunk_source=functools.partial(_window_chunks, workload, lo, hi),
            )
        )
    return out


def drift_workloads(
    workload: Workload, draws: int, sigma: float, rng: np.random.Generator
) -> list[Workload]:
    """``draws`` scenarios of a load-only workload: each expert's load times ``exp(sigma z - sigma^2 / 2)``,
    ``z`` standard normal (log-normal drift, mean preserved), each layer rescaled to its total."""
    if draws < 2 or sigma <= 0:
        return []
    load = np.asarray(workload.load, dtype=np.float64)
    out = []
    for d in range(draws):
        factor = np.exp(sigma * rng.standard_normal(load.shape) - sigma**2 / 2)
        drawn = load * factor
        drawn *= load.sum(axis=1, keepdims=True) / np.maximum(
            drawn.sum(axis=1, keepdims=True), 1e-300
        )
        out.append(
            dataclasses.replace(workload, load=drawn, source=f"{workload.source} (drift draw {d})")
        )
    return out


def window_loads(workload: Workload, windows: int) -> np.ndarray | None:
    """``[windows, layers, experts]``: the loads of :func:`window_workloads`, each scaled to the whole
    sample's token count; None when there are no windows."""
    parts = window_workloads(workload, windows)
    if not parts:
        return None
    scale = np.array([workload.num_tokens / part.num_tokens for part in parts])
    return np.stack([part.load for part in parts]) * scale[:, None, None]


def load_variance(workload: Workload, windows: np.ndarray | None) -> np.ndarray:
    """``[layers, experts]``: how much the load of the next window of the sample's size may differ from
    the sample, per expert. With windows: their variance (ddof 1), which holds both sampling noise and
    drift; load-only: the Poisson variance of a count (the load itself)."""
    if windows is None:
        return np.asarray(workload.load, dtype=np.float64).copy()
    return np.asarray(windows.var(axis=0, ddof=1), dtype=np.float64)


def shrink(load: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Empirical-Bayes shrinkage of ``load[layers, experts]`` toward each layer's mean: the factor is
    noise / (noise + signal), noise the mean ``variance``, signal the spread of the loads beyond it.
    Keeps each layer's total."""
    mean = load.mean(axis=1, keepdims=True)
    noise = variance.mean(axis=1, keepdims=True)
    signal = np.maximum(load.var(axis=1, keepdims=True) - noise, 0.0)
    factor = np.where(noise + signal > 0, noise / np.maximum(noise + signal, 1e-300), 0.0)
    return mean + (1.0 - factor) * (load - mean)


def scenario_shares(
    scenarios: np.ndarray, weights: np.ndarray, held: list[list[int]], worst: bool
) -> np.ndarray:
    """Replica shares ``[slots]`` minimising the weighted sum (or the worst) over ``scenarios[S, E]`` of
    the busiest GPU's load, for a fixed layout ``held[G][spg]`` (an LP, GLOP). Each expert's shares sum
    to 1; experts with one replica take share 1."""
    from ortools.linear_solver import pywraplp

    G, spg = len(held), len(held[0])
    flat = np.asarray(held, dtype=np.int64).ravel()
    cnt = np.bincount(flat, minlength=scenarios.shape[1])
    share = 1.0 / cnt[flat]
    if cnt.max() <= 1:
        return share
    solver = pywraplp.Solver.CreateSolver("GLOP")
    unit = max(float(scenarios.max()), 1.0)
    var = {s: solver.NumVar(0.0, 1.0, f"s{s}") for s in range(flat.size) if cnt[flat[s]] > 1}
    for e in np.flatnonzero(cnt > 1).tolist():
        solver.Add(sum(var[s] for s in np.flatnonzero(flat == e).tolist()) == 1.0)  # type: ignore[misc]
    peaks = [solver.NumVar(0.0, solver.infinity(), f"peak{i}") for i in range(len(scenarios))]
    top = solver.NumVar(0.0, solver.infinity(), "worst") if worst else None
    for i, load in enumerate(scenarios):
        for g in range(G):
            fixed, terms = 0.0, []
            for s in range(g * spg, (g + 1) * spg):
                e = int(flat[s])
                if cnt[e] > 1:
                    terms.append(var[s] * (float(load[e]) / unit))
                else:
                    fixed += float(load[e]) / unit
            solver.Add(sum(terms) + fixed <= peaks[i])  # type: ignore[arg-type]
        if top is not None:
            solver.Add(peaks[i] <= top)
    if top is not None:
        solver.Minimize(top)
    else:
        solver.Minimize(sum(float(w) * p for w, p in zip(weights, peaks, strict=True)))  # type: ignore[arg-type]
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return share
    for s, v in var.items():
        share[s] = max(float(v.solution_value()), 0.0)
    # exact sums per expert despite the LP's tolerance
    sums = np.bincount(flat, weights=share, minlength=cnt.size)
    return share / np.where(sums > 0, sums, 1.0)[flat]


def robust_problem(
    problem: PlacementProblem, parts: list[Workload]
) -> tuple[PlacementProblem, np.ndarray, np.ndarray]:
    """The scenario problem the search sees: the primary trace with its shrunk load, then one trace per
    time window ``parts`` (same routing tables, the window's load scaled to the sample). Returns it with
    the scenarios' loads ``[S, layers, experts]`` and their weights ``[S]`` (summing to 1)."""
    wl = problem.workload
    per_window = None
    if parts:
        scale = np.array([wl.num_tokens / part.num_tokens for part in parts])
        per_window = np.stack([part.load for part in parts]) * scale[:, None, None]
    expected = shrink(np.asarray(wl.load, dtype=np.float64), load_variance(wl, per_window))
    scenarios = [expected] if per_window is None else [expected, *per_window]
    weights = np.array([1.0])
    if per_window is not None:
        rest = (1 - EXPECTED_WEIGHT) / len(per_window)
        weights = np.array([EXPECTED_WEIGHT] + [rest] * len(per_window))
    workloads = tuple(
        dataclasses.replace(wl, load=load, source=f"{wl.source} (scenario {i})")
        for i, load in enumerate(scenarios)
    )
    scenario_problem = dataclasses.replace(
        problem, workloads=workloads, weights=tuple(float(w) for w in weights)
    )
    return scenario_problem, np.stack(scenarios), weights


def _with_shares(plan: Plan, share: np.ndarray | None, label: str) -> Plan:
    return dataclasses.replace(
        plan,
        replica_share=share,
        provenance=dataclasses.replace(plan.provenance, method=label),
    )


def _candidates(
    problem: PlacementProblem, config: SolverConfig, rng: np.random.Generator, parts: list[Workload]
) -> list[Plan]:
    """``best`` on the sample as it is (its LP shares, and even shares), and ``best`` on the scenario
    problem (scenario-LP shares, and even shares); half the time limit each."""
    half = dataclasses.replace(config, time_limit_s=config.time_limit_s / 2)
    best = REGISTRY["best"].fn
    plain = best(problem, half, rng=rng)
    scenario_problem, scenarios, weights = robust_problem(problem, parts)
    hedged = best(scenario_problem, half, rng=rng)
    out = [_with_shares(plain, plain.replica_share, "best")]
    if problem.num_redundant == 0:
        return [*out, _with_shares(hedged, None, "scenarios")]
    G, spg = hedged.num_gpus, hedged.slots_per_gpu
    lp = np.stack(
        [
            scenario_shares(
                scenarios[:, layer],
                weights,
                hedged.phy2log[layer].reshape(G, spg).tolist(),
                config.robust == "worst",
            )
            for layer in range(hedged.num_layers)
        ]
    )
    return [
        *out,
        _with_shares(plain, None, "best, even shares"),
        _with_shares(hedged, lp, "scenarios, scenario-LP shares"),
        _with_shares(hedged, None, "scenarios, even shares"),
    ]


def _window_times(
    problem: PlacementProblem, plans: list[Plan], parts: list[Workload], worst: bool
) -> np.ndarray:
    """``[plans, layers]`` evaluator time (us per layer, per step) over the windows: the mean of each
    window's time, or the slowest window (``worst``). No windows: the time on the sample."""
    samples = parts or [problem.workload]
    times = np.stack(
        [
            np.stack(
                [
                    ev.layer_us()
                    for ev in evaluate_many(plans, problem.cluster, part, mode=problem.mode)
                ]
            )
            for part in samples
        ]
    )  # [windows, plans, layers]
    return times.max(axis=0) if worst else times.mean(axis=0)


def _coherent(problem: PlacementProblem) -> Plan:
    """Coherent mode: the chain placement (:mod:`moe_placement.solvers.chain`), its candidate chosen by
    held-out hops over time windows of the sample (fit on all but one, score on that one, each in turn)."""
    parts = window_workloads(problem.workload, COHERENT_FOLDS)
    params, table = chain.cross_validate(problem, parts)
    if not table:
        params = chain.ChainParams(chain.BETAS[0], chain.GAMMAS[0], chain.SLACKS[0])
    extra = {
        "folds": len(parts) if table else 0,
        "chain_params": dataclasses.asdict(params),
        "chain_candidates": table,
    }
    method = f"coherent chain (beta {params.beta}, gamma {params.gamma}, slack {params.slack})"
    return chain.chain_plan(
        problem.workload,
        problem.num_gpus,
        problem.gpus_per_node,
        problem.num_redundant,
        params,
        Provenance(solver="robust", method=method, extra=extra),
    )


@register(
    "robust",
    "best fitted to the sample and to time-window scenarios; per layer the plan fastest over the windows",
)
def robust_solver(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    if len(problem.workloads) > 1:
        raise PlacementError(
            "the robust solver makes its own scenarios from one trace's time windows; give one --trace"
        )
    windows = int(config.extra.get("windows", DEFAULT_WINDOWS))
    if windows < 1:
        raise PlacementError("--robust-windows must be >= 1")
    if problem.mode == "coherent":
        return _coherent(problem)
    parts = window_workloads(problem.workload, windows)
    if not parts and not problem.workload.per_token:
        sigma = float(config.extra.get("drift_sigma", DRIFT_SIGMA))
        parts = drift_workloads(problem.workload, DRIFT_DRAWS, sigma, rng)
    plans = _candidates(problem, config, rng, parts)
    worst = config.robust == "worst"
    times = _window_times(problem, plans, parts, worst)  # [candidates, layers]
    pick = np.argmin(times, axis=0)  # standard mode: layers are independent, per layer the fastest
    rows = [plans[c].phy2log[layer] for layer, c in enumerate(pick.tolist())]
    shares = [plans[c].shares()[layer] for layer, c in enumerate(pick.tolist())]
    chosen: dict[str, int] = {}
    for c in pick.tolist():
        label = plans[c].provenance.method
        chosen[label] = chosen.get(label, 0) + 1
    extra = {
        "windows": len(parts),
        "window_aggregate": "worst" if worst else "mean",
        "layers_by_candidate": chosen,
        "candidate_window_us": times.sum(axis=1).tolist(),
    }
    method = "robust (" + ", ".join(f"{k}: {v} layers" for k, v in chosen.items()) + ")"
    return make_plan(problem, rows, shares, Provenance(solver="robust", method=method, extra=extra))
