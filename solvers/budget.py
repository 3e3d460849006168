"""A model-wide replica budget: spread ``N`` redundant slots over the MoE layers by marginal benefit.

``--redundant R`` gives every layer the same ``R`` replicas. Layers differ: one with a single very hot
expert gains a lot from two more replicas, a flat one nothing (CRAFT, arXiv 2603.28768; Huawei
OmniPlacement). :func:`allocate` hands out the budget in steps of one slot per GPU (``G`` slots: a
layer's slot count must stay a multiple of the GPU count) to the layer whose predicted busiest-GPU
compute falls most, where that prediction is the replica-aware min-max bound after water-filling
(``max(mean GPU load, hottest expert / its replicas)``) timed by :func:`moe_placement.timing.compute_us`,
weight reads of the extra slots included (a memory-bound decode step pays for every slot it reads).

**Engines need equal slots per layer.** SGLang (``--ep-num-redundant-experts``), vLLM
(``--num-redundant-experts``) and TensorRT-LLM (``num_slots`` in the load-balancer YAML) take one
redundant count for the whole model and allocate the same physical slots on every MoE layer; the plan
format ``phy2log[layers, slots]`` has the same shape. So an uneven budget is kept two ways:

* ``redundant_per_layer`` in the plan's provenance and the per-layer rows as solved: what an engine that
  allocates slots per layer would load (none of the three does today);
* the plan itself, padded to the largest layer's slots per GPU: a layer with fewer replicas fills its
  extra slots with zero-share replicas (no token is routed to them). Any of the three engines loads it,
  but it costs the memory of ``max R`` on every layer, not the budget: under equal-slot engines use
  ``--memory-gib`` to size a uniform ``--redundant`` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moe_placement import timing
from moe_placement.errors import InfeasibleError, PlacementError
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU, evaluate_many
from moe_placement.plan import Plan
from moe_placement.solvers.base import run_solver
from moe_placement.solvers.common import lpt, water_fill
from moe_placement.solvers.problem import PlacementProblem, SolverConfig

EQUAL_SLOT_ENGINES = ("sglang", "vllm", "tensorrt-llm")
GIB = 1 << 30
# a step of G slots must save this share of the slowest layer's predicted compute to count as a gain;
# below it LPT's packing noise (its busiest GPU is not monotone in the replica count) would steer
MIN_GAIN = 1e-3


@dataclass(frozen=True)
class Budget:
    """Redundant slots per layer and what the allocation predicts (us per layer, per step)."""

    redundant: tuple[int, ...]
    total: int
    uniform: int  # per-layer count of the uniform split of the same total (rounded down to a step)
    predicted_us: tuple[float, ...]  # compute of the busiest GPU at each layer's count
    predicted_uniform_us: tuple[float, ...]


def first_step(num_experts: int, num_gpus: int) -> int:
    """The fewest redundant slots a layer can have: ``(experts + R) % gpus == 0``."""
    return (-num_experts) % num_gpus


def redundant_for_memory(memory_gib: float, problem: PlacementProblem) -> int:
    """Model-wide redundant slots that ``memory_gib`` GiB of expert weights per GPU holds: every GPU's
    slots over all layers, less one slot per expert and layer."""
    shape = problem.workload.shape
    slots_per_gpu_all_layers = int(memory_gib * GIB // shape.expert_weight_bytes)
    total = slots_per_gpu_all_layers * problem.num_gpus - problem.num_experts * problem.num_layers
    if total < first_step(problem.num_experts, problem.num_gpus) * problem.num_layers:
        raise InfeasibleError(
            f"--memory-gib {memory_gib}: {slots_per_gpu_all_layers} expert slots per GPU over "
            f"{problem.num_layers} layers cannot hold the {problem.num_experts} experts of every layer"
        )
    return total


def _compute_us(
    load: np.ndarray, redundant: int, problem: PlacementProblem, tokens_per_gpu: int
) -> float:
    """Predicted busiest-GPU compute (us per layer, per step) of one layer with ``redundant`` slots."""
    G = problem.num_gpus
    counts = water_fill(load, redundant, G)
    slots_per_gpu = (load.size + redundant) // G
    items = np.repeat(np.arange(load.size), counts)
    # packing matters with few slots per GPU: LPT's busiest GPU, not the mean
    held = np.asarray(lpt(items, load[items] / counts[items], G, slots_per_gpu))
    peak = float((load[held] / counts[held]).sum(axis=1).max())
    scale = tokens_per_gpu * G / max(int(problem.workload.num_tokens), 1)
    return float(
        timing.compute_us(
            np.array([peak * scale]),
            np.array([float(slots_per_gpu)]),
            problem.workload.shape,
            problem.cluster,
        )[0]
    )


def allocate(
    problem: PlacementProblem, total: int, tokens_per_gpu: int = DEFAULT_TOKENS_PER_GPU
) -> Budget:
    """Spread ``total`` redundant slots over the layers by marginal benefit (steps of ``G`` slots)."""
    G, E, L = problem.num_gpus, problem.num_experts, problem.num_layers
    base = first_step(E, G)
    if total < base * L:
        raise InfeasibleError(
            f"--redundant-total {total} is below the {base * L} slots that {L} layers need "
            f"({base} per layer so that {E} + R is a multiple of {G} GPUs)"
        )
    if (total - base * L) % G:
        raise PlacementError(
            f"--redundant-total must be {base * L} plus a multiple of {G} (one slot per GPU), got {total}"
        )
    most = E * (G - 1)  # at most one replica of an expert per GPU
    load = np.asarray(problem.combined_load(), dtype=np.float64)
    counts = [base] * L
    now = [_compute_us(load[layer], base, problem, tokens_per_gpu) for layer in range(L)]
    nxt = [
        _compute_us(load[layer], base + G, problem, tokens_per_gpu) if base + G <= most else np.inf
        for layer in range(L)
    ]
    left = (total - base * L) // G
    for _ in range(left):
        gains = np.array(now) - np.array(nxt)
        if gains.max() > MIN_GAIN * float(np.max(now)):
            layer = int(np.argmax(gains))
        else:  # nothing gains (every layer at its mean, or packing noise): spread like uniform
            layer = int(np.argmin(np.where(np.isfinite(nxt), counts, np.iinfo(np.int64).max)))
        if not np.isfinite(nxt[layer]):
            raise InfeasibleError(f"--redundant-total {total} exceeds what {G} GPUs can hold")
        counts[layer] += G
        now[layer] = nxt[layer]
        nxt[layer] = (
            _compute_us(load[layer], counts[layer] + G, problem, tokens_per_gpu)
            if counts[layer] + G <= most
            else np.inf
        )
    uniform = base + ((total - base * L) // L // G) * G
    return Budget(
        redundant=tuple(counts),
        total=total,
        uniform=uniform,
        predicted_us=tuple(now),
        predicted_uniform_us=tuple(
            _compute_us(load[layer], uniform, problem, tokens_per_gpu) for layer in range(L)
        ),
    )


@dataclass(frozen=True)
class BudgetResult:
    """The padded plan (loadable by equal-slot engines), the per-layer evaluator times (us per layer,
    per step) of the uneven layout as solved and of the uniform split of the same total."""

    plan: Plan
    budget: Budget
    uneven_layer_us: np.ndarray
    uniform_layer_us: np.ndarray

    @property
    def gain(self) -> float:
        """Relative MoE-time saving of the uneven budget over the uniform one (0.05 = 5% faster)."""
        uniform = float(self.uniform_layer_us.sum())
        return 0.0 if uniform <= 0 else 1.0 - float(self.uneven_layer_us.sum()) / uniform


def _pad(plan_rows: list[np.ndarray], shares: list[np.ndarray], G: int, load: np.ndarray) -> tuple:
    """Rows and shares padded to the widest layer's slots per GPU with zero-share replicas (each GPU's
    pads: the hottest experts it does not hold yet)."""
    widest = max(row.size for row in plan_rows) // G
    out_rows, out_shares = [], []
    for layer, (row, share) in enumerate(zip(plan_rows, shares, strict=True)):
        spg = row.size // G
        held = row.reshape(G, spg)
        part = share.reshape(G, spg)
        rows_g, shares_g = [], []
        order = np.argsort(-load[layer], kind="stable")
        for g in range(G):
            extra = [int(e) for e in order if e not in set(held[g].tolist())][: widest - spg]
            rows_g.append(np.concatenate([held[g], np.array(extra, dtype=np.int64)]))
            shares_g.append(np.concatenate([part[g], np.zeros(len(extra))]))
        out_rows.append(np.concatenate(rows_g))
        out_shares.append(np.concatenate(shares_g))
    return np.stack(out_rows), np.stack(out_shares), widest


def solve_with_budget(
    problem: PlacementProblem, config: SolverConfig, solver: str, total: int
) -> BudgetResult:
    """Allocate ``total`` redundant slots (:func:`allocate`), solve each distinct per-layer count with
    ``solver`` (each with the full time limit), keep each layer's row from its count's plan, and compare
    with the uniform split solved the same way (layer times by the evaluator, standard mode)."""
    if problem.mode != "standard":
        raise PlacementError("--redundant-total places standard-mode layers only (--mode standard)")
    budget = allocate(problem, total)
    counts = sorted({*budget.redundant, budget.uniform})
    plans = {
        r: run_solver(solver, dataclasses.replace(problem, num_redundant=r), config) for r in counts
    }
    evaluations = {
        r: ev.layer_us()
        for r, ev in zip(
            counts,
            [evaluate_many([plans[r]], problem.cluster, problem.workload)[0] for r in counts],
            strict=True,
        )
    }
    L = problem.num_layers
    uneven_us = np.array([evaluations[budget.redundant[layer]][layer] for layer in range(L)])
    rows = [plans[budget.redundant[layer]].phy2log[layer] for layer in range(L)]
    shares = [plans[budget.redundant[layer]].shares()[layer] for layer in range(L)]
    phy2log, share, widest = _pad(rows, shares, problem.num_gpus, problem.combined_load())
    uniform_plan = plans[budget.uniform]
    provenance = dataclasses.replace(
        uniform_plan.provenance,
        solver=solver,
        method=f"model-wide budget of {total} redundant slots ({solver} per count)",
        objective=float(uneven_us.sum()),
        bound=None,
        gap=None,
        extra={
            "bound_covers": "no bound: the layers were solved at different replica counts, whose "
            "bounds do not add into one",
            "redundant_per_layer": list(budget.redundant),
            "redundant_total": total,
            "uniform_redundant": budget.uniform,
            "uneven_moe_time_us": float(uneven_us.sum()),
            "uniform_moe_time_us": float(evaluations[budget.uniform].sum()),
            "padded_slots_per_gpu": widest,
            "equal_slot_engines": list(EQUAL_SLOT_ENGINES),
        },
    )
    plan = dataclasses.replace(
        uniform_plan,
        slots_per_gpu=widest,
        phy2log=phy2log.astype(np.int64),
        replica_share=share,
        provenance=provenance,
    ).validate()
    return BudgetResult(
        plan=plan,
        budget=budget,
        uneven_layer_us=uneven_us,
        uniform_layer_us=evaluations[budget.uniform],
    )


def total_from_args(
    problem: PlacementProblem, redundant_total: int | None, memory_gib: float | None
) -> int:
    """The model-wide budget from ``--redundant-total`` or ``--memory-gib`` (the smaller if both)."""
    totals = []
    if redundant_total is not None:
        if redundant_total < 0:
            raise PlacementError("--redundant-total must be >= 0")
        totals.append(redundant_total)
    if memory_gib is not None:
        if not np.isfinite(memory_gib) or memory_gib <= 0:
            raise PlacementError("--memory-gib must be a positive number")
        G, L = problem.num_gpus, problem.num_layers
        base = first_step(problem.num_experts, G) * L
        fits = redundant_for_memory(memory_gib, problem)
        totals.append(base + ((fits - base) // G) * G)  # whole slots per GPU
    return min(totals)


def budget_report(result: BudgetResult) -> dict[str, object]:
    """The budget as JSON: per-layer counts, times (us per step, all layers) and the gain."""
    b = result.budget
    return {
        "redundant_total": b.total,
        "redundant_per_layer": list(b.redundant),
        "uniform_redundant_per_layer": b.uniform,
        "uneven_moe_time_us": float(result.uneven_layer_us.sum()),
        "uniform_moe_time_us": float(result.uniform_layer_us.sum()),
        "gain": result.gain,
        "padded_slots_per_gpu": result.plan.slots_per_gpu,
        "equal_slot_engines": list(EQUAL_SLOT_ENGINES),
    }


def describe(result: BudgetResult) -> str:
    """Two lines for the terminal: the allocation and its gain over the uniform split."""
    b = result.budget
    counts: dict[int, int] = {}
    for r in b.redundant:
        counts[r] = counts.get(r, 0) + 1
    spread = ", ".join(f"{n} layers x {r}" for r, n in sorted(counts.items()))
    return (
        f"budget: {b.total} redundant slots over {len(b.redundant)} layers ({spread}); MoE time "
        f"{result.uneven_layer_us.sum():.6g} us per step as solved, against {result.uniform_layer_us.sum():.6g} us "
        f"for {b.uniform} per layer (gain {result.gain:.2%})\n"
        f"the plan is padded to {result.plan.slots_per_gpu} slots per GPU on every layer (zero-share "
        "replicas): SGLang, vLLM and TensorRT-LLM need equal slots per layer, so they load it at the "
        "memory of the widest layer"
    )
