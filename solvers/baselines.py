"""Baseline layouts: contiguous (vLLM / SGLang / Megatron default), round-robin, seeded random and
greedy LPT load balance. With redundant slots, every baseline replicates the hottest experts by
water-filling (most load per replica first) and places the copies by its own rule."""

from __future__ import annotations

import numpy as np

from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.base import register
from moe_placement.solvers.common import lpt, water_fill
from moe_placement.solvers.problem import PlacementProblem, SolverConfig


def _copies(counts: np.ndarray) -> np.ndarray:
    """Experts in id order, then the extra replicas in id order: ``[slots]``."""
    extras = np.repeat(np.arange(counts.size), counts - 1)
    return np.concatenate([np.arange(counts.size), extras])


def fill_in_order(
    items: np.ndarray, gpu_order: np.ndarray, num_gpus: int, slots_per_gpu: int
) -> np.ndarray:
    """Put each item on its preferred GPU (``gpu_order[i]``) or, if full or already holding that expert,
    the next GPU that can take it. Returns ``phy2log[slots]``."""
    held: list[list[int]] = [[] for _ in range(num_gpus)]
    for item, pref in zip(items.tolist(), gpu_order.tolist(), strict=True):
        for step in range(num_gpus):
            g = (pref + step) % num_gpus
            if len(held[g]) < slots_per_gpu and item not in held[g]:
                held[g].append(item)
                break
        else:  # every GPU with room holds this expert already: swap with a GPU that does not
            g = next(i for i in range(num_gpus) if len(held[i]) < slots_per_gpu)
            donor = next(i for i in range(num_gpus) if item not in held[i])
            swap = next(x for x in held[donor] if x not in held[g])
            held[donor].remove(swap)
            held[donor].append(item)
            held[g].append(swap)
    return np.array([x for g in held for x in g], dtype=np.int64)


def _baseline(problem: PlacementProblem, name: str, layout) -> Plan:  # type: ignore[no-untyped-def]
    load = problem.combined_load()
    rows = []
    for layer in range(problem.num_layers):
        counts = water_fill(load[layer], problem.num_redundant, problem.num_gpus)
        rows.append(layout(layer, counts, load[layer]))
    return Plan(
        num_gpus=problem.num_gpus,
        gpus_per_node=problem.gpus_per_node,
        slots_per_gpu=problem.slots_per_gpu,
        phy2log=np.stack(rows),
        provenance=Provenance(solver=name, method="baseline"),
    )


@register(
    "contiguous",
    "experts in id order, slots filled GPU by GPU (the engines' default)",
    baseline=True,
)
def contiguous(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    spg, G = problem.slots_per_gpu, problem.num_gpus

    def layout(layer: int, counts: np.ndarray, load: np.ndarray) -> np.ndarray:
        items = _copies(counts)
        return fill_in_order(items, np.arange(items.size) // spg, G, spg)

    return _baseline(problem, "contiguous", layout)


@register("round-robin", "expert i on GPU i mod G", baseline=True)
def round_robin(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    spg, G = problem.slots_per_gpu, problem.num_gpus

    def layout(layer: int, counts: np.ndarray, load: np.ndarray) -> np.ndarray:
        items = _copies(counts)
        return fill_in_order(items, np.arange(items.size) % G, G, spg)

    return _baseline(problem, "round-robin", layout)


@register("random", "a seeded random permutation of the slots", baseline=True)
def random_layout(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    spg, G = problem.slots_per_gpu, problem.num_gpus

    def layout(layer: int, counts: np.ndarray, load: np.ndarray) -> np.ndarray:
        items = rng.permutation(_copies(counts))
        return fill_in_order(items, np.arange(items.size) // spg, G, spg)

    return _baseline(problem, "random", layout)


@register(
    "greedy",
    "greedy LPT: heaviest replica first onto the least loaded GPU with room",
    baseline=True,
)
def greedy_lpt(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    spg, G = problem.slots_per_gpu, problem.num_gpus

    def layout(layer: int, counts: np.ndarray, load: np.ndarray) -> np.ndarray:
        items = _copies(counts)
        held = lpt(items, load[items] / counts[items], G, spg)
        return np.array([x for g in held for x in g], dtype=np.int64)

    return _baseline(problem, "greedy", layout)
