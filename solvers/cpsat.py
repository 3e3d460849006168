"""The exact per-layer model in OR-Tools CP-SAT, whose objective is the predicted MoE-layer time (us).

Variables (one layer): ``x[e, g]`` expert ``e`` has a replica on GPU ``g``; with replicas, ``r[e, g]`` the
share of ``e``'s tokens GPU ``g`` takes in units of ``1 / Q``. Constraints: ``spg`` slots per GPU,
every expert placed (its replica count fixed, or free within the slot budget), at most one replica of
an expert per GPU, shares only where a replica is, an optional migration budget against a current plan.

Objective, in microseconds at the evaluator's step size (see :class:`solvers.common.TimeModel`):

* compute: ``balance_weight * us_per_assignment * max_g load[g]`` -- for several traces the weighted
  sum of their busiest GPUs or the worst of them (robust placement);
* standard EP communication, the bottleneck link as in the evaluator: the larger of the busiest NIC
  and the busiest NVLink port. A node's NICs receive its *node hits* (tokens with at least one expert
  there, from homes in other nodes, spread over its ``gpn`` NICs); a GPU's NVLink port receives its
  *GPU hits* from same-node homes and forwarders. Hits are loads minus deduplication: co-locating
  experts ``e, f`` on one node / GPU saves ``(2 / k) coact[e, f]`` hits, exact for top-2 and an
  over-estimate (never below the deduplicated count) for larger k, where a token with m of its k
  experts on a node counts ``m (k - m + 1) / k >= 1`` hits. Load-only inputs have no co-activation:
  hits are loads, so communication rewards balance too;
* context-coherent EP (``affinity`` given): tokens whose next expert sits on the GPU they are on stay
  there; every other token hops, priced as a copy to a uniformly random other GPU, averaged over GPUs.

The model's integer coefficients round the objective *down* for every assignment (loads floored,
savings ceiled), so CP-SAT's best bound, converted back, is a valid lower bound of the real-valued
objective; the objective itself is re-computed in floating point from the solution.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from placement.errors import InfeasibleError
from solvers.columns import cheap_column_bound, exact_column_bound
from solvers.common import TimeModel, load_bound
from solvers.pairsearch import partition_pair_bound

SHARE_UNITS = (
    100  # Q: replica shares in the CP-SAT model are multiples of 1/Q (the LP refines them)
)
LOAD_UNITS = 100_000  # loads are scaled so that one layer's tokens sum to about this many units
MAX_PAIR_TERMS = 16_384  # pair variables beyond this are dropped (weakest co-activations first)
COLUMN_BOUND_MIN_EXPERTS = 16  # smaller layers: CP-SAT proves them without the column cut
COLUMN_BOUND_MAX_EXPERTS = 160  # larger: the per-expert models cost more than the cut is worth
COLUMN_BOUND_SHARE = 0.3  # of a layer's time limit for the column cut (charged as build time)
COLUMN_BOUND_MAX_S = 2.0


@dataclass(frozen=True)
class LayerSpec:
    """Everything one layer's model needs. ``loads[t]`` is trace ``t``'s ``[E]`` load (normalised to
    one scale), ``coact[E, E]`` symmetric co-activation, ``affinity[E, G]`` tokens that would stay on
    GPU ``g`` if ``e`` had a replica there (coherent mode), ``hop_total`` all tokens entering the layer."""

    loads: tuple[np.ndarray, ...]
    trace_weights: tuple[float, ...]
    robust: str
    num_gpus: int
    gpus_per_node: int
    slots_per_gpu: int
    time: TimeModel
    balance_weight: float = 1.0
    traffic_weight: float = 1.0
    top_k: int = 1
    coact: np.ndarray | None = None
    affinity: np.ndarray | None = None
    hop_total: float = 0.0
    counts: np.ndarray | None = None  # fixed replica counts, or None: free within the slot budget
    current: np.ndarray | None = None  # [E, G] 0/1 current placement
    max_moves: int | None = None
    link_gpus_per_node: int | None = (
        None  # NICs per node when a "GPU" of this model is a whole node
    )
    node_limit: int | None = None  # DeepSeek-style: each token reaches at most this many nodes

    @property
    def num_experts(self) -> int:
        return int(self.loads[0].size)

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node

    def nic_hit_us(self) -> float:
        """us on a node's busiest NIC per node hit (homes elsewhere, spread over the node's NICs)."""
        N = self.num_nodes
        if N <= 1:
            return 0.0
        gpn = self.link_gpus_per_node or self.gpus_per_node
        return self.traffic_weight * self.time.us_per_nic_copy * (1 - 1 / N) / gpn

    def nvlink_hit_us(self) -> float:
        """us on a GPU's NVLink port per GPU hit (same-node homes, and forwarders' fan-out)."""
        G, gpn, N = self.num_gpus, self.gpus_per_node, self.num_nodes
        if gpn <= 1:
            return 0.0
        per_hit = (gpn - 1) / G + (1 - 1 / N) * (gpn - 1) / gpn
        return self.traffic_weight * self.time.us_per_nvlink_copy * per_hit

    def node_limit_scale(self, node_hits_total: float) -> float:
        """Node-limited routing: a token reaches at most ``node_limit`` nodes, so the router folds the
        hits beyond that into nodes the token already reaches; the layout's node hits, summed over
        nodes, shrink to at most ``node_limit x tokens``, spread in proportion over the nodes."""
        if self.node_limit is None or self.num_nodes <= self.node_limit or node_hits_total <= 0:
            return 1.0
        tokens = float(self.loads[0].sum()) / max(self.top_k, 1)
        return min(1.0, self.node_limit * tokens / node_hits_total)

    def node_limit_floor(self) -> float:
        """The smallest :meth:`node_limit_scale` of any layout (hits never exceed the loads)."""
        return self.node_limit_scale(float(self.loads[0].sum()))

    @property
    def pair_factor(self) -> float:
        return 2.0 / self.top_k

    def hop_us(self) -> float:
        """us per cross-GPU hop in coherent mode, averaged over GPUs."""
        G, gpn = self.num_gpus, self.gpus_per_node
        if G <= 1:
            return 0.0
        per = (self.time.us_per_nic_copy * (G - gpn) + self.time.us_per_nvlink_copy * (gpn - 1)) / (
            G - 1
        )
        return self.traffic_weight * per / G

    @property
    def standard(self) -> bool:
        return self.affinity is None

    def constant_us(self) -> float:
        """The placement-independent part: in coherent mode every token hops unless it stays."""
        return self.hop_us() * self.hop_total if self.affinity is not None else 0.0


@dataclass
class LayerResult:
    held: list[list[int]]  # [G][spg] expert ids
    share: np.ndarray  # [G * spg] shares in ``held`` order
    objective_us: float
    bound_us: float
    optimal: bool
    status: str
    deterministic_s: float = 0.0  # CP-SAT's deterministic time (reproducible work measure)


def _aggregate(spec: LayerSpec, peaks: list[float]) -> float:
    if spec.robust == "worst" and len(peaks) > 1:
        return max(w * p for w, p in zip(spec.trace_weights, peaks, strict=True))
    return float(sum(w * p for w, p in zip(spec.trace_weights, peaks, strict=True)))


def _hits(spec: LayerSpec, flat: np.ndarray, share: np.ndarray) -> tuple[float, float]:
    """(busiest node's hits, busiest GPU's hits) of a layout, primary trace, pair savings included;
    node hits scaled down by node-limited routing (:meth:`LayerSpec.node_limit_scale`)."""
    G, spg, gpn = spec.num_gpus, spec.slots_per_gpu, spec.gpus_per_node
    N = spec.num_nodes
    gpu_of = np.arange(flat.size) // spg
    slot_load = spec.loads[0][flat] * share
    gpu_hits = np.bincount(gpu_of, weights=slot_load, minlength=G)
    node_hits = np.bincount(gpu_of // gpn, weights=slot_load, minlength=N)
    if spec.coact is not None:
        E = spec.num_experts
        on_gpu = np.zeros((E, G))
        on_gpu[flat, gpu_of] = 1.0
        upper = np.triu(spec.coact, 1)
        # pairs on GPU g: sum over e<f of coact * on[e,g] * on[f,g]
        gpu_hits -= spec.pair_factor * np.einsum("eg,ef,fg->g", on_gpu, upper, on_gpu)
        on_node = np.minimum(on_gpu.reshape(E, N, gpn).sum(axis=2), 1.0)
        node_hits -= spec.pair_factor * np.einsum("en,ef,fn->n", on_node, upper, on_node)
    node_hits = np.maximum(node_hits, 0.0)
    scale = spec.node_limit_scale(float(node_hits.sum()))
    return float(node_hits.max()) * scale, float(gpu_hits.max())


def objective_us(spec: LayerSpec, held: list[list[int]], share: np.ndarray) -> float:
    """The model's objective for a layout and its shares, in floating point."""
    G, spg = spec.num_gpus, spec.slots_per_gpu
    flat = np.asarray(held, dtype=np.int64).ravel()
    gpu_of = np.arange(flat.size) // spg
    peaks = [
        float(np.bincount(gpu_of, weights=ld[flat] * share, minlength=G).max()) for ld in spec.loads
    ]
    out = spec.balance_weight * spec.time.us_per_assignment * _aggregate(spec, peaks)
    out += spec.constant_us()
    if spec.standard and spec.traffic_weight > 0:
        node_peak, gpu_peak = _hits(spec, flat, share)
        out += max(spec.nic_hit_us() * node_peak, spec.nvlink_hit_us() * gpu_peak)
    if spec.affinity is not None:
        on_gpu = np.zeros((spec.num_experts, G))
        on_gpu[flat, gpu_of] = 1.0
        out -= spec.hop_us() * float((spec.affinity * on_gpu).sum())
    return out


def analytic_bound_us(spec: LayerSpec, num_redundant: int, gpu_hits_floor: float = 0.0) -> float:
    """A valid lower bound on the objective without solving: load bounds plus traffic relaxations;
    ``gpu_hits_floor`` a proven lower bound on the busiest GPU's hits (the exact column bound)."""
    G, spg, N = spec.num_gpus, spec.slots_per_gpu, spec.num_nodes
    peaks = [load_bound(ld, G, spg, num_redundant) for ld in spec.loads]
    out = spec.balance_weight * spec.time.us_per_assignment * _aggregate(spec, peaks)
    out += spec.constant_us()
    if spec.standard and spec.traffic_weight > 0:
        total = float(spec.loads[0].sum())
        node_pairs = gpu_pairs = 0.0
        if spec.coact is not None:
            if num_redundant == 0:
                # the co-activation mass any partition into node- / GPU-sized groups can keep inside
                # its groups: the per-expert strongest-partners bound and the spectral bound
                node_pairs = partition_pair_bound(spec.coact, N, spec.gpus_per_node * spg)
                gpu_pairs = partition_pair_bound(spec.coact, G, spg)
            else:
                node_pairs = gpu_pairs = float(np.triu(spec.coact, 1).sum())
        # the busiest node / GPU has at least the average hits
        node_avg = max(0.0, total - spec.pair_factor * node_pairs) / N
        if spec.node_limit is not None and spec.node_limit < N:
            # scaled hits sum to min(hits, limit x tokens): the busiest node has their average
            node_avg = min(node_avg, spec.node_limit * total / max(spec.top_k, 1) / N)
        gpu_avg = max(0.0, total - spec.pair_factor * gpu_pairs) / G
        E = spec.num_experts
        if (
            spec.coact is not None
            and num_redundant == 0
            and spg > 1
            and E <= COLUMN_BOUND_MAX_EXPERTS
        ):
            # the GPU of every expert carries at least its cheapest column's hits (solvers.columns)
            cols = cheap_column_bound(spec.loads[0], spec.coact, spec.pair_factor, spg)
            gpu_avg = max(gpu_avg, float(cols.max()))
        gpu_avg = max(gpu_avg, gpu_hits_floor)
        if spec.coact is None:  # hits are loads: the load bounds apply at node and GPU granularity
            gpn = spec.gpus_per_node
            node_avg = load_bound(spec.loads[0], N, gpn * spg, num_redundant)
            node_avg *= spec.node_limit_floor()
            gpu_avg = load_bound(spec.loads[0], G, spg, num_redundant)
        out += max(spec.nic_hit_us() * node_avg, spec.nvlink_hit_us() * gpu_avg)
    if spec.affinity is not None:
        # a single replica stays on one GPU: at most its best GPU's tokens stay; replicas: all may
        best = spec.affinity.max(axis=1) if num_redundant == 0 else spec.affinity.sum(axis=1)
        out -= spec.hop_us() * float(best.sum())
    return out


def _pairs(coact: np.ndarray, limit: int) -> list[tuple[int, int, float]]:
    E = coact.shape[0]
    iu, ju = np.triu_indices(E, 1)
    vals = coact[iu, ju]
    keep = np.flatnonzero(vals > 0)
    if keep.size > limit:
        keep = keep[np.argsort(-vals[keep], kind="stable")[:limit]]
    return [(int(iu[k]), int(ju[k]), float(vals[k])) for k in keep]


def solve_layer(
    spec: LayerSpec,
    *,
    hint: list[list[int]] | None,
    time_limit_s: float,
    seed: int,
    workers: int,
    num_redundant: int,
    deterministic: bool = False,
) -> LayerResult:
    """Build and solve one layer's CP-SAT model; return its best layout, objective and proven bound."""
    build_start = time.perf_counter()
    E, G, gpn, spg = spec.num_experts, spec.num_gpus, spec.gpus_per_node, spec.slots_per_gpu
    N = spec.num_nodes
    replicas = G * spg > E
    Q = SHARE_UNITS if replicas else 1
    m = cp_model.CpModel()
    x = [[m.new_bool_var(f"x{e}_{g}") for g in range(G)] for e in range(E)]
    for g in range(G):
        m.add(sum(x[e][g] for e in range(E)) == spg)
    for e in range(E):
        if spec.counts is not None:
            m.add(sum(x[e]) == int(spec.counts[e]))
        else:
            m.add(sum(x[e]) >= 1)
    no_replicas = (spec.counts is not None and int(np.max(spec.counts)) == 1) or not replicas
    if no_replicas and spec.current is None and spec.affinity is None:
        # GPUs inside a node are interchangeable, and so are nodes: order nodes, and GPUs inside each
        # node, by their smallest expert id; then expert e sits on node <= e and local GPU <= e
        for e in range(E):
            for g in range(G):
                if g // gpn > e or g % gpn > e:
                    m.add(x[e][g] == 0)
        if hint is not None:
            hint = canonical(hint, gpn)
    if spec.current is not None and spec.max_moves is not None:
        new = [x[e][g] for e in range(E) for g in range(G) if not spec.current[e, g]]
        m.add(sum(new) <= int(spec.max_moves))
    # share variables: a replica's share of its expert's tokens, in 1/Q units
    r: list[list[cp_model.LinearExprT]] = []
    for e in range(E):
        fixed_single = spec.counts is not None and int(spec.counts[e]) == 1
        if not replicas or fixed_single:
            r.append([Q * x[e][g] for g in range(G)])
            continue
        row: list[cp_model.LinearExprT] = []
        for g in range(G):
            v = m.new_int_var(0, Q, f"r{e}_{g}")
            m.add(v <= Q * x[e][g])
            row.append(v)
        m.add(sum(row) == Q)
        r.append(row)
    # loads: scaled and floored, so the model never over-states a GPU's load
    scale = LOAD_UNITS / max(float(max(ld.sum() for ld in spec.loads)), 1e-12)
    peaks = []
    peak_ubs = []
    objective_terms: list[cp_model.LinearExprT] = []
    coef_unit = spec.balance_weight * spec.time.us_per_assignment / (scale * Q)
    # choose the integer resolution F so that one load unit of the busiest GPU is about 1000
    link_unit = max(spec.nic_hit_us(), spec.nvlink_hit_us()) / (scale * Q)
    F = 1000.0 / max(coef_unit * max(spec.trace_weights), link_unit, spec.hop_us(), 1e-300)
    for t, ld in enumerate(spec.loads):
        ints = np.floor(ld * scale).astype(np.int64)
        lb = math.floor(load_bound(ints.astype(float), G, spg, num_redundant)) * Q
        ub = int(ints.sum()) * Q
        peak = m.new_int_var(min(lb, ub), ub, f"peak{t}")
        for g in range(G):
            m.add(sum(int(ints[e]) * r[e][g] for e in range(E) if ints[e] > 0) <= peak)
        peaks.append(peak)
        peak_ubs.append(ub)
    # floor keeps the model below the true objective; the 1e-9 guards 99.999999 -> 99 round-off
    weights_int = [math.floor(coef_unit * w * F * (1 + 1e-12) + 1e-9) for w in spec.trace_weights]
    if spec.robust == "worst" and len(peaks) > 1:
        top = max(ub * w for ub, w in zip(peak_ubs, weights_int, strict=True))
        worst = m.new_int_var(0, top, "worst")
        for p, w in zip(peaks, weights_int, strict=True):
            m.add(worst >= w * p)
        objective_terms.append(worst)
    else:
        objective_terms += [w * p for p, w in zip(peaks, weights_int, strict=True)]
    pair_count = 0
    dropped_slack_us = 0.0
    hits_floor = 0.0  # proven lower bound on the busiest GPU's hits, in load units
    if spec.standard and spec.traffic_weight > 0:
        # hits in the peaks' integer units (loads floored, savings ceiled: never above the true hits)
        prim = np.floor(spec.loads[0] * scale).astype(np.int64)
        # node-limited routing scales node hits by at least node_limit_floor(): pricing the NIC at
        # that floor keeps the model below the true objective, hence its bound valid
        nic_int = math.floor(spec.nic_hit_us() * spec.node_limit_floor() / (scale * Q) * F)
        nvl_int = math.floor(spec.nvlink_hit_us() / (scale * Q) * F)
        use_nic, use_nvl = N > 1 and nic_int > 0, gpn > 1 and nvl_int > 0
        pairs: list[tuple[int, int, float]] = []
        if spec.coact is not None:
            per_pair_vars = (N if use_nic else 0) + (G if use_nvl else 0)
            pairs = (
                _pairs(spec.coact, MAX_PAIR_TERMS // max(per_pair_vars, 1)) if per_pair_vars else []
            )
        pair_count = len(pairs)
        if spec.coact is not None and (use_nic or use_nvl):
            # pairs left out of the model make it over-state hits: CP-SAT's bound is then valid only
            # after subtracting the most the dropped pairs could save on one node / GPU
            dropped = np.triu(spec.coact, 1).astype(np.float64)
            for pe, pf, _ in pairs:
                dropped[pe, pf] = 0.0
            dropped = dropped + dropped.T
            if dropped.any():
                slack_us = 0.0
                for link_us, group in ((spec.nic_hit_us(), gpn * spg), (spec.nvlink_hit_us(), spg)):
                    per = (-np.sort(-dropped, axis=1))[:, : group - 1].sum(axis=1)
                    most = 0.5 * float(np.sort(per)[::-1][:group].sum())
                    slack_us = max(slack_us, float(link_us * spec.pair_factor * most))
                dropped_slack_us = slack_us
        saving = [math.ceil(spec.pair_factor * c * scale * Q) for _, _, c in pairs]
        gpu_hits: list[list[cp_model.LinearExprT]] = [
            [int(prim[e]) * r[e][g] for e in range(E) if prim[e] > 0] for g in range(G)
        ]
        comm_ub = max(nic_int, nvl_int) * int(prim.sum()) * Q
        comm = m.new_int_var(0, max(comm_ub, 0), "comm")
        objective_terms.append(comm)
        if use_nic:
            node_hits = [
                [t for g in range(n * gpn, (n + 1) * gpn) for t in gpu_hits[g]] for n in range(N)
            ]
            if pairs:
                on_node = x  # one GPU per node (the node level of the hierarchy): the same variable
                if gpn > 1:
                    on_node = [[m.new_bool_var(f"n{e}_{n}") for n in range(N)] for e in range(E)]
                    for e in range(E):
                        for n in range(N):
                            m.add_max_equality(
                                on_node[e][n], [x[e][g] for g in range(n * gpn, (n + 1) * gpn)]
                            )
                partners_n: dict[tuple[int, int], list[cp_model.IntVar]] = {}
                for (e, f, _), sav in zip(pairs, saving, strict=True):
                    wv = [m.new_bool_var(f"wn{e}_{f}_{n}") for n in range(N)]
                    for n in range(N):
                        m.add_implication(wv[n], on_node[e][n])
                        m.add_implication(wv[n], on_node[f][n])
                        partners_n.setdefault((e, n), []).append(wv[n])
                        partners_n.setdefault((f, n), []).append(wv[n])
                        node_hits[n].append(-sav * wv[n])
                    m.add(sum(wv) <= 1)
                # an expert on a node has at most (slots in the node - 1) partners there: a strong cut
                # for the LP relaxation, which otherwise pairs everything with everything at 1/N
                for (e, n), ws in partners_n.items():
                    if len(ws) > gpn * spg - 1:
                        m.add(sum(ws) <= (gpn * spg - 1) * on_node[e][n])
            for n in range(N):
                m.add(comm >= nic_int * sum(node_hits[n]))
        if use_nvl:
            hits = [list(t) for t in gpu_hits]
            if pairs:
                partners_g: dict[tuple[int, int], list[cp_model.IntVar]] = {}
                for (e, f, _), sav in zip(pairs, saving, strict=True):
                    wv = [m.new_bool_var(f"wg{e}_{f}_{g}") for g in range(G)]
                    for g in range(G):
                        m.add_implication(wv[g], x[e][g])
                        m.add_implication(wv[g], x[f][g])
                        partners_g.setdefault((e, g), []).append(wv[g])
                        partners_g.setdefault((f, g), []).append(wv[g])
                        hits[g].append(-sav * wv[g])
                    m.add(sum(wv) <= 1)
                for (e, g), ws in partners_g.items():
                    m.add(sum(ws) <= (spg - 1) * x[e][g])
            for g in range(G):
                m.add(comm >= nvl_int * sum(hits[g]))
            if pairs and not replicas and COLUMN_BOUND_MIN_EXPERTS < E <= COLUMN_BOUND_MAX_EXPERTS:
                # every expert's GPU carries at least the fewest hits of any column holding it: an
                # implied cut on the model's own coefficients that lifts CP-SAT's bound where one hot
                # expert with few partners sets the busiest port (solvers.columns)
                col_s = min(COLUMN_BOUND_SHARE * time_limit_s, COLUMN_BOUND_MAX_S)
                hot = exact_column_bound(
                    prim,
                    [(e, f, s) for (e, f, _), s in zip(pairs, saving, strict=True)],
                    spg,
                    time_limit_s=col_s,
                    seed=seed,
                    deterministic=deterministic,
                )
                if hot > 0:
                    m.add(comm >= nvl_int * hot)
                    hits_floor = hot / (scale * Q)  # also holds when CP-SAT finds no solution
    if spec.affinity is not None and spec.traffic_weight > 0:
        hop_c = spec.hop_us() * F
        for e in range(E):
            for g in range(G):
                if spec.affinity[e, g] > 0:
                    objective_terms.append(-math.ceil(hop_c * spec.affinity[e, g]) * x[e][g])
    m.minimize(sum(objective_terms))
    # building a large model takes time too: charge it against this layer's limit
    if not deterministic:  # wall-clock build time would make deterministic runs differ
        time_limit_s = max(0.01, time_limit_s - (time.perf_counter() - build_start))
    if hint is not None:
        on = {(e, g) for g, row in enumerate(hint) for e in row}
        for e in range(E):
            for g in range(G):
                m.add_hint(x[e][g], (e, g) in on)
    solver = cp_model.CpSolver()
    solver.parameters.random_seed = seed
    if deterministic:
        # one worker and a deterministic-time limit: the same answer on every run and machine
        solver.parameters.num_workers = 1
        solver.parameters.max_deterministic_time = max(time_limit_s, 0.01)
        solver.parameters.max_time_in_seconds = max(10 * time_limit_s, 1.0)
    else:
        solver.parameters.num_workers = max(1, workers)
        solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    status = solver.solve(m)
    name = solver.status_name(status)
    det_s = float(solver.deterministic_time)
    if status == cp_model.INFEASIBLE:
        raise InfeasibleError(
            "no placement satisfies the constraints (migration budget too small for the slot counts?)"
        )
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if hint is None:
            raise InfeasibleError(f"CP-SAT found no placement within {time_limit_s:.3g} s")
        held = [list(h) for h in hint]
        share = _even_share(held)
        bound = analytic_bound_us(spec, num_redundant, hits_floor)
        return LayerResult(held, share, objective_us(spec, held, share), bound, False, name, det_s)
    held = [[e for e in range(E) if solver.boolean_value(x[e][g])] for g in range(G)]
    share = np.zeros(G * spg)
    for g in range(G):
        for i, e in enumerate(held[g]):
            share[g * spg + i] = solver.value(r[e][g]) / Q
    # a replica given 0 of the expert's tokens is legal but wastes a slot: keep shares summing to 1
    flat = np.asarray(held).ravel()
    sums = np.bincount(flat, weights=share, minlength=E)
    bad = sums[flat] <= 0
    share[bad] = 1.0
    sums = np.bincount(flat, weights=share, minlength=E)
    share = share / sums[flat]
    const = spec.constant_us()
    cp_bound = solver.best_objective_bound / F + const - dropped_slack_us
    bound = max(cp_bound, analytic_bound_us(spec, num_redundant, hits_floor))
    obj = objective_us(spec, held, share)
    if hint is not None and not replicas:
        # the model rounds and may leave pairs out: never return worse than the hint it was given
        hint_share = _even_share([list(h) for h in hint])
        hint_obj = objective_us(spec, hint, hint_share)
        if hint_obj < obj - 1e-9 * max(abs(obj), 1.0):
            held, share, obj = [list(h) for h in hint], hint_share, hint_obj
    proven = status == cp_model.OPTIMAL and dropped_slack_us == 0.0
    res = LayerResult(held, share, obj, min(bound, obj), proven, name, det_s)
    res.status = f"{name} ({pair_count} pairs)" if pair_count else name
    return res


def canonical(held: list[list[int]], gpus_per_node: int) -> list[list[int]]:
    """The same layout with nodes, and GPUs inside each node, ordered by their smallest expert id."""
    G = len(held)
    nodes = [held[n * gpus_per_node : (n + 1) * gpus_per_node] for n in range(G // gpus_per_node)]
    nodes = [sorted(node, key=min) for node in nodes]
    nodes.sort(key=lambda node: min(min(g) for g in node))
    return [list(g) for node in nodes for g in node]


def _even_share(held: list[list[int]]) -> np.ndarray:
    flat = np.asarray(held, dtype=np.int64).ravel()
    cnt = np.bincount(flat)
    return 1.0 / cnt[flat]
