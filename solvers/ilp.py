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
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from moe_placement import interrupt
from moe_placement.errors import PlacementError
from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan, Provenance
from moe_placement.solvers.base import REGISTRY, register
from moe_placement.solvers.common import (
    greedy_layout,
    group_gpus,
    load_bound,
    lpt,
    make_plan,
    optimal_shares,
    water_fill,
)
from moe_placement.solvers.context import (
    Context,
    affinity_next,
    affinity_prev,
    coherent_bound,
    layer_spec,
    make_context,
)
from moe_placement.solvers.cpsat import LayerResult, LayerSpec, analytic_bound_us, objective_us
from moe_placement.solvers.objective import SEARCH_OBJECTIVE_NAME, gap_of
from moe_placement.solvers.pairsearch import swap_search
from moe_placement.solvers.problem import PlacementProblem, SolverConfig

MONOLITHIC_CELLS = 512  # experts x GPUs up to which one CP-SAT model per layer is used
GAP_DONE = 1e-4  # a layer this close to its bound needs no more search
MIN_MODEL_S = 0.05  # below this much time for a sub-model, the greedy answer is kept
PAIR_SEARCH_SHARE = 0.3  # of a monolithic layer's time: swap search before CP-SAT
PAIR_SEARCH_DETERMINISTIC_STEPS = 400  # deterministic mode bounds the swap search by steps


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


def _solve_with_current(ctx: Context, layer: int, budget: int | None) -> LayerResult:
    p = ctx.problem
    assert p.current is not None
    cur_held = _held_of(p.current, layer)
    counts = p.current.logcnt()[layer]
    if int(counts.sum()) != p.num_experts + p.num_redundant:
        raise PlacementError("--current plan has a different slot count than --redundant asks for")
    spec = layer_spec(
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
    ctx: Context, load: np.ndarray, held: list[list[int]], rng: np.random.Generator, until: float
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
    ctx: Context, node_spec: LayerSpec, node_held: list[list[int]], until: float
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
    ctx: Context, layer: int, counts: np.ndarray, hint: list[list[int]]
) -> list[list[int]]:
    """Experts to nodes (balance + NIC savings), then each node's experts to its GPUs."""
    p = ctx.problem
    gpn, spg, N = p.gpus_per_node, p.slots_per_gpu, p.num_gpus // p.gpus_per_node
    spec = layer_spec(ctx, layer)
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


def _pair_search_applies(ctx: Context, spec: LayerSpec) -> bool:
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
    ctx: Context,
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


@dataclass
class _Layer:
    """One standard-mode layer as the strategies see it: its model spec, combined ``load[E]``, water-
    filled replica ``counts[E]``, migration budget, and whether one CP-SAT model covers it."""

    index: int
    spec: LayerSpec
    load: np.ndarray
    counts: np.ndarray
    move_budget: int | None
    small: bool
    rng: np.random.Generator


@dataclass
class _Placed:
    """A strategy's answer for one layer: ``held[G][spg]``, the method's name, a valid bound (us)."""

    held: list[list[int]]
    method: str
    bound_us: float
    optimal: bool = False


def _greedy(ctx: Context, lay: _Layer) -> list[list[int]]:
    p = ctx.problem
    return greedy_layout(lay.load, lay.counts, p.num_gpus, p.slots_per_gpu, p.gpus_per_node)


def _keep_current(ctx: Context, lay: _Layer) -> _Placed:
    """Out of time with a current plan: keep its layout (zero moves) rather than overrun the limit."""
    assert ctx.problem.current is not None
    held = _held_of(ctx.problem.current, lay.index)
    bound = analytic_bound_us(lay.spec, ctx.problem.num_redundant)
    return _Placed(held, "current (time limit reached)", bound)


def _greedy_late(ctx: Context, lay: _Layer) -> _Placed:
    """Out of time: the greedy warm start as it is."""
    bound = analytic_bound_us(lay.spec, ctx.problem.num_redundant)
    return _Placed(_greedy(ctx, lay), "greedy (time limit reached)", bound)


def _migration(ctx: Context, lay: _Layer) -> _Placed:
    """The layer's model with the current plan as hint and a move budget."""
    res = _solve_with_current(ctx, lay.index, lay.move_budget)
    return _Placed(res.held, "cpsat-migration", res.bound_us, res.optimal)


def _monolithic(ctx: Context, lay: _Layer) -> _Placed:
    """One CP-SAT model for the layer (replica counts free when it is small), from the greedy hint
    improved by swap search where that applies."""
    p = ctx.problem
    layers_left = p.num_layers - lay.index
    hint = _greedy(ctx, lay)
    layer_s = ctx.budget(layers_left)
    if _pair_search_applies(ctx, lay.spec):
        hint = _pair_search(ctx, lay.spec, hint, lay.rng, PAIR_SEARCH_SHARE * layer_s)
        layer_s = ctx.budget(layers_left)
    free = dataclasses.replace(lay.spec, counts=None if lay.small else lay.counts)
    res = ctx.solve(free, hint=hint, time_limit_s=layer_s, num_redundant=p.num_redundant)
    return _Placed(res.held, "cpsat-monolithic", res.bound_us, res.optimal)


def _decomposed_bound(ctx: Context, lay: _Layer) -> float:
    return analytic_bound_us(dataclasses.replace(lay.spec, counts=None), ctx.problem.num_redundant)


def _hierarchical_layer(ctx: Context, lay: _Layer) -> _Placed:
    """Large layers with co-activation over several nodes: experts to nodes, then to GPUs."""
    held = _hierarchical(ctx, lay.index, lay.counts, _greedy(ctx, lay))
    return _Placed(held, "cpsat-hierarchical", _decomposed_bound(ctx, lay))


def _lp_shares(ctx: Context, lay: _Layer) -> _Placed:
    """Large layers with replicas: free replica shares (the LP applied to every layer) already balance
    a good greedy layout almost perfectly."""
    return _Placed(_greedy(ctx, lay), "greedy+lp-shares", _decomposed_bound(ctx, lay))


def _engine_greedy(ctx: Context, lay: _Layer) -> _Placed:
    """Large layers with replicas under an engine's dispatch: the greedy layout (LPT and re-splitting on
    ``load / count`` per replica, what the engine's even split gives), shares from the engine's rule."""
    return _Placed(_greedy(ctx, lay), "greedy+engine-shares", _decomposed_bound(ctx, lay))


def _lns(ctx: Context, lay: _Layer) -> _Placed:
    """Large load-only layers without replicas: LNS on balance, then GPUs grouped into nodes."""
    p = ctx.problem
    until = ctx.now() + ctx.budget(p.num_layers - lay.index)
    held = _lns_balance(ctx, lay.load, _greedy(ctx, lay), lay.rng, until)
    flat_cnt = np.bincount(np.asarray(held).ravel(), minlength=p.num_experts)
    gpu_w = np.array([float((lay.load[h] / flat_cnt[h]).sum()) for h in held])
    held = group_gpus(held, gpu_w, p.gpus_per_node)
    return _Placed(held, "greedy+cpsat-lns", _decomposed_bound(ctx, lay))


def _greedy_decomposed(ctx: Context, lay: _Layer) -> _Placed:
    """A large layer reached after the deadline: the greedy warm start."""
    return _Placed(_greedy(ctx, lay), "greedy (time limit reached)", _decomposed_bound(ctx, lay))


STRATEGIES: dict[str, Callable[[Context, _Layer], _Placed]] = {
    "keep-current": _keep_current,
    "greedy-late": _greedy_late,
    "migration": _migration,
    "monolithic": _monolithic,
    "greedy-deadline": _greedy_decomposed,
    "hierarchical": _hierarchical_layer,
    "lp-shares": _lp_shares,
    "engine-greedy": _engine_greedy,
    "lns": _lns,
}


def _strategy(ctx: Context, lay: _Layer, monolithic_only: bool) -> str:
    """Which entry of :data:`STRATEGIES` places this layer (see the module docstring)."""
    p = ctx.problem
    # SIGINT or the time limit's hard edge: no new model
    stopped = interrupt.requested() is not None
    if stopped or (ctx.budget(p.num_layers - lay.index) < MIN_MODEL_S and not lay.small):
        return "keep-current" if p.current is not None else "greedy-late"
    if p.current is not None:
        return "migration"
    if lay.small or monolithic_only:
        return "monolithic"
    if ctx.now() >= ctx.deadline:
        return "greedy-deadline"
    if lay.spec.coact is not None and p.gpus_per_node < p.num_gpus:
        return "hierarchical"
    if p.num_redundant > 0:
        # an engine's dispatch fixes the shares (an even split of each rank's tokens over the replicas,
        # SGLang's with counts that deal its ranks evenly): the greedy layout balances exactly those
        return "engine-greedy" if p.for_engine else "lp-shares"
    return "lns"


def even_deal_counts(load: np.ndarray, num_redundant: int, num_gpus: int) -> np.ndarray:
    """Replica counts for SGLang's static dispatch: water-filling on load per replica (the hottest
    expert per replica takes the next replicas) with every count a divisor of the GPU count while the
    slots allow. The ranks without a local replica are then dealt evenly over the replicas whatever
    SGLang's seeded draw (:mod:`moe_placement.dispatch`); a count that does not divide the GPU count
    leaves one replica a whole rank's demand above another. The last slots, if no divisor step fits,
    go one at a time to the hottest experts per replica."""
    G = num_gpus
    divisors = [d for d in range(1, G + 1) if G % d == 0]
    step_to = dict(itertools.pairwise(divisors))
    counts = np.ones(load.size, dtype=np.int64)
    left = num_redundant
    while left > 0:
        per_replica = load / counts
        grew = False
        for expert in np.argsort(-per_replica, kind="stable").tolist():
            target = step_to.get(int(counts[expert]))
            if target is not None and target - counts[expert] <= left:
                left -= int(target - counts[expert])
                counts[expert] = target
                grew = True
                break
        if not grew:  # no divisor step fits the slots left: one more replica to the hottest
            open_experts = np.flatnonzero(counts < G)
            expert = int(open_experts[np.argmax(per_replica[open_experts])])
            counts[expert] += 1
            left -= 1
    return counts


def _shares_of(ctx: Context, layer: int, spec: LayerSpec, held: list[list[int]]) -> np.ndarray:
    """Replica shares by LP for one trace; robust (several traces): the even split, since the LP
    balances one trace only; for an engine, the shares its dispatch rule gives this layout."""
    flat = np.asarray(held).ravel()
    if ctx.problem.for_engine:
        return ctx.problem.layer_engine_shares(layer, flat)
    if len(spec.loads) > 1:
        return 1.0 / np.bincount(flat)[flat]
    share, _ = optimal_shares(spec.loads[0], held)
    return share


def _standard(
    ctx: Context, rng: np.random.Generator, monolithic_only: bool
) -> tuple[list, list, float, float, dict]:
    p = ctx.problem
    G, spg, L = p.num_gpus, p.slots_per_gpu, p.num_layers
    rows, shares = [], []
    objective = bound = load_objective = load_bound_total = 0.0
    methods: dict[str, int] = {}
    optimal_layers = 0
    budgets = _move_budgets(p)
    combined = p.combined_load()
    small = p.num_experts * G <= MONOLITHIC_CELLS
    for layer in tqdm(range(L), desc="placing layers", unit="layer", disable=None, leave=False):
        if p.engine == "sglang":
            counts = even_deal_counts(combined[layer], p.num_redundant, G)
        else:
            counts = water_fill(combined[layer], p.num_redundant, G)
        spec = layer_spec(ctx, layer)
        lay = _Layer(layer, spec, combined[layer], counts, budgets[layer], small, rng)
        placed = STRATEGIES[_strategy(ctx, lay, monolithic_only)](ctx, lay)
        share = _shares_of(ctx, layer, spec, placed.held)
        obj = objective_us(spec, placed.held, share)
        rows.append(np.asarray(placed.held, dtype=np.int64).ravel())
        shares.append(share)
        objective += obj
        bound += min(placed.bound_us, obj)
        gpu_load = np.bincount(
            np.arange(G * spg) // spg, weights=spec.loads[0][rows[-1]] * share, minlength=G
        )
        load_objective += float(gpu_load.max())
        load_bound_total += load_bound(spec.loads[0], G, spg, p.num_redundant)
        methods[placed.method] = methods.get(placed.method, 0) + 1
        optimal_layers += int(placed.optimal)
    extra = {
        "methods": methods,
        "optimal_layers": optimal_layers,
        # the balance part alone: sum over layers of the busiest GPU's load and its proven bound
        "load_objective": load_objective,
        "load_bound": load_bound_total,
        "load_gap": gap_of(load_objective, load_bound_total),
    }
    return rows, shares, objective, bound, extra


def _coherent(ctx: Context, rng: np.random.Generator) -> tuple[list, list, float, float, dict]:
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
        spec = layer_spec(
            ctx, layer, coact=None, affinity=affinity, hop_total=tokens, counts=counts
        )
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
        aff = affinity_prev(ctx, layer, rows[-1] if rows else None, shares[-1] if shares else None)
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
            aff = affinity_prev(
                ctx, layer, rows[layer - 1] if layer else None, shares[layer - 1] if layer else None
            )
            if layer + 1 < L:
                aff = aff + affinity_next(ctx, layer, rows[layer + 1])
            hint = rows[layer].reshape(G, spg).tolist()
            res = solve(layer, aff, hint, 1.0)
            rows[layer] = np.asarray(res.held, dtype=np.int64).ravel()
            shares[layer] = res.share
            optimal_layers += int(res.optimal)
    objective = bound = 0.0
    for layer in range(L):
        aff = affinity_prev(
            ctx, layer, rows[layer - 1] if layer else None, shares[layer - 1] if layer else None
        )
        spec = layer_spec(ctx, layer, coact=None, affinity=aff, hop_total=tokens)
        held = rows[layer].reshape(G, spg).tolist()
        objective += objective_us(spec, held, shares[layer])
        bound += coherent_bound(ctx, layer, spec)
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
    ctx = make_context(problem, config)
    if problem.mode == "coherent":
        rows, shares, objective, bound, extra = _coherent(ctx, rng)
        method = "cpsat layer sweeps (coherent, neighbours fixed)"
    else:
        # the baselines and their evaluator times come first, inside the time limit: the search gets
        # what is left, and after it only the solver's own plan needs the evaluator
        scored = _scored_baselines(ctx) if name == "best" else None
        rows, shares, objective, bound, extra = _standard(ctx, rng, monolithic_only=name == "cpsat")
        if scored is not None and _safeguard(ctx, scored, rows, shares, extra):
            objective = _search_objective(ctx, rows, shares)
            bound = min(bound, objective)
        method = "+".join(sorted(extra["methods"]))
    prov = Provenance(
        solver=name,
        objective=objective,
        bound=bound,
        gap=gap_of(objective, bound),
        seconds=time.perf_counter() - start,
        method=method,
        objective_name=SEARCH_OBJECTIVE_NAME,
        extra=extra,
    )
    return make_plan(problem, rows, shares, prov)


def _baseline_plans(ctx: Context) -> list[tuple[str, Plan]]:
    """Every registered baseline's plan that can place this problem (each seeded as run_solver would)."""
    p, out = ctx.problem, []
    for name, entry in sorted(REGISTRY.items()):
        if not entry.baseline:
            continue
        try:
            plan = entry.fn(p, ctx.config, rng=np.random.default_rng(ctx.config.seed))
        except PlacementError:
            continue
        if plan.slots_per_gpu == p.slots_per_gpu:
            out.append((name, plan))
    if p.engine == "sglang" and p.num_redundant > 0 and p.mode == "standard":
        # the layout the share-aware router's solve starts from (water-filled counts, which SGLang
        # may deal unevenly): under SGLang's traffic it can still be the faster layer
        combined = p.combined_load()
        rows = [
            np.asarray(
                greedy_layout(
                    combined[layer],
                    water_fill(combined[layer], p.num_redundant, p.num_gpus),
                    p.num_gpus,
                    p.slots_per_gpu,
                    p.gpus_per_node,
                )
            ).ravel()
            for layer in range(p.num_layers)
        ]
        out.append(("greedy-layout", make_plan(p, rows, None, Provenance(solver="greedy-layout"))))
    return out


@dataclasses.dataclass
class _ScoredBaselines:
    """Every applicable baseline's plan and its evaluator times ``[baselines, layers]`` (us), on the
    trace's chunks or, for a trace too large to score within the time limit, on ``sample``."""

    candidates: list[tuple[str, Plan]]
    layer_us: np.ndarray
    sample: list | None = None


# One plan's evaluator pass costs about this much per (token, layer) row (measured ~1 us on an idle
# 2-core VM, ~6.5 us at a load of 17). The safeguard's comparison may use this share of the time limit;
# past it the plans are compared on an evenly spread sample of the trace's chunks (the same sample for
# every plan, so the comparison stays like for like; the reported objective still uses the whole trace).
SECONDS_PER_PLAN_ROW = 1.0e-6
SAFEGUARD_SHARE = 0.3
MIN_SAMPLE_ROWS = 20_000


def _safeguard_sample(ctx: Context, num_plans: int) -> list | None:
    """Every k-th chunk of a per-token trace too large to score ``num_plans`` plans in
    ``SAFEGUARD_SHARE`` of the time limit; None when the whole trace fits (or it is load-only)."""
    wl = ctx.problem.workload
    if not wl.per_token:
        return None
    rows = int(wl.num_tokens) * wl.num_layers
    allowed = max(
        MIN_SAMPLE_ROWS,
        int(SAFEGUARD_SHARE * ctx.config.time_limit_s / (SECONDS_PER_PLAN_ROW * num_plans)),
    )
    if rows <= allowed:
        return None
    every = -(-rows // allowed)  # ceil
    return [chunk for i, chunk in enumerate(wl.chunks()) if i % every == 0]


def _scored_baselines(ctx: Context) -> _ScoredBaselines | None:
    """The safeguard's candidates, timed by the evaluator in one pass over the trace; None where the
    safeguard does not apply (a migration budget, several traces, no traffic term)."""
    p = ctx.problem
    if p.current is not None or len(p.workloads) > 1 or ctx.config.traffic_weight <= 0:
        return None
    candidates = _baseline_plans(ctx)
    if not candidates:
        return _ScoredBaselines([], np.zeros((0, p.num_layers)))
    sample = _safeguard_sample(ctx, len(candidates) + 1)
    evaluations = evaluate_many(
        [plan for _, plan in candidates], p.cluster, p.workload, engine=p.engine, chunks=sample
    )
    layer_us = np.stack([ev.layer_us() for ev in evaluations])
    return _ScoredBaselines(candidates, layer_us, sample)


def _safeguard(
    ctx: Context, scored: _ScoredBaselines, rows: list, shares: list, extra: dict
) -> bool:
    """Never worse than the baselines, layer by layer, on the evaluator's time (which every plan now
    reports, :mod:`moe_placement.solvers.objective`).

    Standard-mode layers are independent in :func:`moe_placement.metrics.evaluate` (each layer's routing,
    copies and compute depend on that layer's row only), so each layer keeps whichever of the solver's
    row and every registered baseline's row the evaluator times fastest (the solver's on ties). Skipped with a
    migration budget (a baseline's row may move too much) or several traces (the evaluator times one).
    Replaces ``rows`` / ``shares`` in place; returns whether any layer changed."""
    p = ctx.problem
    candidates = scored.candidates
    mine = make_plan(p, rows, shares, Provenance(solver="best", method="safeguard"))
    [evaluation] = evaluate_many(
        [mine], p.cluster, p.workload, engine=p.engine, chunks=scored.sample
    )
    times = np.concatenate([evaluation.layer_us()[None, :], scored.layer_us])
    times[0] *= 1 - 1e-9  # a baseline must be strictly faster to replace the solver's row
    pick = np.argmin(times, axis=0)  # [layers]: 0 is the solver's own row
    methods = extra["methods"]
    for layer in np.flatnonzero(pick > 0).tolist():
        name, other = candidates[int(pick[layer]) - 1]
        rows[layer] = other.phy2log[layer].copy()
        shares[layer] = other.shares()[layer].copy()
        key = f"{name} (evaluator-faster layer)"
        methods[key] = methods.get(key, 0) + 1
    extra["safeguard_layers"] = int((pick > 0).sum())
    if scored.sample is not None:
        extra["safeguard_sample_chunks"] = len(scored.sample)
    return bool((pick > 0).any())


def _search_objective(ctx: Context, rows: list, shares: list) -> float:
    """The search model's objective (us) of standard-mode rows and shares."""
    G, spg = ctx.problem.num_gpus, ctx.problem.slots_per_gpu
    return sum(
        objective_us(layer_spec(ctx, layer), np.asarray(row).reshape(G, spg).tolist(), sh)
        for layer, (row, sh) in enumerate(zip(rows, shares, strict=True))
    )


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
