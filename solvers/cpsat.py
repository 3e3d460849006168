"""The exact per-layer model in OR-Tools CP-SAT, whose objective is the predicted MoE-layer time (us).

Variables (one layer): ``x[e, g]`` expert ``e`` has a replica on GPU ``g``; with replicas, ``r[e, g]`` the
share of ``e``'s tokens GPU ``g`` takes in units of ``1 / Q``. Constraints: ``spg`` slots per GPU,
every expert placed (its replica count fixed, or free within the slot budget), at most one replica of
an expert per GPU, shares only where a replica is, an optional migration budget against a current plan.

Objective, in microseconds at the evaluator's step size (see :class:`moe_placement.solvers.common.TimeModel`):

* compute: ``balance_weight * us_per_assignment * max_g load[g]`` -- for several traces the weighted
  sum of their busiest GPUs or the worst of them (robust placement);
* standard EP communication, the bottleneck link as in the evaluator: the larger of the busiest NIC
  and the busiest NVLink port. A node's NICs receive its *node hits* (tokens with at least one expert
  there, from homes in other nodes, spread over its ``gpn`` NICs); a GPU's NVLink port receives its
  *GPU hits* from same-node homes and forwarders. The objective counts hits exactly where the
  layer's tokens are known (token coverage, :mod:`moe_placement.solvers.coverage`); the CP-SAT model counts
  ``hit_alpha x load`` per expert minus ``beta x coact[e, f]`` per pair of experts sharing a node /
  GPU, with ``(alpha, beta)`` a valid vertex (never above coverage, exact for top-2) so that its bound
  bounds the exact count. Load-only inputs have no co-activation: hits are loads, so communication
  rewards balance too;
* context-coherent EP (``affinity`` given): tokens whose next expert sits on the GPU they are on stay
  there; every other token hops, priced as a copy to a uniformly random other GPU, averaged over GPUs.

The model's integer coefficients round the objective *down* for every assignment (loads floored,
savings ceiled), so CP-SAT's best bound, converted back, is a valid lower bound of the real-valued
objective; the objective itself is re-computed in floating point from the solution.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from moe_placement import interrupt
from moe_placement.errors import InfeasibleError
from moe_placement.solvers.columns import cheap_column_bound, exact_column_bound
from moe_placement.solvers.common import TimeModel, load_bound
from moe_placement.solvers.coverage import (
    TokenLayer,
    all_valid_coefs,
    gpu_coverage,
    node_inflow_exact,
)
from moe_placement.solvers.pairsearch import partition_pair_bound

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
    # [E, nodes] the primary trace's assignments of each expert by home node (None: spread evenly)
    node_demand: np.ndarray | None = None
    # per-token traces: placement.metrics' ReplicaRouter serves a node's homes from that node's own
    # replicas first (nearest first), so a node receives only what its replicas take beyond local demand;
    # load-only traces: the evaluator's independent-choice estimate splits every home by the shares
    nearest_first: bool = False
    # hits per (token, GPU / node) with m of its experts there: ``hit_alpha m - pair_factor C(m, 2)``
    # (solvers.coverage); None keeps the legacy top-2 rule alpha = 1, beta = 2 / k
    hit_alpha: float = 1.0
    hit_beta: float | None = None
    # the primary trace's tokens of this layer: the objective then counts hits exactly (coverage, as
    # placement.metrics deduplicates) for layouts with one replica per expert; the CP-SAT model keeps
    # the pairwise surrogate, which must then be valid (never above coverage) for its bound to hold
    tokens: TokenLayer | None = None
    # [nodes, E, E] co-activation over tokens homed outside each node (None: rho_n x coact)
    remote_coact: np.ndarray | None = None

    @property
    def num_experts(self) -> int:
        return int(self.loads[0].size)

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node

    def nic_hit_us(self) -> float:
        """us on a node's busiest NIC per copy the node receives from homes elsewhere (spread over the
        node's NICs: DeepEP sends to the GPU with the sender's local index)."""
        N = self.num_nodes
        if N <= 1:
            return 0.0
        gpn = self.link_gpus_per_node or self.gpus_per_node
        return self.traffic_weight * self.time.us_per_nic_copy / gpn

    def demand_by_node(self) -> np.ndarray:
        """``[E, nodes]`` assignments of each expert by the home node of the token (primary trace)."""
        if self.node_demand is not None and self.node_demand.shape == (
            self.num_experts,
            self.num_nodes,
        ):
            return self.node_demand
        return np.repeat(self.loads[0][:, None] / self.num_nodes, self.num_nodes, axis=1)

    def remote_fraction(self) -> np.ndarray:
        """``[nodes]``: the fraction of tokens homed outside each node (scales its pair savings)."""
        D = self.demand_by_node()
        total = max(float(self.loads[0].sum()), 1e-12)
        return np.clip(1.0 - D.sum(axis=0) / total, 0.0, 1.0)

    def latency_us(self) -> float:
        """The evaluator's latency of the layer (dispatch + combine) for the link the topology uses."""
        gpn = self.link_gpus_per_node or self.gpus_per_node
        return self.traffic_weight * self.time.latency_us(self.num_nodes, gpn)

    def latency_floor_us(self) -> float:
        """:meth:`latency_us` at its smallest over layouts: with an expert on every node, nothing need
        cross nodes and the evaluator charges NVLink's latency instead (valid for bounds)."""
        gpn = self.link_gpus_per_node or self.gpus_per_node
        if self.num_nodes > 1 and self.num_gpus * self.slots_per_gpu >= (
            self.num_experts * self.num_nodes
        ):
            return min(self.latency_us(), self.traffic_weight * self.time.latency_us(1, gpn))
        return self.latency_us()

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
        """beta: hits saved per co-activation of two experts sharing a GPU / node."""
        if self.hit_beta is not None:
            return self.hit_beta
        return 2.0 / self.top_k

    def node_pair_coact(self) -> np.ndarray:
        """``[nodes, E, E]``: the co-activations whose pairs save NIC copies into each node."""
        if self.remote_coact is not None:
            return self.remote_coact
        assert self.coact is not None
        return self.remote_fraction()[:, None, None] * self.coact[None, :, :]

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

    def compute_floor_us(self) -> float:
        """The roofline's HBM floor on the busiest GPU: at least ``ceil(active experts / G)`` experts'
        weights are read (every expert with load is held somewhere)."""
        active = int(np.count_nonzero(self.loads[0] > 0))
        return self.time.us_per_active_expert * math.ceil(active / max(self.num_gpus, 1))


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


def node_inflow(spec: LayerSpec, flat: np.ndarray, share: np.ndarray) -> np.ndarray:
    """``[nodes]`` token copies each node receives from homes in other nodes (before node-limited
    routing). Per expert ``e`` and node ``n`` with share ``s`` of ``e`` there and demand ``D`` homed in
    ``n``: nearest-first routing (per-token traces) sends ``max(0, load s - D)`` from elsewhere; the
    load-only estimate splits every home by the shares, ``s (load - D)``. Co-located pairs of experts
    that live wholly on ``n`` save ``(2 / k) coact`` copies of the tokens homed elsewhere."""
    E, N, gpn = spec.num_experts, spec.num_nodes, spec.gpus_per_node
    node_of_slot = (np.arange(flat.size) // spec.slots_per_gpu) // gpn
    load = spec.loads[0]
    D = spec.demand_by_node()
    s_en = np.zeros((E, N))
    np.add.at(s_en, (flat, node_of_slot), share)
    if spec.nearest_first:
        inflow = np.maximum(load[:, None] * s_en - D, 0.0).sum(axis=0)
    else:
        inflow = (s_en * np.maximum(load[:, None] - D, 0.0)).sum(axis=0)
    inflow = spec.hit_alpha * inflow
    if spec.coact is not None:
        whole = (s_en >= 1.0 - 1e-9).astype(np.float64)  # experts wholly on node n
        upper = np.triu(spec.node_pair_coact(), 1)
        pairs = np.einsum("en,nef,fn->n", whole, upper, whole)
        inflow = inflow - spec.pair_factor * pairs
    return np.maximum(inflow, 0.0)


def exact_applies(spec: LayerSpec, flat: np.ndarray) -> bool:
    """Hits are counted exactly (token coverage) when the layer's tokens are known, the layout holds
    one replica per expert and the spec's experts are the trace's (not a sub-problem)."""
    return (
        spec.tokens is not None
        and flat.size == spec.num_experts
        and spec.link_gpus_per_node is None
        and np.unique(flat).size == flat.size
    )


def _hits(spec: LayerSpec, flat: np.ndarray, share: np.ndarray) -> tuple[float, float]:
    """(busiest node's copies from other nodes, busiest GPU's hits) of a layout, primary trace, pair
    savings included; node copies scaled down by node-limited routing
    (:meth:`LayerSpec.node_limit_scale`). A pair saves GPU hits only where both experts have their
    whole share on that GPU (with split shares the tokens of a pair need not meet)."""
    G, spg = spec.num_gpus, spec.slots_per_gpu
    gpu_of = np.arange(flat.size) // spg
    if exact_applies(spec, flat):
        where = np.empty(spec.num_experts, dtype=np.int64)
        where[flat] = gpu_of
        cover = gpu_coverage(spec.tokens, where, G)  # type: ignore[arg-type]
        node = np.zeros(1)
        if spec.num_nodes > 1:
            node = node_inflow_exact(spec.tokens, where, spec.gpus_per_node, spec.num_nodes)  # type: ignore[arg-type]
        scale = spec.node_limit_scale(float(node.sum()))
        return float(node.max()) * scale, float(cover.max())
    slot_load = spec.loads[0][flat] * share
    gpu_hits = spec.hit_alpha * np.bincount(gpu_of, weights=slot_load, minlength=G)
    if spec.coact is not None:
        E = spec.num_experts
        whole = np.zeros((E, G))
        np.add.at(whole, (flat, gpu_of), share)
        whole = (whole >= 1.0 - 1e-9).astype(np.float64)
        upper = np.triu(spec.coact, 1)
        gpu_hits -= spec.pair_factor * np.einsum("eg,ef,fg->g", whole, upper, whole)
    node = node_inflow(spec, flat, share)
    scale = spec.node_limit_scale(float(node.sum()))
    return float(node.max()) * scale, float(gpu_hits.max())


def objective_us(spec: LayerSpec, held: list[list[int]], share: np.ndarray) -> float:
    """The model's objective for a layout and its shares, in floating point."""
    G, spg = spec.num_gpus, spec.slots_per_gpu
    flat = np.asarray(held, dtype=np.int64).ravel()
    gpu_of = np.arange(flat.size) // spg
    # roofline, as placement.metrics.compute_us: each GPU reads its active experts' weights at least
    active = np.bincount(gpu_of, weights=(spec.loads[0][flat] > 0).astype(float), minlength=G)
    hbm_us = spec.time.us_per_active_expert * float(active.max())
    peaks = [
        max(
            spec.time.us_per_assignment
            * float(np.bincount(gpu_of, weights=ld[flat] * share, minlength=G).max()),
            hbm_us,
        )
        for ld in spec.loads
    ]
    out = spec.balance_weight * _aggregate(spec, peaks)
    out += spec.constant_us()
    if spec.traffic_weight > 0 and (spec.num_gpus > 1):
        out += spec.latency_us()
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
    floor_us = spec.compute_floor_us()
    peaks = [
        max(spec.time.us_per_assignment * load_bound(ld, G, spg, num_redundant), floor_us)
        for ld in spec.loads
    ]
    out = spec.balance_weight * _aggregate(spec, peaks)
    out += spec.constant_us()
    if spec.traffic_weight > 0 and G > 1:
        out += spec.latency_floor_us()
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
        # copies into nodes from elsewhere: an expert on at most m nodes receives at least its load
        # minus the demand homed in its m best nodes (m = 1 without replicas or with the load-only
        # estimate, which splits every home by the shares)
        D = spec.demand_by_node()
        m = 1
        if spec.nearest_first and num_redundant > 0:
            m = min(N, 1 + num_redundant)
        top_demand = (-np.sort(-D, axis=1))[:, :m].sum(axis=1)
        remote = float(np.maximum(spec.loads[0] - top_demand, 0.0).sum())
        rho = float(spec.remote_fraction().max()) if N > 1 else 0.0
        if spec.remote_coact is not None:
            rho = 1.0  # remote co-activation never exceeds the total: the pair bound applies as is
        alpha = spec.hit_alpha
        # the busiest node / GPU has at least the average (q(m) = alpha m - beta C(m, 2) per token)
        # any valid surrogate bounds exact coverage: the best vertex, not only the model's own
        coefs = [(alpha, spec.pair_factor)]
        if spec.tokens is not None and num_redundant == 0:
            coefs += all_valid_coefs(spec.top_k)
        node_avg = max(max(0.0, a * remote - b * rho * node_pairs) for a, b in coefs) / N
        if spec.node_limit is not None and spec.node_limit < N:
            # scaled copies sum to at most limit x tokens: the busiest node has at least that average
            node_avg = min(node_avg, spec.node_limit * total / max(spec.top_k, 1) / N)
        gpu_avg = max(max(0.0, a * total - b * gpu_pairs) for a, b in coefs) / G
        if spec.tokens is not None and num_redundant == 0:
            # exact coverage: every token reaches at least ceil(k / spg) GPUs
            reach = math.ceil(spec.tokens.experts.shape[1] / max(spg, 1))
            gpu_avg = max(gpu_avg, spec.tokens.num_tokens * reach / G)
        E = spec.num_experts
        if (
            spec.coact is not None
            and num_redundant == 0
            and spg > 1
            and E <= COLUMN_BOUND_MAX_EXPERTS
        ):
            # the GPU of every expert carries at least its cheapest column's hits (solvers.columns)
            for a, b in coefs:  # every valid surrogate bounds coverage: keep the strongest
                cols = cheap_column_bound(a * spec.loads[0], spec.coact, b, spg)
                gpu_avg = max(gpu_avg, float(cols.max()))
        gpu_avg = max(gpu_avg, gpu_hits_floor)
        if spec.coact is None:  # hits are loads: the load bounds apply at node and GPU granularity
            gpn = spec.gpus_per_node
            if m == 1 and N > 1:
                # every node receives at least (1 - the largest home fraction) of its load
                pos = spec.loads[0] > 0
                frac = float((D[pos] / spec.loads[0][pos, None]).max()) if pos.any() else 1.0
                node_load = load_bound(spec.loads[0], N, gpn * spg, num_redundant)
                node_avg = max(node_avg, (1.0 - frac) * node_load * spec.node_limit_floor())
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


@dataclass
class _Vars:
    """One layer's CP-SAT model and its variables: ``x[e][g]`` expert ``e`` has a replica on GPU ``g``;
    ``r[e][g]`` its share of ``e``'s tokens in ``1 / Q`` units (``Q x[e][g]`` where ``e`` has one replica)."""

    m: cp_model.CpModel
    x: list[list[cp_model.IntVar]]
    r: list[list[cp_model.LinearExprT]]
    Q: int
    replicas: bool  # more slots than experts: some expert may have several replicas


@dataclass
class _Terms:
    """The objective under construction, in integer units: ``F`` integer units per microsecond,
    ``scale`` load units per token assignment; what the bound must give back (``dropped_slack_us``) or
    may add (``hits_floor``, load units), and how many pairs the model prices."""

    scale: float
    F: float = 1.0
    terms: list[cp_model.LinearExprT] = dataclasses.field(default_factory=list)
    dropped_slack_us: float = 0.0
    hits_floor: float = 0.0
    pair_count: int = 0


def _variables(spec: LayerSpec) -> _Vars:
    """``x`` and ``r`` with the share constraints: shares only where a replica is, summing to ``Q``."""
    E, G = spec.num_experts, spec.num_gpus
    replicas = G * spec.slots_per_gpu > E
    Q = SHARE_UNITS if replicas else 1
    m = cp_model.CpModel()
    x = [[m.new_bool_var(f"x{e}_{g}") for g in range(G)] for e in range(E)]
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
    return _Vars(m, x, r, Q, replicas)


def _constraints(spec: LayerSpec, v: _Vars, hint: list[list[int]] | None) -> list[list[int]] | None:
    """Slots per GPU, every expert placed (its count fixed, or at least once), symmetry breaking and
    the migration budget. Returns the hint in the symmetry-broken (canonical) order."""
    E, G, gpn, spg = spec.num_experts, spec.num_gpus, spec.gpus_per_node, spec.slots_per_gpu
    m, x = v.m, v.x
    for g in range(G):
        m.add(sum(x[e][g] for e in range(E)) == spg)
    for e in range(E):
        if spec.counts is not None:
            m.add(sum(x[e]) == int(spec.counts[e]))
        else:
            m.add(sum(x[e]) >= 1)
    no_replicas = (spec.counts is not None and int(np.max(spec.counts)) == 1) or not v.replicas
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
    return hint


def _compute_terms(spec: LayerSpec, v: _Vars, num_redundant: int) -> _Terms:
    """The compute part (busiest GPU per trace, its HBM floor, robust aggregation) and the integer
    resolution ``F``. Loads are scaled and floored, so the model never over-states a GPU's load."""
    E, G, spg, Q, m = spec.num_experts, spec.num_gpus, spec.slots_per_gpu, v.Q, v.m
    scale = LOAD_UNITS / max(float(max(ld.sum() for ld in spec.loads)), 1e-12)
    out = _Terms(scale)
    peaks: list[cp_model.LinearExprT] = []
    peak_ubs: list[int] = []
    peak_lbs: list[int] = []
    coef_unit = spec.balance_weight * spec.time.us_per_assignment / (scale * Q)
    # choose the integer resolution F so that the dearest price per integer unit is about 1000; every
    # price must be per *scaled* unit: the hop price per token (coherent mode only) is scale times
    # larger, and mixing it in unscaled shrank F until the link prices floored to 0 (comm dropped)
    link_unit = max(spec.nic_hit_us(), spec.nvlink_hit_us()) / (scale * Q)
    hop_unit = spec.hop_us() / scale if spec.affinity is not None else 0.0
    out.F = 1000.0 / max(coef_unit * max(spec.trace_weights), link_unit, hop_unit, 1e-300)
    for t, ld in enumerate(spec.loads):
        ints = np.floor(ld * scale).astype(np.int64)
        lb = math.floor(load_bound(ints.astype(float), G, spg, num_redundant)) * Q
        ub = int(ints.sum()) * Q
        peak = m.new_int_var(min(lb, ub), ub, f"peak{t}")
        peak_lbs.append(min(lb, ub))
        for g in range(G):
            m.add(sum(int(ints[e]) * v.r[e][g] for e in range(E) if ints[e] > 0) <= peak)
        peaks.append(peak)
        peak_ubs.append(ub)
    # floor keeps the model below the true objective; the 1e-9 guards 99.999999 -> 99 round-off
    weights_int = [
        math.floor(coef_unit * w * out.F * (1 + 1e-12) + 1e-9) for w in spec.trace_weights
    ]
    # the roofline's HBM floor: compute is max(FLOP time of the busiest GPU, weight reads)
    floor_us = spec.compute_floor_us()
    if floor_us > 0:
        for t, w in enumerate(spec.trace_weights):
            hbm_int = math.floor(spec.balance_weight * w * floor_us * out.F)
            if hbm_int > weights_int[t] * peak_lbs[t]:
                top = max(weights_int[t] * peak_ubs[t], hbm_int)
                c = m.new_int_var(hbm_int, top, f"compute{t}")
                m.add(c >= weights_int[t] * peaks[t])
                peaks[t], peak_ubs[t], weights_int[t] = c, top, 1
    if spec.robust == "worst" and len(peaks) > 1:
        top = max(ub * w for ub, w in zip(peak_ubs, weights_int, strict=True))
        worst = m.new_int_var(0, top, "worst")
        for p, w in zip(peaks, weights_int, strict=True):
            m.add(worst >= w * p)
        out.terms.append(worst)
    else:
        out.terms += [w * p for p, w in zip(peaks, weights_int, strict=True)]
    return out


def _dropped_slack_us(spec: LayerSpec, pairs: list[tuple[int, int, float]]) -> float:
    """Pairs left out of the model make it over-state hits: CP-SAT's bound is valid only after
    subtracting the most the dropped pairs could save on one node / GPU (us)."""
    assert spec.coact is not None
    dropped = np.triu(spec.coact, 1).astype(np.float64)
    for pe, pf, _ in pairs:
        dropped[pe, pf] = 0.0
    dropped = dropped + dropped.T
    if not dropped.any():
        return 0.0
    spg, gpn = spec.slots_per_gpu, spec.gpus_per_node
    slack_us = 0.0
    for link_us, group in ((spec.nic_hit_us(), gpn * spg), (spec.nvlink_hit_us(), spg)):
        per = (-np.sort(-dropped, axis=1))[:, : group - 1].sum(axis=1)
        most = 0.5 * float(np.sort(per)[::-1][:group].sum())
        slack_us = max(slack_us, float(link_us * spec.pair_factor * most))
    return slack_us


def _pair_savings(
    v: _Vars,
    pairs: list[tuple[int, int, float]],
    on: list[list[cp_model.IntVar]],
    share: list[list[cp_model.LinearExprT]],
    saving: Callable[[int, int], int],
    hits: list[list[cp_model.LinearExprT]],
    capacity: int,
    tag: str,
) -> None:
    """Pair savings at one level (nodes or GPUs; ``groups = len(hits)``): ``w[e, f, n]`` says experts
    ``e`` and ``f`` are both in group ``n`` (wholly, with replicas), which takes ``saving(k, n)``
    integer hits off group ``n``'s count for the ``k``-th pair. ``on[e][n]`` is ``e`` in ``n``,
    ``share[e][n]`` its share there in ``1 / Q`` units; ``capacity`` the group's slots."""
    m, Q = v.m, v.Q
    groups = len(hits)
    partners: dict[tuple[int, int], list[cp_model.IntVar]] = {}
    for k, (e, f, _) in enumerate(pairs):
        w = [m.new_bool_var(f"w{tag}{e}_{f}_{n}") for n in range(groups)]
        for n in range(groups):
            m.add_implication(w[n], on[e][n])
            m.add_implication(w[n], on[f][n])
            if v.replicas:  # a pair saves only where both experts are wholly in group n
                for z in (e, f):
                    m.add(Q * w[n] <= share[z][n])
            partners.setdefault((e, n), []).append(w[n])
            partners.setdefault((f, n), []).append(w[n])
            hits[n].append(-saving(k, n) * w[n])
        m.add(sum(w) <= 1)
    # an expert in a group has at most (slots there - 1) partners there: a strong cut for the LP
    # relaxation, which otherwise pairs everything with everything at 1 / groups
    for (e, n), ws in partners.items():
        if len(ws) > capacity - 1:
            m.add(sum(ws) <= (capacity - 1) * on[e][n])


def _node_hits(
    spec: LayerSpec, v: _Vars, prim: np.ndarray, t: _Terms, pairs: list[tuple[int, int, float]]
) -> list[list[cp_model.LinearExprT]]:
    """``[nodes]`` integer copies into each node from homes elsewhere (see :func:`node_inflow`):
    demand ceiled, loads floored, savings ceiled, so never above the true count."""
    m, x, r, Q = v.m, v.x, v.r, v.Q
    E, G, gpn, N = spec.num_experts, spec.num_gpus, spec.gpus_per_node, spec.num_nodes
    D_int = np.ceil(spec.hit_alpha * spec.demand_by_node() * t.scale - 1e-9).astype(np.int64)
    node_share: list[list[cp_model.LinearExprT]] = [
        [sum(r[e][g] for g in range(n * gpn, (n + 1) * gpn)) for n in range(N)] for e in range(E)
    ]
    hits: list[list[cp_model.LinearExprT]] = [[] for _ in range(N)]
    for e in range(E):
        single = (spec.counts is not None and int(spec.counts[e]) == 1) or not v.replicas
        for n in range(N):
            rest = int(prim[e]) - int(D_int[e, n])
            if single or not spec.nearest_first:
                # whole share or proportional split: linear in the share
                if rest > 0:
                    hits[n].append(rest * node_share[e][n])
                continue
            y = m.new_int_var(0, max(int(prim[e]) * Q, 0), f"in{e}_{n}")
            m.add(y >= int(prim[e]) * node_share[e][n] - int(D_int[e, n]) * Q)
            hits[n].append(y)
    if pairs:
        node_coact = spec.node_pair_coact()
        on_node = x  # one GPU per node (the node level of the hierarchy): the same variable
        if gpn > 1:
            on_node = [[m.new_bool_var(f"n{e}_{n}") for n in range(N)] for e in range(E)]
            for e in range(E):
                for n in range(N):
                    m.add_max_equality(
                        on_node[e][n], [x[e][g] for g in range(n * gpn, (n + 1) * gpn)]
                    )

        def saving(k: int, n: int) -> int:
            e, f, _ = pairs[k]
            return math.ceil(spec.pair_factor * float(node_coact[n, e, f]) * t.scale * Q)

        spg = spec.slots_per_gpu
        _pair_savings(v, pairs, on_node, node_share, saving, hits, gpn * spg, "n")
    assert N * gpn == G
    return hits


def _column_cut(
    spec: LayerSpec,
    prim: np.ndarray,
    pairs: list[tuple[int, int, float]],
    saving: list[int],
    time_limit_s: float,
    seed: int,
    deterministic: bool,
) -> int:
    """Every expert's GPU carries at least the fewest hits of any column holding it: an implied cut on
    the model's own coefficients that lifts CP-SAT's bound where one hot expert with few partners sets
    the busiest port (:mod:`moe_placement.solvers.columns`). Integer hits, 0 where it does not apply."""
    if not COLUMN_BOUND_MIN_EXPERTS < spec.num_experts <= COLUMN_BOUND_MAX_EXPERTS:
        return 0
    return exact_column_bound(
        prim,
        [(e, f, s) for (e, f, _), s in zip(pairs, saving, strict=True)],
        spec.slots_per_gpu,
        time_limit_s=min(COLUMN_BOUND_SHARE * time_limit_s, COLUMN_BOUND_MAX_S),
        seed=seed,
        deterministic=deterministic,
    )


def _comm_terms(
    spec: LayerSpec, v: _Vars, t: _Terms, time_limit_s: float, seed: int, deterministic: bool
) -> None:
    """Standard EP communication: ``comm >= `` the busiest NIC's and the busiest NVLink port's price
    times their hits (the surrogate ``alpha x load`` minus pair savings), appended to ``t.terms``."""
    m, x, r, Q = v.m, v.x, v.r, v.Q
    E, G, gpn, spg, N = (
        spec.num_experts,
        spec.num_gpus,
        spec.gpus_per_node,
        spec.slots_per_gpu,
        spec.num_nodes,
    )
    # hits in the peaks' integer units (loads floored, savings ceiled: never above the true hits)
    # times alpha: the surrogate's per-expert hit weight (solvers.coverage)
    prim = np.floor(spec.hit_alpha * spec.loads[0] * t.scale).astype(np.int64)
    # node-limited routing scales node hits by at least node_limit_floor(): pricing the NIC at
    # that floor keeps the model below the true objective, hence its bound valid
    nic_int = math.floor(spec.nic_hit_us() * spec.node_limit_floor() / (t.scale * Q) * t.F)
    nvl_int = math.floor(spec.nvlink_hit_us() / (t.scale * Q) * t.F)
    use_nic, use_nvl = N > 1 and nic_int > 0, gpn > 1 and nvl_int > 0
    pairs: list[tuple[int, int, float]] = []
    per_pair_vars = (N if use_nic else 0) + (G if use_nvl else 0)
    if spec.coact is not None and per_pair_vars:
        pairs = _pairs(spec.coact, MAX_PAIR_TERMS // per_pair_vars)
        t.dropped_slack_us = _dropped_slack_us(spec, pairs)
    t.pair_count = len(pairs)
    comm_ub = max(nic_int, nvl_int) * int(prim.sum()) * Q
    comm = m.new_int_var(0, max(comm_ub, 0), "comm")
    t.terms.append(comm)
    if use_nic:
        for hits in _node_hits(spec, v, prim, t, pairs):
            m.add(comm >= nic_int * sum(hits))
    if not use_nvl:
        return
    gpu_hits: list[list[cp_model.LinearExprT]] = [
        [int(prim[e]) * r[e][g] for e in range(E) if prim[e] > 0] for g in range(G)
    ]
    saving = [math.ceil(spec.pair_factor * c * t.scale * Q) for _, _, c in pairs]
    if pairs:
        _pair_savings(v, pairs, x, r, lambda k, _g: saving[k], gpu_hits, spg, "g")
    for g in range(G):
        m.add(comm >= nvl_int * sum(gpu_hits[g]))
    if pairs and not v.replicas:
        hot = _column_cut(spec, prim, pairs, saving, time_limit_s, seed, deterministic)
        if hot > 0:
            m.add(comm >= nvl_int * hot)
            t.hits_floor = hot / (t.scale * Q)  # also holds when CP-SAT finds no solution


def _hop_terms(spec: LayerSpec, v: _Vars, t: _Terms) -> None:
    """Context-coherent EP: every token whose next expert sits on its GPU saves a hop."""
    assert spec.affinity is not None
    hop_c = spec.hop_us() * t.F
    for e in range(spec.num_experts):
        for g in range(spec.num_gpus):
            if spec.affinity[e, g] > 0:
                t.terms.append(-math.ceil(hop_c * spec.affinity[e, g]) * v.x[e][g])


def _hints(spec: LayerSpec, v: _Vars, hint: list[list[int]] | None) -> None:
    if hint is None:
        return
    on = {(e, g) for g, row in enumerate(hint) for e in row}
    for e in range(spec.num_experts):
        for g in range(spec.num_gpus):
            v.m.add_hint(v.x[e][g], (e, g) in on)


def _solve(
    m: cp_model.CpModel, time_limit_s: float, seed: int, workers: int, deterministic: bool
) -> tuple[cp_model.CpSolver, Any]:
    solver = cp_model.CpSolver()
    solver.parameters.random_seed = seed
    # SIGINT belongs to the command (moe_placement.interrupt): CP-SAT's own handler would end this search
    # but hide the signal from Python, so the next layer would search on as if nothing had happened
    solver.parameters.catch_sigint_signal = False
    if interrupt.requested():
        time_limit_s = 0.0  # stopping: keep the hint (the caller's best so far), search no more
    if deterministic:
        # one worker and a deterministic-time limit: the same answer on every run and machine
        solver.parameters.num_workers = 1
        solver.parameters.max_deterministic_time = max(time_limit_s, 0.01)
        # a wall-clock cap only as a safety net: one near the deterministic limit (it was 10x, at
        # least 1 s) is reached first on a loaded machine, and the plan then depends on the load
        # (serial and Ray what-if runs differed); placement solve stops a slow run at 3x its limit
        solver.parameters.max_time_in_seconds = max(100 * time_limit_s, 30.0)
    else:
        solver.parameters.num_workers = max(1, workers)
        solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    with interrupt.stoppable(solver.stop_search):
        status = solver.solve(m)
    return solver, status


def _read_shares(spec: LayerSpec, v: _Vars, solver: cp_model.CpSolver) -> tuple[list, np.ndarray]:
    """The solution's ``held[G][spg]`` and ``share[G * spg]``; a replica given none of its expert's
    tokens is legal but wastes a slot, so shares are renormalised to sum to 1 per expert."""
    E, G, spg = spec.num_experts, spec.num_gpus, spec.slots_per_gpu
    held = [[e for e in range(E) if solver.boolean_value(v.x[e][g])] for g in range(G)]
    share = np.zeros(G * spg)
    for g in range(G):
        for i, e in enumerate(held[g]):
            share[g * spg + i] = solver.value(v.r[e][g]) / v.Q
    flat = np.asarray(held).ravel()
    sums = np.bincount(flat, weights=share, minlength=E)
    share[sums[flat] <= 0] = 1.0
    sums = np.bincount(flat, weights=share, minlength=E)
    return held, share / sums[flat]


def _read_out(
    spec: LayerSpec,
    v: _Vars,
    t: _Terms,
    solver: cp_model.CpSolver,
    status: Any,
    hint: list[list[int]] | None,
    num_redundant: int,
) -> LayerResult:
    """The layer's result from a feasible solve: layout, shares, float objective, valid bound."""
    name, det_s = solver.status_name(status), float(solver.deterministic_time)
    held, share = _read_shares(spec, v, solver)
    const = spec.constant_us()
    if spec.traffic_weight > 0 and spec.num_gpus > 1:
        const += spec.latency_floor_us()
    cp_bound = solver.best_objective_bound / t.F + const - t.dropped_slack_us
    bound = max(cp_bound, analytic_bound_us(spec, num_redundant, t.hits_floor))
    obj = objective_us(spec, held, share)
    if hint is not None and not v.replicas:
        # the model rounds and may leave pairs out: never return worse than the hint it was given
        hint_share = _even_share([list(h) for h in hint])
        hint_obj = objective_us(spec, hint, hint_share)
        if hint_obj < obj - 1e-9 * max(abs(obj), 1.0):
            held, share, obj = [list(h) for h in hint], hint_share, hint_obj
    proven = status == cp_model.OPTIMAL and t.dropped_slack_us == 0.0
    if proven and exact_applies(spec, np.asarray(held).ravel()) and spec.top_k > 2:
        # CP-SAT proved the surrogate (never above coverage); the exact objective is proven only where
        # the surrogate is tight on this layout (its value then is a matching valid bound)
        surrogate = objective_us(dataclasses.replace(spec, tokens=None), held, share)
        proven = surrogate >= obj - 1e-9 * max(abs(obj), 1.0)
    status_name = f"{name} ({t.pair_count} pairs)" if t.pair_count else name
    return LayerResult(held, share, obj, min(bound, obj), proven, status_name, det_s)


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
    """Build and solve one layer's CP-SAT model in named steps (variables, constraints, objective,
    hints, solve, read-out); return its best layout, objective and proven bound."""
    build_start = time.perf_counter()
    v = _variables(spec)
    hint = _constraints(spec, v, hint)
    t = _compute_terms(spec, v, num_redundant)
    if spec.standard and spec.traffic_weight > 0:
        _comm_terms(spec, v, t, time_limit_s, seed, deterministic)
    if spec.affinity is not None and spec.traffic_weight > 0:
        _hop_terms(spec, v, t)
    v.m.minimize(sum(t.terms))
    # building a large model takes time too: charge it against this layer's limit
    if not deterministic:  # wall-clock build time would make deterministic runs differ
        time_limit_s = max(0.01, time_limit_s - (time.perf_counter() - build_start))
    _hints(spec, v, hint)
    solver, status = _solve(v.m, time_limit_s, seed, workers, deterministic)
    if status == cp_model.INFEASIBLE:
        raise InfeasibleError(
            "no placement satisfies the constraints (migration budget too small for the slot counts?)"
        )
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if hint is None:
            raise InfeasibleError(f"CP-SAT found no placement within {time_limit_s:.3g} s")
        held = [list(h) for h in hint]
        share = _even_share(held)
        bound = analytic_bound_us(spec, num_redundant, t.hits_floor)
        det_s = float(solver.deterministic_time)
        obj = objective_us(spec, held, share)
        return LayerResult(held, share, obj, bound, False, solver.status_name(status), det_s)
    return _read_out(spec, v, t, solver, status, hint, num_redundant)


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
