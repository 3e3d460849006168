"""Coherent-mode placement that holds up on tokens it has not seen: experts follow their predecessors.

In coherent mode (ExFlow, :mod:`moe_placement.metrics`) a token stays on the GPU of its top-1 expert and
hops whenever the next layer's top-1 expert is elsewhere. The layer sweeps of ``best`` fit the sample's
exact co-activations and lose them on the next tokens (bundled trace, fitted on the first half: 25.8% more
hops than contiguous on the second half). This placement fits only what generalises:

* **layer by layer, with the tokens' positions**: the fitted tokens are routed through the layers placed
  so far (the nearest replica of their top-1 expert, as the evaluator's router does), and
  ``flow[g, e]``, the tokens on GPU ``g`` whose next top-1 expert is ``e``, is counted;
* **shrinkage**: ``flow`` is pulled toward the product of its margins (independence of where a token is
  and where it goes next) by ``beta`` pseudo-counts per observed one, so that rare transitions do not
  decide a layout;
* **replicas where tokens stay**: replica counts by water-filling the load plus ``gamma`` times the
  top-1 count (a replica of a frequent top-1 expert keeps its tokens where they are);
* **greedy assignment under a load cap**: (GPU, expert) pairs by flow per replica, highest first, while
  the GPU has a slot and stays under ``(1 + slack)`` times the layer's balanced load; the rest by LPT;
* **chosen out of sample**: each candidate ``(beta, gamma, slack)`` is fitted on one time window of the
  sample and scored by the evaluator (coherent hops) on the other, both ways; among those whose balance
  stays within :data:`BALANCE_SLACK` of contiguous's on the scored window, the fewest hops wins, and it
  is refitted on the whole sample.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.baselines import contiguous
from moe_placement.solvers.common import water_fill
from moe_placement.solvers.problem import PlacementProblem, SolverConfig
from moe_placement.workload import Workload, home_gpus

BETAS = (0.0, 0.2, 1.0)  # shrinkage: pseudo-counts of the independent flow per observed transition
GAMMAS = (0.0, 1.0, 3.0)  # weight of the top-1 count in the replica counts (0: load only)
SLACKS = (0.3, 0.9)  # load cap over the layer's balanced load, while pairs are taken by flow
BALANCE_SLACK = 0.05  # a candidate's max/mean may exceed contiguous's by at most this fraction


@dataclasses.dataclass(frozen=True)
class ChainParams:
    """One candidate: shrinkage ``beta``, top-1 weight ``gamma`` in replica counts, load-cap ``slack``."""

    beta: float
    gamma: float
    slack: float


@dataclasses.dataclass(frozen=True)
class _Tokens:
    """The routed tokens of a per-token sample: ``seq_id[n]``, ``pos[n]``, ``ids[layers, n, k]``."""

    seq_id: np.ndarray
    pos: np.ndarray
    ids: np.ndarray
    home_policy: str

    def take(self, index: np.ndarray) -> _Tokens:
        return _Tokens(self.seq_id[index], self.pos[index], self.ids[:, index], self.home_policy)


def _tokens(workload: Workload) -> _Tokens:
    """Every token of a per-token workload, in stream (time) order."""
    if not workload.per_token:
        raise PlacementError(
            f"coherent mode needs per-token routing, but {workload.source} is load-only: give a Parquet trace"
        )
    seq, pos, ids = [], [], []
    for chunk in workload.chunks():
        seq.append(np.asarray(chunk.seq_id))
        pos.append(np.asarray(chunk.pos))
        ids.append(np.asarray(chunk.expert_ids))
    return _Tokens(
        np.concatenate(seq), np.concatenate(pos), np.concatenate(ids, axis=1), workload.home_policy
    )


def _assign(
    flow: np.ndarray, counts: np.ndarray, per_replica: np.ndarray, cap: float, spg: int
) -> list[list[int]]:
    """Experts onto GPUs: pairs by ``flow / counts`` under the load ``cap``, the rest by LPT."""
    G, _ = flow.shape
    held: list[list[int]] = [[] for _ in range(G)]
    gpu_load = np.zeros(G)
    left = counts.copy()
    # a replica keeps at most its share of the expert's tokens (the router's capacity)
    score = np.minimum(flow, flow.sum(axis=0, keepdims=True) / counts[None, :])
    order = np.argsort(-score, axis=None, kind="stable")
    for g, e in zip(*np.unravel_index(order, flow.shape), strict=True):
        g, e = int(g), int(e)
        if left[e] == 0 or len(held[g]) >= spg or e in held[g]:
            continue
        if gpu_load[g] + per_replica[e] > cap * (1 + 1e-12):
            continue
        held[g].append(e)
        gpu_load[g] += per_replica[e]
        left[e] -= 1
    for e in np.argsort(-per_replica, kind="stable").tolist():
        while left[e] > 0:
            room = [
                gpu_load[g] if len(held[g]) < spg and e not in held[g] else np.inf for g in range(G)
            ]
            g = int(np.argmin(room))
            if not np.isfinite(
                room[g]
            ):  # every GPU with room holds e: swap e in for another expert
                g = next(i for i in range(G) if len(held[i]) < spg)
                donor = next((i for i in range(G) if e not in held[i]), None)
                moved = (
                    None
                    if donor is None
                    else next((x for x in held[donor] if x not in held[g]), None)
                )
                if donor is None or moved is None:
                    raise PlacementError("no GPU has room for another replica of an expert")
                held[donor].remove(moved)
                gpu_load[donor] -= per_replica[moved]
                held[g].append(moved)
                gpu_load[g] += per_replica[moved]
                g = donor
            held[g].append(e)
            gpu_load[g] += per_replica[e]
            left[e] -= 1
    return held


def chain_plan(
    workload: Workload,
    num_gpus: int,
    gpus_per_node: int,
    num_redundant: int,
    params: ChainParams,
    provenance: Provenance | None = None,
) -> Plan:
    """The coherent placement of ``workload`` for one candidate ``params`` (module docstring)."""
    return _chain(
        _tokens(workload),
        workload.num_experts,
        num_gpus,
        gpus_per_node,
        num_redundant,
        params,
        provenance,
    )


def _chain(
    tokens: _Tokens,
    num_experts: int,
    num_gpus: int,
    gpus_per_node: int,
    num_redundant: int,
    params: ChainParams,
    provenance: Provenance | None = None,
) -> Plan:
    L, E, G = tokens.ids.shape[0], num_experts, num_gpus
    spg = (E + num_redundant) // G
    load = np.stack([np.bincount(tokens.ids[layer].ravel(), minlength=E) for layer in range(L)])
    load = load.astype(np.float64)
    seq, pos, top1 = tokens.seq_id, tokens.pos, tokens.ids[:, :, 0]
    cur = home_gpus(seq, pos, G, tokens.home_policy)
    pick = (
        seq.astype(np.int64) * 31 + pos.astype(np.int64)
    ) % 65521  # replica choice, off-GPU tokens
    rows = []
    for layer in range(L):
        first = np.bincount(top1[layer], minlength=E).astype(np.float64)
        counts = water_fill(load[layer] + params.gamma * first, num_redundant, G)
        per_replica = load[layer] / counts
        cap = max(load[layer].sum() / G, float(per_replica.max())) * (1 + params.slack)
        flow = np.bincount(cur * E + top1[layer], minlength=G * E).reshape(G, E).astype(float)
        total = max(float(flow.sum()), 1.0)
        flow += (
            params.beta * flow.sum(axis=1, keepdims=True) * flow.sum(axis=0, keepdims=True) / total
        )
        held = _assign(flow, counts, per_replica, cap, spg)
        rows.append(np.array([e for gpu in held for e in gpu], dtype=np.int64))
        # route the tokens on: stay where a replica of the next top-1 expert is, else one of its GPUs
        holds = np.zeros((G, E), dtype=bool)
        replicas = np.zeros((E, int(counts.max())), dtype=np.int64)
        filled = np.zeros(E, dtype=np.int64)
        for g, gpu in enumerate(held):
            for e in gpu:
                holds[g, e] = True
                replicas[e, filled[e]] = g
                filled[e] += 1
        nxt = replicas[top1[layer], pick % counts[top1[layer]]]
        cur = np.where(holds[cur, top1[layer]], cur, nxt)
    return Plan(
        num_gpus=G,
        gpus_per_node=gpus_per_node,
        slots_per_gpu=spg,
        phy2log=np.stack(rows),
        provenance=provenance or Provenance(solver="chain", method="coherent chain"),
    )


def _contiguous(workload: Workload, problem: PlacementProblem) -> Plan:
    """The engines' default layout of ``workload``: the balance reference of the candidates."""
    one = dataclasses.replace(problem, workloads=(workload,), weights=())
    return contiguous(one, SolverConfig(), rng=np.random.default_rng(0))


def cross_validate(
    problem: PlacementProblem, parts: list[Workload]
) -> tuple[ChainParams, list[dict[str, float]]]:
    """The candidate with the fewest coherent hops out of sample: ``parts`` are consecutive time windows
    of the sample (:func:`moe_placement.solvers.robust.window_workloads`); each candidate is fitted on all windows but one and scored by the evaluator on that
    one, for every window. Among the candidates within :data:`BALANCE_SLACK` of contiguous's max/mean
    on every held-out window, the fewest hops (relative to contiguous's) wins. Returns it with the
    table of every candidate's held-out figures."""
    workload = problem.workload
    grid = [ChainParams(b, g, s) for b, g, s in itertools.product(BETAS, GAMMAS, SLACKS)]
    if not parts:
        return grid[0], []
    tokens = _tokens(workload)
    edges = np.cumsum([0, *(int(part.num_tokens) for part in parts)])
    G, gpn, R, E = (
        problem.num_gpus,
        problem.gpus_per_node,
        problem.num_redundant,
        workload.num_experts,
    )
    hops = np.zeros(len(grid))
    worst_ratio = np.zeros(len(grid))  # max over held-out windows of max/mean over contiguous's
    for held_out, part in enumerate(parts):
        keep = np.ones(tokens.seq_id.size, dtype=bool)
        keep[edges[held_out] : edges[held_out + 1]] = False
        fit = tokens.take(np.flatnonzero(keep))
        plans = [_chain(fit, E, G, gpn, R, p) for p in grid]
        evs = evaluate_many(
            [*plans, _contiguous(workload, problem)], problem.cluster, part, mode="coherent"
        )
        base = evs.pop().summary()
        for i, ev in enumerate(evs):
            s = ev.summary()
            hops[i] += float(s["hops"]) / max(float(base["hops"]), 1.0) / len(parts)
            ratio = float(s["mean_max_over_mean"]) / float(base["mean_max_over_mean"])
            worst_ratio[i] = max(worst_ratio[i], ratio)
    ok = worst_ratio <= 1 + BALANCE_SLACK
    choice = int(np.argmin(np.where(ok, hops, np.inf))) if ok.any() else int(np.argmin(worst_ratio))
    table = [
        {
            "beta": p.beta,
            "gamma": p.gamma,
            "slack": p.slack,
            "held_out_hops_vs_contiguous": float(hops[i]),
            "worst_balance_vs_contiguous": float(worst_ratio[i]),
        }
        for i, p in enumerate(grid)
    ]
    return grid[choice], table
