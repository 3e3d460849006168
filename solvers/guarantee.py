"""``best``'s promise in a comparison: never worse, by the evaluator, than any plan it is compared with.

``best`` itself keeps, layer by layer, the faster of its row and every baseline's
(:func:`moe_placement.solvers.ilp`'s safeguard), and runs ``cpsat``'s model wherever a layer is small
enough for it. Solvers added beside it (``robust``, fitted to time windows rather than the whole trace)
can still reach a faster row for some layer. When plans are compared side by side (``placement compare``,
``solve --solver all``, the demo), :func:`never_worse` gives ``best`` those rows too: in standard mode
layers are independent in the evaluator (a layer's time depends on its own row only), so each layer keeps
the fastest row among the compared plans, ``best``'s own on ties; in coherent mode a layer's time depends on
its neighbours, so whole plans compete.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moe_placement.plan import Plan
from moe_placement.solvers.objective import evaluator_us, gap_of
from moe_placement.solvers.problem import PlacementProblem, SolverConfig


def never_worse(
    problem: PlacementProblem,
    config: SolverConfig,
    best: Plan,
    best_layer_us: np.ndarray,
    others: list[tuple[str, Plan, np.ndarray]],
) -> Plan:
    """``best`` with each layer (standard mode) or the whole plan (coherent mode) taken from whichever
    of ``others`` (name, plan, evaluator layer times in us, as the comparison shows them) the evaluator
    times strictly faster; ``best`` itself when none is. Only plans of ``best``'s shape compete. The
    objective is the evaluator's time again (:func:`moe_placement.solvers.objective.evaluator_us`); the
    bound is placement-free, so it stays."""
    if len(problem.workloads) > 1:  # the comparison times one trace; the objective weighs several
        return best
    same_shape = [
        (name, plan, np.asarray(times, dtype=np.float64))
        for name, plan, times in others
        if plan.phy2log.shape == best.phy2log.shape and plan.num_gpus == best.num_gpus
    ]
    if not same_shape:
        return best
    own = np.asarray(best_layer_us, dtype=np.float64) * (1 - 1e-9)  # others must be strictly faster
    times = np.stack([own] + [t for _, _, t in same_shape])  # [1 + others, layers]
    if problem.mode == "standard":
        pick = np.argmin(times, axis=0)
    else:
        pick = np.full(times.shape[1], int(np.argmin(times.sum(axis=1))))
    if not (pick > 0).any():
        return best
    phy2log, shares = best.phy2log.copy(), best.shares().copy()
    taken: dict[str, int] = {}
    for layer in np.flatnonzero(pick > 0).tolist():
        name, plan, _ = same_shape[int(pick[layer]) - 1]
        phy2log[layer] = plan.phy2log[layer]
        shares[layer] = plan.shares()[layer]
        taken[name] = taken.get(name, 0) + 1
    merged = dataclasses.replace(best, phy2log=phy2log, replica_share=None)
    if not np.allclose(
        shares, merged.shares()
    ):  # keep shares only where they are not the even split
        merged = dataclasses.replace(merged, replica_share=shares)
    prov = best.provenance
    objective = evaluator_us(problem, config, merged.validate())
    provenance = dataclasses.replace(
        prov,
        objective=objective,
        gap=gap_of(objective, prov.bound) if prov.bound is not None else prov.gap,
        method=prov.method
        + "".join(f"+{name} (evaluator-faster layer, compared)" for name in sorted(taken)),
        extra={**prov.extra, "compared_layers": dict(sorted(taken.items()))},
    )
    return dataclasses.replace(merged, provenance=provenance)
