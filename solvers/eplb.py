"""An EPLB-equivalent baseline: the greedy that production engines use today, written in this project's
own code after DeepSeek's published description (deepseek-ai/EPLB).

Per layer, hierarchical mode: (1) pack *expert groups* onto nodes, equal group count per node,
heaviest group first onto the lightest node; (2) inside each node, give its share of the redundant
slots to its experts by water-filling (each extra replica to the expert with most load per replica);
(3) pack the node's replicas onto its GPUs, equal slot count per GPU, heaviest replica first onto the
lightest GPU. Global mode is the same call with one node and one group. Unlike the original, no GPU
gets two replicas of one expert (the plan forbids it) and ``gpus % nodes`` never matters (GPU counts
come from the cluster). Tokens split evenly over an expert's replicas (no ``replica_share``).

Groups: ``config.extra["num_groups"]``, else DeepSeek-V3's 8 for a 256-expert model, else one group
per node when the experts divide evenly; hierarchical mode needs ``groups % nodes == 0`` and falls back
to global otherwise, as EPLB does.
"""

from __future__ import annotations

import numpy as np

from moe_placement.errors import InfeasibleError
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.base import register
from moe_placement.solvers.common import check_memory
from moe_placement.solvers.problem import PlacementProblem, SolverConfig


def balanced_packing(
    weight: np.ndarray, items: np.ndarray, num_packs: int, per_pack: int
) -> list[list[int]]:
    """Heaviest first onto the lightest pack with room that does not hold the same item id yet.

    ``weight[i]`` and ``items[i]`` (expert ids, repeated for replicas); returns item indices per pack."""
    order = np.argsort(-weight, kind="stable")
    packs: list[list[int]] = [[] for _ in range(num_packs)]
    held: list[set[int]] = [set() for _ in range(num_packs)]
    pack_load = np.zeros(num_packs)
    for i in order.tolist():
        e = int(items[i])
        best = -1
        for p in np.argsort(pack_load, kind="stable").tolist():
            if len(packs[p]) < per_pack and e not in held[p]:
                best = p
                break
        if best < 0:
            best = _make_room(packs, held, pack_load, weight, items, e, per_pack)
        packs[best].append(i)
        held[best].add(e)
        pack_load[best] += weight[i]
    return packs


def _make_room(
    packs: list[list[int]],
    held: list[set[int]],
    pack_load: np.ndarray,
    weight: np.ndarray,
    items: np.ndarray,
    e: int,
    per_pack: int,
) -> int:
    """Every pack with room already holds expert ``e``: move one item from a full pack without ``e`` into
    a pack with room, freeing a slot for ``e`` there. Returns the freed pack."""
    for p in (p for p in range(len(packs)) if len(packs[p]) < per_pack):
        for q in np.argsort(pack_load, kind="stable").tolist():
            if e in held[q] or len(packs[q]) < per_pack:
                continue
            for j in packs[q]:
                f = int(items[j])
                if f not in held[p]:
                    packs[q].remove(j)
                    held[q].discard(f)
                    pack_load[q] -= weight[j]
                    packs[p].append(j)
                    held[p].add(f)
                    pack_load[p] += weight[j]
                    return q
    raise InfeasibleError("EPLB packing: no pack can take another replica of an expert")


def replicate(load: np.ndarray, num_slots: int, max_replicas: int) -> np.ndarray:
    """Water-filling replica counts ``[experts]`` filling ``num_slots`` slots."""
    if num_slots > load.size * max_replicas:
        raise InfeasibleError(
            f"{num_slots} slots need more than {max_replicas} replicas of some of {load.size} experts"
        )
    counts = np.ones(load.size, dtype=np.int64)
    for _ in range(num_slots - load.size):
        per = np.where(counts < max_replicas, load / counts, -np.inf)
        counts[int(np.argmax(per))] += 1
    return counts


def eplb_layer(
    load: np.ndarray, num_groups: int, num_nodes: int, gpus_per_node: int, spg: int
) -> np.ndarray:
    """One layer's ``phy2log[slots]``: groups to nodes, replicas inside nodes, replicas to GPUs."""
    E = load.size
    group_size = E // num_groups
    group_load = load.reshape(num_groups, group_size).sum(axis=1)
    node_groups = balanced_packing(
        group_load, np.arange(num_groups), num_nodes, num_groups // num_nodes
    )
    row: list[int] = []
    slots_per_node = gpus_per_node * spg
    for groups in node_groups:
        experts = np.concatenate(
            [np.arange(g * group_size, (g + 1) * group_size) for g in sorted(groups)]
        )
        if experts.size > slots_per_node:
            raise InfeasibleError(
                f"EPLB: {experts.size} experts do not fit in a node's {slots_per_node} slots"
            )
        counts = replicate(load[experts], slots_per_node, gpus_per_node)
        items = np.repeat(experts, counts)
        weight = load[items] / np.repeat(counts, counts)
        for pack in balanced_packing(weight, items, gpus_per_node, spg):
            row += [int(items[i]) for i in pack]
    return np.asarray(row, dtype=np.int64)


def default_groups(problem: PlacementProblem, config: SolverConfig) -> int:
    E, N = problem.num_experts, problem.num_gpus // problem.gpus_per_node
    groups = config.extra.get("num_groups")
    if groups is None:
        groups = 8 if E == 256 else (N if E % N == 0 else 1)
    return int(groups)


def _eplb(problem: PlacementProblem, config: SolverConfig, hierarchical: bool, name: str) -> Plan:
    check_memory(problem, config)
    load = problem.combined_load()
    G, gpn, spg = problem.num_gpus, problem.gpus_per_node, problem.slots_per_gpu
    N = G // gpn
    groups = default_groups(problem, config)
    use_hier = hierarchical and groups > 0 and problem.num_experts % groups == 0 and groups % N == 0
    # a node must be able to hold its groups' experts; otherwise fall back to global as EPLB would
    # (and fill its slots without two replicas of one expert on one GPU)
    if use_hier and not (spg <= problem.num_experts // N <= gpn * spg):
        use_hier = False
    rows = []
    for layer in range(problem.num_layers):
        if use_hier:
            rows.append(eplb_layer(load[layer], groups, N, gpn, spg))
        else:
            rows.append(eplb_layer(load[layer], 1, 1, G, spg))
    phy2log = np.stack(rows)
    # objective, bound and gap are filled in by run_solver with the same time model as every solver
    prov = Provenance(
        solver=name,
        method="eplb-hierarchical" if use_hier else "eplb-global",
        extra={"num_groups": groups if use_hier else 1},
    )
    return Plan(G, gpn, spg, phy2log, provenance=prov)


@register(
    "eplb",
    "EPLB-equivalent greedy, hierarchical (groups to nodes) when groups % nodes == 0",
    baseline=True,
)
def eplb_hierarchical(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    return _eplb(problem, config, hierarchical=True, name="eplb")


@register("eplb-global", "EPLB-equivalent greedy, global replication and packing", baseline=True)
def eplb_global(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    return _eplb(problem, config, hierarchical=False, name="eplb-global")
