"""The objective every plan reports, below the registry and every solver.

Two objectives, one for each job:

* the *search* objective (:data:`SEARCH_OBJECTIVE_NAME`): the linear model the CP-SAT solvers optimise,
  ``sum over layers of`` :func:`moe_placement.solvers.cpsat.objective_us` with prices derived from
  :mod:`moe_placement.timing`; :func:`score_plan` scores any plan with it, with a placement-free bound;
* the *reported* objective (:data:`OBJECTIVE_NAME`): the evaluator's MoE time,
  ``moe_placement.metrics.evaluate(...).summary()["moe_time_us"]`` (:func:`evaluator_us`). The linear
  model counts copies per (token, GPU / node) with a pairwise surrogate and splits replicas' tokens by
  shares, while the evaluator routes each token to a replica and deduplicates its copies; with replicas
  over several nodes the two differ by up to ~15% (bench/solvers_agreement.py), more than a linear price
  can absorb. So the model is used only for search, and every plan reports the evaluator's time
  (:func:`report`, applied centrally by :func:`moe_placement.solvers.base.run_solver`).
"""

from __future__ import annotations

import dataclasses

from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.context import (
    affinity_prev,
    coherent_bound,
    layer_spec,
    make_context,
)
from moe_placement.solvers.cpsat import analytic_bound_us, objective_us
from moe_placement.solvers.problem import PlacementProblem, SolverConfig

SEARCH_OBJECTIVE_NAME = (
    "predicted MoE time (us): busiest-GPU roofline compute + modelled link copies"
)
OBJECTIVE_NAME = "MoE time (us) by the evaluator (moe_placement.metrics)"
OBJECTIVE_SOURCE = "evaluator"  # provenance.extra["objective_source"]


def gap_of(objective: float, bound: float) -> float:
    """Relative gap ``(objective - bound) / objective`` (0 when both are 0)."""
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / objective)


def score_plan(problem: PlacementProblem, config: SolverConfig, plan: Plan) -> tuple[float, float]:
    """The search model's objective (us) of any plan and the placement-free lower bound of that model."""
    ctx = make_context(
        problem, dataclasses.replace(config, time_limit_s=max(config.time_limit_s, 1.0))
    )
    G, spg = problem.num_gpus, problem.slots_per_gpu
    shares = plan.shares()
    objective = bound = 0.0
    for layer in range(problem.num_layers):
        held = plan.phy2log[layer].reshape(G, spg).tolist()
        if problem.mode == "coherent":
            problem.workload.require_per_token("context-coherent placement")
            prev = (plan.phy2log[layer - 1], shares[layer - 1]) if layer else (None, None)
            aff = affinity_prev(ctx, layer, *prev)
            hop_total = float(problem.workload.num_tokens)
            spec = layer_spec(ctx, layer, coact=None, affinity=aff, hop_total=hop_total)
            bound += coherent_bound(ctx, layer, spec)
        else:
            spec = layer_spec(ctx, layer)
            bound += analytic_bound_us(spec, problem.num_redundant)
        objective += objective_us(spec, held, shares[layer])
    return objective, min(bound, objective)


def evaluator_us(problem: PlacementProblem, config: SolverConfig, plan: Plan) -> float:
    """The evaluator's MoE time (us) of ``plan`` in the problem's mode.

    One trace: its ``moe_time_us``. Several traces (robust placement), each timed at the evaluator's
    step size: their weighted mean (``robust="weighted"``) or the slowest (``robust="worst"``), as the
    search model aggregates them."""
    times = []
    for wl in problem.workloads:
        [ev] = evaluate_many([plan], problem.cluster, wl, mode=problem.mode)
        times.append(float(ev.summary()["moe_time_us"]))
    if len(times) == 1:
        return times[0]
    if config.robust == "worst":
        return max(times)
    weights = problem.weights or tuple(1.0 for _ in times)
    return sum(w * t for w, t in zip(weights, times, strict=True)) / sum(weights)


def report(problem: PlacementProblem, config: SolverConfig, plan: Plan, name: str) -> Provenance:
    """The plan's provenance with the evaluator's time as its objective.

    A solver's own (search) objective and bound, or the model's score for solvers that report none
    (the baselines), move to ``extra["search_objective"]`` / ``extra["search_bound"]``. The reported
    ``bound`` is the search bound clamped to the evaluator's objective: the search bound is proven for
    the linear model, not for the evaluator's time (the two differ by the model's error), so the clamp
    is what keeps ``bound <= objective`` true of every reported plan, and ``gap`` is
    ``(objective - bound) / objective``, so a user can recompute it from the two printed figures. The
    search's own gap, ``(search objective - search bound) / search objective``, is kept as
    ``extra["search_gap"]``: the reported gap also carries the model's error and, after ``best``'s
    safeguard swaps in evaluator-faster baseline layers, the model's opinion of those layers."""
    prov = plan.provenance
    search_name = prov.objective_name or SEARCH_OBJECTIVE_NAME
    if prov.objective is None or prov.bound is None:
        search, search_bound = score_plan(problem, config, plan)
    else:
        search, search_bound = prov.objective, prov.bound
    objective = evaluator_us(problem, config, plan)
    bound = min(search_bound, objective)
    extra = {
        **prov.extra,
        "objective_source": OBJECTIVE_SOURCE,
        "search_objective": search,
        "search_bound": search_bound,
        "search_objective_name": search_name,
        "search_gap": gap_of(search, search_bound),
    }
    return dataclasses.replace(
        prov,
        objective=objective,
        bound=bound,
        gap=gap_of(objective, bound),
        objective_name=OBJECTIVE_NAME,
        method=prov.method or name,
        extra=extra,
    )
