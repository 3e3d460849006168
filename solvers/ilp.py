"""The project's solvers built on the CP-SAT layer model (:mod:`moe_placement.solvers.cpsat`).

``cpsat``: one monolithic model per layer (greedy warm start, time limit, best solution and bound on
timeout). ``best``: the same model where it scales, and decompositions where it does not:

* small layers (``experts x GPUs <= MONOLITHIC_CELLS``): the monolithic model, replica counts free;
* large layers with co-activation (standard EP on a per-token trace, several nodes): hierarchical,
  experts to nodes (balance + inter-node savings), then each node's experts to its GPUs (balance +
  NVLink savings), then replica shares by LP;
* large load-only layers: greedy LPT with pair re-splitting, then large-neighbourhood search: the busiest
  GPU and a few others re-solved exactly by CP-SAT while time remains, then shares by LP;
* context-coherent EP: layer by layer with the previous layer fixed (forward sweep), then again with
  both neighbours fixed (backward sweep) while time remains;
* migration (``--current``): each layer's model with the current plan as hint and a move budget.

Standard-mode layers are independent, so the sum of per-layer bounds is a bound of the whole plan; in
coherent mode the per-layer models see fixed neighbours, so the reported bound is the placement-free
relaxation (balance bound, and per expert at most its ``spg`` strongest predecessors staying).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from moe_placement.errors import PlacementError
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.base import PlacementProblem, SolverConfig, register
from moe_placement.solvers.columns import cheap_column_bound
from moe_placement.solvers.common import (
    TimeModel,
    check_memory,
    gap_of,
    greedy_layout,
    group_gpus,
    load_bound,
    lpt,
    make_plan,
    optimal_shares,
    water_fill,
)
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
    objective_us,
    solve_layer,
)
from moe_placement.solvers.pairsearch import partition_pair_bound, swap_search

MONOLITHIC_CELLS = 512  # experts x GPUs up to which one CP-SAT model per layer is used
GAP_DONE = 1e-4  # a layer this close to its bound needs no more search
MIN_MODEL_S = 0.05  # below this much time for a sub-model, the greedy answer is kept
PAIR_SEARCH_SHARE = 0.3  # of a monolithic layer's time: swap search before CP-SAT
PAIR_SEARCH_DETERMINISTIC_STEPS = 400  # deterministic mode bounds the swap search by steps
OBJECTIVE_NAME = "predicted MoE time (us): busiest-GPU roofline compute + modelled link copies"


@dataclass
class _Context:
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
        so that every budget, and hence the plan, is the same on every run."""
        return self.virtual_s if self.deterministic else time.perf_counter()

    def budget(self, layers_left: int, share: float = 1.0) -> float:
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


def _context(problem: PlacementProblem, config: SolverConfig) -> _Context:
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
    return _Context(
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


def _spec(ctx: _Context, layer: int, **changes: object) -> LayerSpec:
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


def _current_matrix(plan: Plan, layer: int, num_experts: int) -> np.ndarray:
    cur = np.zeros((num_experts, plan.num_gpus), dtype=bool)
    cur[plan.phy2log[layer], plan.slot_gpu()] = True
    return cur


def _held_of(plan: Plan, layer: int) -> list[list[int]]:
    return plan.phy2log[layer].reshape(plan.num_gpus, plan.slots_per_gpu).tolist()


def _move_budgets(problem: PlacementProblem) -> list[int | None]:
    """``--max-moves`` is a total over the plan: split evenly over layers, remainder to the first."""
    L = problem.num_layers
    if problem.max_moves is None:
        return [None] * L
    if problem.max_moves < 0:
        raise PlacementError("--max-moves must be >= 0")
    base, extra = divmod(problem.max_moves, L)
    return [base + (1 if layer < extra else 0) for layer in range(L)]


def _solve_with_current(ctx: _Context, layer: int, budget: int | None) -> LayerResult:
    p = ctx.problem
    assert p.current is not None
    cur_held = _held_of(p.current, layer)
    counts = p.current.logcnt()[layer]
    if int(counts.sum()) != p.num_experts + p.num_redundant:
        raise PlacementError("--current plan has a different slot count than --redundant asks for")
    spec = _spec(
        ctx,
        layer,
        counts=counts,
        current=_current_matrix(p.current, layer, p.num_experts),
        max_moves=budget,
    )
    return ctx.solve(
        spec,
        hint=cur_held,
        time_limit_s=ctx.budget(p.num_layers - layer),
        num_redundant=p.num_redundant,
    )


def _lns_balance(
    ctx: _Context, load: np.ndarray, held: list[list[int]], rng: np.random.Generator, until: float
) -> list[list[int]]:
    """Large-neighbourhood search on balance: re-solve the busiest GPU with a few others exactly."""
    p = ctx.problem
    G, spg = p.num_gpus, p.slots_per_gpu
    held = [list(h) for h in held]
    flat_cnt = np.bincount(np.asarray(held).ravel(), minlength=load.size)
    weight = load / flat_cnt
    lb = load_bound(load, G, spg, p.num_redundant)
    size = min(G, 4)
    for _ in range(200):
        if ctx.now() >= until:
            break
        gpu_load = np.array([weight[h].sum() for h in held])
        peak = float(gpu_load.max())
        if peak <= lb * (1 + GAP_DONE):
            break
        busiest = int(np.argmax(gpu_load))
        light = np.argsort(gpu_load, kind="stable")
        pool = [g for g in light[: 2 * size].tolist() if g != busiest]
        group = [busiest, *rng.choice(pool, size=min(size - 1, len(pool)), replace=False).tolist()]
        items = [e for g in group for e in held[g]]
        sub_ids = sorted(set(items))
        index = {e: i for i, e in enumerate(sub_ids)}
        sub_load = np.array([weight[e] * items.count(e) for e in sub_ids])
        counts = np.array([items.count(e) for e in sub_ids])
        sub_time = dataclasses.replace(ctx.time)
        spec = LayerSpec(
            loads=(sub_load,),
            trace_weights=(1.0,),
            robust="weighted",
            num_gpus=len(group),
            gpus_per_node=len(group),
            slots_per_gpu=spg,
            time=sub_time,
            counts=counts,
        )
        hint = [[index[e] for e in held[g]] for g in group]
        res = ctx.solve(
            spec,
            hint=hint,
            time_limit_s=min(0.5, max(0.02, until - ctx.now())),
            seed=int(rng.integers(1 << 30)),
            workers=1,
            num_redundant=int(counts.sum() - counts.size),
        )
        new = [[sub_ids[i] for i in row] for row in res.held]
        new_peak = max(weight[row].sum() for row in new)
        if new_peak < float(gpu_load[group].max()) - 1e-9:
            for g, row in zip(group, new, strict=True):
                held[g] = row
        elif res.optimal and busiest == int(np.argmax(gpu_load)):
            # this neighbourhood is exhausted for the busiest GPU: widen it once, then stop
            if size >= min(G, 8):
                break
            size = min(G, size + 2)
    return held


def _node_lns(
    ctx: _Context, node_spec: LayerSpec, node_held: list[list[int]], until: float
) -> tuple[list[list[int]], np.ndarray]:
    """Large-neighbourhood search over nodes: the busiest node (by the model's objective) and one other
    node at a time, their experts re-split exactly by CP-SAT (balance, pair savings, replica shares);
    a move is kept when the whole layer's node-level objective falls. Returns nodes' experts and the
    share of each expert's load per slot, in ``node_held`` order."""
    N, per = node_spec.num_gpus, node_spec.slots_per_gpu
    held = [list(h) for h in node_held]
    flat = np.asarray(held).ravel()
    share = 1.0 / np.bincount(flat)[flat]
    best = objective_us(node_spec, held, share)
    full = node_spec.loads
    partner = 0
    tries_without_gain = 0
    while ctx.now() < until and N > 1 and tries_without_gain < N - 1:
        slot_load = full[0][np.asarray(held).ravel()] * share
        node_load = slot_load.reshape(N, per).sum(axis=1)
        u = int(np.argmax(node_load))
        partner = (partner + 1) % N
        v = partner if partner != u else (partner + 1) % N
        if v == u:
            break
        pair_slots = list(range(u * per, (u + 1) * per)) + list(range(v * per, (v + 1) * per))
        ids = sorted({int(flat[s]) for s in pair_slots})
        index = {e: i for i, e in enumerate(ids)}
        portion = np.zeros(len(ids))  # each expert's share of its load held by these two nodes
        counts = np.zeros(len(ids), dtype=np.int64)
        for s in pair_slots:
            portion[index[int(flat[s])]] += share[s]
            counts[index[int(flat[s])]] += 1
        sub_loads = tuple(ld[ids] * portion for ld in full)
        sub_coact = None if node_spec.coact is None else node_spec.coact[np.ix_(ids, ids)]
        sub_demand = node_spec.demand_by_node()[np.ix_(ids, [u, v])]
        sub_remote = None
        if node_spec.remote_coact is not None:
            sub_remote = node_spec.remote_coact[np.ix_([u, v], ids, ids)]
        sub = dataclasses.replace(
            node_spec,
            loads=sub_loads,
            num_gpus=2,
            coact=sub_coact,
            counts=counts,
            node_demand=sub_demand,
            tokens=None,
            remote_coact=sub_remote,
        )
        hint = [[index[e] for e in held[u]], [index[e] for e in held[v]]]
        res = ctx.solve(
            sub,
            hint=hint,
            time_limit_s=min(0.5, max(0.02, until - ctx.now())),
            num_redundant=int(counts.sum() - counts.size),
        )
        new_held = [list(h) for h in held]
        new_share = share.copy()
        for side, node in enumerate((u, v)):
            new_held[node] = [ids[i] for i in res.held[side]]
            for k, i in enumerate(res.held[side]):
                new_share[node * per + k] = res.share[side * per + k] * portion[i]
        new_flat = np.asarray(new_held).ravel()
        value = objective_us(node_spec, new_held, new_share)
        if value < best - 1e-9 * max(abs(best), 1.0):
            held, share, flat, best = new_held, new_share, new_flat, value
            tries_without_gain = 0
        else:
            tries_without_gain += 1
    return held, share


def _hierarchical(
    ctx: _Context, layer: int, counts: np.ndarray, hint: list[list[int]]
) -> list[list[int]]:
    """Experts to nodes (balance + NIC savings), then each node's experts to its GPUs."""
    p = ctx.problem
    gpn, spg, N = p.gpus_per_node, p.slots_per_gpu, p.num_gpus // p.gpus_per_node
    spec = _spec(ctx, layer)
    node_time = dataclasses.replace(
        ctx.time, us_per_assignment=ctx.time.us_per_assignment / gpn, us_per_nvlink_copy=0.0
    )
    node_counts = np.minimum(counts, N)
    deficit = int(counts.sum() - node_counts.sum())
    # replicas beyond one per node go to the hottest experts still below N copies
    while deficit > 0:
        per = np.where(node_counts < N, ctx.loads[0, layer] / node_counts, -np.inf)
        node_counts[int(np.argmax(per))] += 1
        deficit -= 1
    node_hint = [
        sorted({e for g in range(n * gpn, (n + 1) * gpn) for e in hint[g]}) for n in range(N)
    ]
    if any(len(h) != gpn * spg for h in node_hint) or not np.array_equal(
        np.bincount([e for h in node_hint for e in h], minlength=p.num_experts), node_counts
    ):
        items = np.repeat(np.arange(p.num_experts), node_counts)
        node_hint = lpt(items, ctx.loads[0, layer][items] / node_counts[items], N, gpn * spg)
    node_spec = dataclasses.replace(
        spec,
        num_gpus=N,
        gpus_per_node=1,
        slots_per_gpu=gpn * spg,
        time=node_time,
        counts=node_counts,
        link_gpus_per_node=gpn,
    )
    until = ctx.now() + ctx.budget(p.num_layers - layer, 0.5)
    node_held, node_share = _node_lns(ctx, node_spec, node_hint, until)
    held: list[list[int]] = []
    for n in range(N):
        members = node_held[n]
        shares = node_share[n * gpn * spg : (n + 1) * gpn * spg]
        sub_load = tuple(
            np.array([ctx.loads[t, layer, e] * s for e, s in zip(members, shares, strict=True)])
            for t in range(ctx.loads.shape[0])
        )
        sub_coact = None if spec.coact is None else spec.coact[np.ix_(members, members)]
        gpu_spec = dataclasses.replace(
            spec,
            loads=sub_load,
            num_gpus=gpn,
            gpus_per_node=gpn,
            coact=sub_coact,
            counts=np.ones(len(members), dtype=np.int64),
            node_demand=None,
            tokens=None,
            remote_coact=None,
        )
        sub_hint = greedy_layout(sub_load[0], np.ones(len(members), dtype=np.int64), gpn, spg)
        gpu_budget = ctx.budget(p.num_layers - layer, 0.5 / N)
        if gpu_budget < MIN_MODEL_S:  # building a model would cost more than the time left
            held += [[members[i] for i in row] for row in sub_hint]
            continue
        res = ctx.solve(
            gpu_spec,
            hint=sub_hint,
            time_limit_s=gpu_budget,
            num_redundant=0,
        )
        held += [[members[i] for i in row] for row in res.held]
    return held


def _pair_search_applies(ctx: _Context, spec: LayerSpec) -> bool:
    """The swap search prices one NVLink node, one replica per expert, one trace, no migration."""
    p = ctx.problem
    return (
        spec.coact is not None
        and spec.traffic_weight > 0
        and p.gpus_per_node >= p.num_gpus
        and p.num_redundant == 0
        and len(spec.loads) == 1
        and p.current is None
        and p.slots_per_gpu > 1
        and p.num_experts > 16  # smaller layers: CP-SAT alone proves optimality in well under 1 s
    )


def _pair_search(
    ctx: _Context,
    spec: LayerSpec,
    hint: list[list[int]],
    rng: np.random.Generator,
    seconds: float,
) -> list[list[int]]:
    """Swap local search on the layer objective (see :mod:`moe_placement.solvers.pairsearch`) before CP-SAT, so the
    model starts from a layout that already keeps co-activated experts together."""
    assert spec.coact is not None
    steps = PAIR_SEARCH_DETERMINISTIC_STEPS if ctx.deterministic else 1_000_000
    # deterministic mode: the virtual clock does not move here, so the step count bounds the search
    return swap_search(
        spec.loads[0],
        spec.coact,
        hint,
        compute_us=spec.balance_weight * spec.time.us_per_assignment,
        hit_us=spec.nvlink_hit_us(),
        pair_factor=spec.pair_factor,
        hit_alpha=spec.hit_alpha,
        until=ctx.now() + seconds,
        rng=rng,
        clock=ctx.now,
        max_steps=steps,
    )


def _standard(
    ctx: _Context, rng: np.random.Generator, monolithic_only: bool
) -> tuple[list, list, float, float, dict]:
    p = ctx.problem
    G, spg, L = p.num_gpus, p.slots_per_gpu, p.num_layers
    rows, shares = [], []
    objective = bound = load_objective = load_bound_total = 0.0
    methods: dict[str, int] = {}
    optimal_layers = 0
    budgets = _move_budgets(p)
    combined = p.combined_load()
    bar = tqdm(range(L), desc="placing layers", unit="layer", disable=None, leave=False)
    for layer in bar:
        spec = _spec(ctx, layer)
        counts = water_fill(combined[layer], p.num_redundant, G)
        small = p.num_experts * G <= MONOLITHIC_CELLS
        late = ctx.budget(L - layer) < MIN_MODEL_S and not small
        if late and p.current is not None:
            # out of time: keep the current layout (zero moves) rather than overrun the limit
            held, method = _held_of(p.current, layer), "current (time limit reached)"
            layer_bound = analytic_bound_us(spec, p.num_redundant)
        elif late:
            held = greedy_layout(combined[layer], counts, G, spg, p.gpus_per_node)
            method = "greedy (time limit reached)"
            layer_bound = analytic_bound_us(spec, p.num_redundant)
        elif p.current is not None:
            res = _solve_with_current(ctx, layer, budgets[layer])
            held, method = res.held, "cpsat-migration"
            layer_bound = res.bound_us
            optimal_layers += int(res.optimal)
        elif small or monolithic_only:
            hint = greedy_layout(combined[layer], counts, G, spg, p.gpus_per_node)
            layer_s = ctx.budget(L - layer)
            if _pair_search_applies(ctx, spec):
                hint = _pair_search(ctx, spec, hint, rng, PAIR_SEARCH_SHARE * layer_s)
                layer_s = ctx.budget(L - layer)
            free = dataclasses.replace(spec, counts=None if small else counts)
            res = ctx.solve(
                free,
                hint=hint,
                time_limit_s=layer_s,
                num_redundant=p.num_redundant,
            )
            held, method, layer_bound = res.held, "cpsat-monolithic", res.bound_us
            optimal_layers += int(res.optimal)
        else:
            hint = greedy_layout(combined[layer], counts, G, spg, p.gpus_per_node)
            if ctx.now() >= ctx.deadline:
                held, method = hint, "greedy (time limit reached)"
            elif spec.coact is not None and p.gpus_per_node < G:
                held, method = _hierarchical(ctx, layer, counts, hint), "cpsat-hierarchical"
            elif p.num_redundant > 0:
                # free replica shares (the LP below) already balance a good layout almost perfectly
                held, method = hint, "greedy+lp-shares"
            else:
                until = ctx.now() + ctx.budget(L - layer)
                held = _lns_balance(ctx, combined[layer], hint, rng, until)
                flat_cnt = np.bincount(np.asarray(held).ravel(), minlength=p.num_experts)
                gpu_w = np.array([float((combined[layer][h] / flat_cnt[h]).sum()) for h in held])
                held, method = group_gpus(held, gpu_w, p.gpus_per_node), "greedy+cpsat-lns"
            layer_bound = analytic_bound_us(dataclasses.replace(spec, counts=None), p.num_redundant)
        share, _ = optimal_shares(spec.loads[0], held)
        if (
            len(spec.loads) > 1
        ):  # robust: keep the CP-SAT shares' even default, LP only balances one trace
            share = 1.0 / np.bincount(np.asarray(held).ravel())[np.asarray(held).ravel()]
        obj = objective_us(spec, held, share)
        rows.append(np.asarray(held, dtype=np.int64).ravel())
        shares.append(share)
        objective += obj
        bound += min(layer_bound, obj)
        gpu_load = np.bincount(
            np.arange(G * spg) // spg,
            weights=spec.loads[0][np.asarray(held).ravel()] * share,
            minlength=G,
        )
        load_objective += float(gpu_load.max())
        load_bound_total += load_bound(spec.loads[0], G, spg, p.num_redundant)
        methods[method] = methods.get(method, 0) + 1
    extra = {
        "methods": methods,
        "optimal_layers": optimal_layers,
        # the balance part alone: sum over layers of the busiest GPU's load and its proven bound
        "load_objective": load_objective,
        "load_bound": load_bound_total,
        "load_gap": gap_of(load_objective, load_bound_total),
    }
    return rows, shares, objective, bound, extra


def _affinity_prev(
    ctx: _Context, layer: int, prev_row: np.ndarray | None, prev_share: np.ndarray | None
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


def _affinity_next(ctx: _Context, layer: int, next_row: np.ndarray) -> np.ndarray:
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


def _coherent_bound(ctx: _Context, layer: int, spec: LayerSpec) -> float:
    p = ctx.problem
    wl = p.workload
    assert wl.top1_transitions is not None
    # the balance part alone (no standard-EP link term: coherent mode prices hops instead)
    base = dataclasses.replace(spec, affinity=None, traffic_weight=0.0)
    out = analytic_bound_us(base, p.num_redundant) + spec.hop_us() * spec.hop_total
    if layer == 0:
        aff = _affinity_prev(ctx, 0, None, None)
        stay = aff.max(axis=1) if p.num_redundant == 0 else aff.sum(axis=1)
    else:
        trans = wl.top1_transitions[layer - 1]
        if p.num_redundant == 0:
            stay = -np.sort(-trans, axis=0)[: p.slots_per_gpu].sum(axis=0)
        else:
            stay = trans.sum(axis=0)
    return out - spec.hop_us() * float(stay.sum())


def _coherent(ctx: _Context, rng: np.random.Generator) -> tuple[list, list, float, float, dict]:
    p = ctx.problem
    p.workload.require_per_token("context-coherent placement")
    G, spg, L = p.num_gpus, p.slots_per_gpu, p.num_layers
    combined = p.combined_load()
    budgets = _move_budgets(p)
    rows: list[np.ndarray] = []
    shares: list[np.ndarray] = []
    optimal_layers = 0
    tokens = float(p.workload.num_tokens)
    counts_all = [water_fill(combined[layer], p.num_redundant, G) for layer in range(L)]

    def solve(
        layer: int, affinity: np.ndarray, hint: list[list[int]], share_of_time: float
    ) -> LayerResult:
        counts = counts_all[layer]
        spec = _spec(ctx, layer, coact=None, affinity=affinity, hop_total=tokens, counts=counts)
        if p.current is not None:
            spec = dataclasses.replace(
                spec,
                counts=p.current.logcnt()[layer],
                current=_current_matrix(p.current, layer, p.num_experts),
                max_moves=budgets[layer],
            )
            hint = _held_of(p.current, layer)
        return ctx.solve(
            spec,
            hint=hint,
            time_limit_s=ctx.budget(L - layer, share_of_time),
            num_redundant=p.num_redundant,
        )

    for layer in tqdm(range(L), desc="coherent forward", unit="layer", disable=None, leave=False):
        aff = _affinity_prev(ctx, layer, rows[-1] if rows else None, shares[-1] if shares else None)
        hint = greedy_layout(combined[layer], counts_all[layer], G, spg, p.gpus_per_node)
        res = solve(layer, aff, hint, 0.6)
        rows.append(np.asarray(res.held, dtype=np.int64).ravel())
        shares.append(res.share)
    sweeps = 1
    if L > 1 and ctx.now() < ctx.deadline:
        sweeps = 2
        for layer in range(L - 1, -1, -1):
            if ctx.now() >= ctx.deadline:
                break
            aff = _affinity_prev(
                ctx, layer, rows[layer - 1] if layer else None, shares[layer - 1] if layer else None
            )
            if layer + 1 < L:
                aff = aff + _affinity_next(ctx, layer, rows[layer + 1])
            hint = rows[layer].reshape(G, spg).tolist()
            res = solve(layer, aff, hint, 1.0)
            rows[layer] = np.asarray(res.held, dtype=np.int64).ravel()
            shares[layer] = res.share
            optimal_layers += int(res.optimal)
    objective = bound = 0.0
    for layer in range(L):
        aff = _affinity_prev(
            ctx, layer, rows[layer - 1] if layer else None, shares[layer - 1] if layer else None
        )
        spec = _spec(ctx, layer, coact=None, affinity=aff, hop_total=tokens)
        held = rows[layer].reshape(G, spg).tolist()
        objective += objective_us(spec, held, shares[layer])
        bound += _coherent_bound(ctx, layer, spec)
    extra = {
        "methods": {"cpsat-layer-sweeps": L},
        "sweeps": sweeps,
        "optimal_layers_last_sweep": optimal_layers,
    }
    return rows, shares, objective, min(bound, objective), extra


def _run(
    problem: PlacementProblem, config: SolverConfig, rng: np.random.Generator, name: str
) -> Plan:
    start = time.perf_counter()
    ctx = _context(problem, config)
    if problem.mode == "coherent":
        rows, shares, objective, bound, extra = _coherent(ctx, rng)
        method = "cpsat layer sweeps (coherent, neighbours fixed)"
    else:
        rows, shares, objective, bound, extra = _standard(ctx, rng, monolithic_only=name == "cpsat")
        if name == "best":
            rows, shares, objective, bound = _safeguard(ctx, rows, shares, objective, bound, extra)
        method = "+".join(sorted(extra["methods"]))
    seconds = time.perf_counter() - start
    prov = Provenance(
        solver=name,
        objective=objective,
        bound=bound,
        gap=gap_of(objective, bound),
        seconds=seconds,
        method=method,
        objective_name=OBJECTIVE_NAME,
        extra=extra,
    )
    return make_plan(problem, rows, shares, prov)


SAFEGUARD_CANDIDATES = ("greedy", "eplb", "eplb-global", "contiguous")


def _safeguard(
    ctx: _Context,
    rows: list,
    shares: list,
    objective: float,
    bound: float,
    extra: dict,
) -> tuple[list, list, float, float]:
    """Never worse than the baselines, layer by layer, by the project's one metrics module.

    Standard-mode layers are independent in :func:`moe_placement.metrics.evaluate` (each layer's routing,
    copies and compute depend on that layer's row only), so each layer keeps whichever of the solver's
    row and the baselines' rows (greedy, EPLB hierarchical and global, contiguous) the evaluator times
    fastest. Skipped with a migration budget (a baseline's row may move too much) or several traces
    (the evaluator times one)."""
    from moe_placement.metrics import evaluate_many
    from moe_placement.solvers.base import REGISTRY

    p = ctx.problem
    if p.current is not None or len(p.workloads) > 1 or ctx.config.traffic_weight <= 0:
        return rows, shares, objective, bound
    G, spg, L = p.num_gpus, p.slots_per_gpu, p.num_layers

    def plan_of(r: list, sh: list) -> Plan:
        prov = Provenance(solver="best", method="safeguard")
        return make_plan(p, r, sh, prov)

    mine = plan_of(rows, shares)
    candidates: list[tuple[str, Plan]] = []
    for name in SAFEGUARD_CANDIDATES:
        if name not in REGISTRY:
            continue
        try:
            other = REGISTRY[name].fn(p, ctx.config, rng=np.random.default_rng(ctx.config.seed))
        except PlacementError:
            continue
        if other.slots_per_gpu == spg:
            candidates.append((name, other))
    # every candidate in one pass over the trace (a per-token trace may be large)
    evaluations = evaluate_many([mine] + [c for _, c in candidates], p.cluster, p.workload)
    times = evaluations[0].layer_us()
    chosen = ["best"] * L
    for (name, other), ev in zip(candidates, evaluations[1:], strict=True):
        other_us = ev.layer_us()
        other_share = other.shares()
        for layer in np.flatnonzero(other_us < times * (1 - 1e-9)).tolist():
            times[layer] = other_us[layer]
            rows[layer] = other.phy2log[layer].copy()
            shares[layer] = other_share[layer].copy()
            chosen[layer] = name
    kept = [c for c in chosen if c != "best"]
    if not kept:
        return rows, shares, objective, bound
    methods = extra["methods"]
    for name in set(kept):
        methods[f"{name} (evaluator-faster layer)"] = kept.count(name)
    objective = 0.0
    for layer in range(L):
        spec = _spec(ctx, layer)
        objective += objective_us(
            spec, np.asarray(rows[layer]).reshape(G, spg).tolist(), shares[layer]
        )
    extra["safeguard_layers"] = len(kept)
    return rows, shares, objective, min(bound, objective)


def score_plan(problem: PlacementProblem, config: SolverConfig, plan: Plan) -> tuple[float, float]:
    """The model objective (us) of any plan and the placement-free lower bound, for comparisons."""
    ctx = _context(problem, dataclasses.replace(config, time_limit_s=max(config.time_limit_s, 1.0)))
    G, spg = problem.num_gpus, problem.slots_per_gpu
    shares = plan.shares()
    objective = bound = 0.0
    for layer in range(problem.num_layers):
        held = plan.phy2log[layer].reshape(G, spg).tolist()
        if problem.mode == "coherent":
            problem.workload.require_per_token("context-coherent placement")
            aff = _affinity_prev(
                ctx,
                layer,
                plan.phy2log[layer - 1] if layer else None,
                shares[layer - 1] if layer else None,
            )
            spec = _spec(
                ctx, layer, coact=None, affinity=aff, hop_total=float(problem.workload.num_tokens)
            )
            bound += _coherent_bound(ctx, layer, spec)
        else:
            spec = _spec(ctx, layer)
            bound += analytic_bound_us(spec, problem.num_redundant)
        objective += objective_us(spec, held, shares[layer])
    return objective, min(bound, objective)


@register("cpsat", "one CP-SAT model per layer (monolithic), greedy warm start, time limit")
def cpsat_solver(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    return _run(problem, config, rng, "cpsat")


@register("best", "CP-SAT where it scales, decomposed (hierarchical, LNS, layer sweeps) where not")
def best_solver(
    problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
) -> Plan:
    return _run(problem, config, rng, "best")
