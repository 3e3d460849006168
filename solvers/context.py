"""What every CP-SAT based solver and the model objective share for one problem: the search context.

:class:`Context` holds the problem's normalised loads, the linear prices (:class:`~moe_placement.solvers.
common.TimeModel`), the time budget (wall clock, or CP-SAT's deterministic time), per-layer token tables for
exact hits and the per-layer hit surrogate. :func:`layer_spec` turns one layer into the CP-SAT model's
:class:`~moe_placement.solvers.cpsat.LayerSpec`; :func:`affinity_prev` / :func:`affinity_next` and
:func:`coherent_bound` price context-coherent EP. This module sits below the registry and the solvers
(:mod:`moe_placement.solvers.ilp`), so the model objective (:mod:`moe_placement.solvers.objective`) can use it
without importing any solver.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from moe_placement import interrupt
from moe_placement.errors import PlacementError
from moe_placement.solvers.columns import cheap_column_bound
from moe_placement.solvers.common import TimeModel, check_memory, greedy_layout, water_fill
from moe_placement.solvers.coverage import (
    TokenLayer,
    all_valid_coefs,
    bound_coefs,
    fitted_coefs,
    hypergeometric_m,
    m_distribution,
    token_layers,
    valid_coefs,
)
from moe_placement.solvers.coverage import remote_coact as coverage_remote_coact
from moe_placement.solvers.cpsat import (
    COLUMN_BOUND_MAX_EXPERTS,
    LayerResult,
    LayerSpec,
    analytic_bound_us,
    solve_layer,
)
from moe_placement.solvers.pairsearch import partition_pair_bound
from moe_placement.solvers.problem import PlacementProblem, SolverConfig


@dataclass
class Context:
    """One problem's search state: normalised ``loads[traces, layers, experts]``, prices, the deadline and
    (deterministic mode) the virtual clock, token tables and per-layer hit coefficients."""

    problem: PlacementProblem
    config: SolverConfig
    time: TimeModel
    loads: np.ndarray  # [traces, layers, experts], each normalised to the primary trace's tokens
    trace_weights: tuple[float, ...]
    deadline: float
    deterministic: bool
    node_demand: np.ndarray  # [layers, experts, nodes] primary trace's assignments by home node

    virtual_s: float = 0.0  # deterministic mode: CP-SAT deterministic time spent so far
    # per-token traces small enough to hold: each layer's tokens, for exact hits (solvers.coverage)
    tokens: list[TokenLayer] | None = None
    coefs: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)
    remote: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    def hit_coefs(self, layer: int) -> tuple[float, float]:
        """The layer's ``(alpha, beta)`` hit surrogate: one value per layer (every spec of a layer
        must agree, or bounds and objectives would mix surrogates). Fitted on the ``m`` distribution
        of the layer's balance-greedy layout: valid (never above coverage) when the objective counts
        hits exactly (one replica per expert), least squares when it stays the surrogate (replicas)."""
        if layer in self.coefs:
            return self.coefs[layer]
        p = self.problem
        wl = p.workload
        G, spg, gpn = p.num_gpus, p.slots_per_gpu, p.gpus_per_node
        k = wl.shape.top_k
        # the level whose hits matter most: nodes (NICs) when there are several, else GPUs
        size, groups = (gpn * spg, G // gpn) if gpn < G else (spg, G)
        top = min(k, size)
        if self.tokens is not None:
            counts = water_fill(self.loads[0, layer], p.num_redundant, G)
            held = greedy_layout(self.loads[0, layer], counts, G, spg, gpn)
            where = np.empty(p.num_experts, dtype=np.int64)
            for g in reversed(range(G)):
                where[held[g]] = g  # with replicas: the lowest GPU holding the expert
            where = where // (size // spg)
            dist = m_distribution(self.tokens[layer], where, groups, top)
        else:
            dist = hypergeometric_m(p.num_experts, k, size)
        dist = np.pad(dist, (0, max(0, k + 1 - dist.size)))  # m up to k: one set of coefficients
        if p.num_redundant > 0:
            # least squares leaves 1 +- 1e-16 where the surrogate is exact (top-2); the integer model
            # ceils / floors scaled coefficients, so such noise would move savings by a unit (and,
            # measured, the bundled regress case's inter-node bytes by +28%)
            alpha, beta = fitted_coefs(dist)
            out = (round(alpha, 9), round(beta, 9))
        elif wl.coact is not None and size < p.num_experts:
            # CP-SAT's bound is what the valid surrogate is for: pick the vertex with the strongest
            # average-hits bound (on OLMoE-shaped layers j = 2..3, about 1.5x Bonferroni's)
            coact = wl.coact[layer]
            pb = partition_pair_bound(coact, groups, size)
            load = self.loads[0, layer]
            out = bound_coefs(float(load.sum()), pb, k)
            if groups == G and spg > 1 and p.num_experts <= COLUMN_BOUND_MAX_EXPERTS:
                # a hot expert with few partners sets the busiest port: the column bound may beat
                # the average, and it is strongest for a different vertex (often Bonferroni's)
                def strength(ab: tuple[float, float]) -> float:
                    avg = (ab[0] * float(load.sum()) - ab[1] * pb) / G
                    col = cheap_column_bound(ab[0] * load, coact, ab[1], spg)
                    return max(avg, float(col.max()))

                out = max(all_valid_coefs(k), key=strength)
        else:
            out = valid_coefs(dist)
        self.coefs[layer] = out
        return out

    def remote_coact(self, layer: int) -> np.ndarray | None:
        """``[nodes, E, E]`` co-activation over tokens homed outside each node (several nodes only)."""
        p = self.problem
        N = p.num_gpus // p.gpus_per_node
        if self.tokens is None or N <= 1 or p.num_redundant > 0:
            # with replicas the router, not the home, decides which tokens cross: keep rho_n x coact
            # (measured: the per-home counts made `best` worse on the bundled regress case)
            return None
        if layer not in self.remote:
            if len(self.remote) >= 4:  # [N, E, E] per layer: keep only a few
                self.remote.clear()
            self.remote[layer] = coverage_remote_coact(
                self.tokens[layer], p.num_experts, p.gpus_per_node, N
            )
        return self.remote[layer]

    def now(self) -> float:
        """Wall time, or in deterministic mode a clock that only CP-SAT's deterministic time moves,
        so that every budget, and hence the plan, is the same on every run. After a stop request
        (SIGINT, :mod:`moe_placement.interrupt`) it is infinitely late: every search loop, which runs
        while ``now() < until``, ends with the best result it holds."""
        if interrupt.requested():
            return math.inf
        return self.virtual_s if self.deterministic else time.perf_counter()

    def budget(self, layers_left: int, share: float = 1.0) -> float:
        if interrupt.requested():
            return 0.01
        return max(0.01, (self.deadline - self.now()) / max(layers_left, 1) * share)

    def solve(
        self,
        spec: LayerSpec,
        *,
        hint: list[list[int]] | None,
        time_limit_s: float,
        num_redundant: int,
        seed: int | None = None,
        workers: int | None = None,
    ) -> LayerResult:
        """:func:`solve_layer` with this context's determinism, seed and workers (unless given),
        charging the virtual clock."""
        res = solve_layer(
            spec,
            hint=hint,
            time_limit_s=time_limit_s,
            seed=self.config.seed if seed is None else seed,
            workers=self.config.workers if workers is None else workers,
            num_redundant=num_redundant,
            deterministic=self.deterministic,
        )
        self.virtual_s += res.deterministic_s
        return res


def make_context(problem: PlacementProblem, config: SolverConfig) -> Context:
    check_memory(problem, config)
    if problem.mode not in ("standard", "coherent"):
        raise PlacementError(f"unknown mode {problem.mode!r}; known: standard, coherent")
    primary_total = problem.workload.load.sum(axis=1, keepdims=True).mean()
    loads = np.stack(
        [
            w.load / max(w.load.sum(axis=1, keepdims=True).mean(), 1e-12) * primary_total
            for w in problem.workloads
        ]
    )
    weights = problem.weights or tuple(1.0 for _ in problem.workloads)
    norm = tuple(float(w) / float(sum(weights)) for w in weights)
    # keep a little of the limit for shares, validation and the caller's bookkeeping
    deterministic = bool(config.extra.get("deterministic", False))
    deadline = (0.0 if deterministic else time.perf_counter()) + 0.85 * config.time_limit_s
    G, gpn = problem.num_gpus, problem.gpus_per_node
    demand = problem.workload.demand(G)  # [layers, G, E]
    node_demand = demand.reshape(demand.shape[0], G // gpn, gpn, -1).sum(axis=2).transpose(0, 2, 1)
    tokens = None
    wl = problem.workload
    if problem.mode == "standard" and wl.coact is not None and config.traffic_weight > 0:
        tokens = token_layers(wl, G)
    return Context(
        problem,
        config,
        TimeModel.of_problem(problem),
        loads,
        norm,
        deadline,
        deterministic,
        node_demand,
        tokens=tokens,
    )


def layer_spec(ctx: Context, layer: int, **changes: object) -> LayerSpec:
    p = ctx.problem
    coact = None
    if p.mode == "standard" and p.workload.coact is not None and ctx.config.traffic_weight > 0:
        coact = p.workload.coact[layer]
    alpha, beta = ctx.hit_coefs(layer) if coact is not None else (1.0, None)
    # set by _context under the same conditions as coact: exact hits
    tokens = ctx.tokens[layer] if ctx.tokens is not None else None
    base = LayerSpec(
        loads=tuple(ctx.loads[t, layer] for t in range(ctx.loads.shape[0])),
        trace_weights=ctx.trace_weights,
        robust=ctx.config.robust,
        num_gpus=p.num_gpus,
        gpus_per_node=p.gpus_per_node,
        slots_per_gpu=p.slots_per_gpu,
        time=ctx.time,
        balance_weight=ctx.config.balance_weight,
        traffic_weight=ctx.config.traffic_weight,
        top_k=p.workload.shape.top_k,
        coact=coact,
        node_limit=ctx.config.node_limit,
        node_demand=ctx.node_demand[layer],
        nearest_first=p.workload.per_token,
        hit_alpha=alpha,
        hit_beta=beta,
        tokens=tokens,
        remote_coact=ctx.remote_coact(layer) if tokens is not None else None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def affinity_prev(
    ctx: Context, layer: int, prev_row: np.ndarray | None, prev_share: np.ndarray | None
) -> np.ndarray:
    """``[E, G]`` tokens that reach layer ``layer``'s expert e while sitting on GPU g."""
    p = ctx.problem
    wl = p.workload
    G, spg, E = p.num_gpus, p.slots_per_gpu, p.num_experts
    assert wl.top1_transitions is not None
    if layer == 0 or prev_row is None or prev_share is None:
        demand = wl.demand(G)[0]  # [G, E] assignments by home GPU
        load = np.maximum(wl.load[0], 1e-12)
        top1 = wl.top1_transitions[0].sum(axis=1) if wl.top1_transitions.shape[0] else wl.load[0]
        return (demand / load[None, :] * top1[None, :]).T
    trans = wl.top1_transitions[layer - 1]  # [E_prev, E]
    on = np.zeros((E, G))
    np.add.at(on, (prev_row, np.arange(prev_row.size) // spg), prev_share)
    return trans.T @ on


def affinity_next(ctx: Context, layer: int, next_row: np.ndarray) -> np.ndarray:
    """``[E, G]`` tokens leaving layer ``layer``'s expert e to an expert of the next layer on GPU g."""
    p = ctx.problem
    wl = p.workload
    G, spg, E = p.num_gpus, p.slots_per_gpu, p.num_experts
    assert wl.top1_transitions is not None
    trans = wl.top1_transitions[layer]  # [E, E_next]
    on = np.zeros((E, G))
    cnt = np.bincount(next_row, minlength=E)
    np.add.at(on, (next_row, np.arange(next_row.size) // spg), 1.0 / cnt[next_row])
    return trans @ on


def coherent_bound(ctx: Context, layer: int, spec: LayerSpec) -> float:
    p = ctx.problem
    wl = p.workload
    assert wl.top1_transitions is not None
    # the balance part alone (no standard-EP link term: coherent mode prices hops instead)
    base = dataclasses.replace(spec, affinity=None, traffic_weight=0.0)
    out = analytic_bound_us(base, p.num_redundant) + spec.hop_us() * spec.hop_total
    if layer == 0:
        aff = affinity_prev(ctx, 0, None, None)
        stay = aff.max(axis=1) if p.num_redundant == 0 else aff.sum(axis=1)
    else:
        trans = wl.top1_transitions[layer - 1]
        if p.num_redundant == 0:
            stay = -np.sort(-trans, axis=0)[: p.slots_per_gpu].sum(axis=0)
        else:
            stay = trans.sum(axis=0)
    return out - spec.hop_us() * float(stay.sum())
