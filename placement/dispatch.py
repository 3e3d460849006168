"""Replica dispatch: which physical replica of a logical expert a token goes to, per serving engine.

A plan places replicas; the engine that serves it decides which replica each token uses. This module
models that decision for each engine as *dispatch shares* ``D[src, slot]``: the share of the tokens that
source GPU ``src`` sends to the logical expert ``phy2log[slot]`` that go to physical slot ``slot``. For
every (source, expert) the shares over the expert's slots sum to 1. The evaluator
(:mod:`moe_placement.metrics`) and the solvers score a plan under these shares.

Engines (the versions read are named in docs/solvers.md, "Engine dispatch"):

* ``share`` (default): the project's share-aware router, :func:`replica_split`: the nearest replica while
  it has capacity under its planned share, then the replicas with the most capacity left. The plan's
  ``replica_share`` is honoured. **No serving engine implements it today**: an exported plan loses its
  shares and the engine applies its own rule.
* ``sglang``: ``--ep-dispatch-algorithm static`` (``compute_logical_to_rank_dispatch_physical_map``):
  each EP rank sends *all* its tokens of an expert to one replica: the replica on its own GPU if there
  is one (the lowest physical id among them; "own GPU" is ``physical_id // physical_experts_per_rank ==
  rank``), else a replica drawn by a seeded "fair" choice: the ranks without a local replica are dealt
  over *all* the expert's replicas, each replica ``floor`` or ``ceil`` of their number, the extra ones
  drawn by ``random.Random(42)``. :func:`sglang_static_slots` reproduces that deal (same generator, same
  calls, layers and experts in the engine's order) and the model is its table. When the replica count
  does not divide the GPU count the deal is uneven: one replica takes a whole rank's demand more than
  another (``load / G`` with uniform sources), which an expectation over the draw would hide
  (:func:`sglang_expected_shares` gives that expectation, for comparison only).
* ``vllm``: EPLB's ``eplb_map_to_physical_and_record``: replica index = (flat position of the
  (token, k) entry in the rank's batch) modulo the replica count, independent of where the replicas sit.
  The flat position is ``token_index * top_k + column``, so when the count divides ``top_k`` the replica
  is fixed by the expert's column in the token's top-k list, not by chance. Per-token traces are routed
  by that rule (:class:`moe_placement.metrics.ReplicaRouter`, the token's index in its batch drawn);
  load-only inputs cannot show columns and get the even split, ``1/replicas`` from every source.
* ``trtllm``: the wide-EP MoE load balancer's route kernel (``moeComputeRouteKernel``): within each block
  of 1024 (token, k) entries of a rank, the entries of a replicated expert take its replicas round-robin,
  starting at ``block index + EP rank``: an even split, ``1/replicas`` from every source (per-token
  traces are dealt round-robin per rank from its index, in the trace's order).

Floor 0: numpy only, no import of the evaluator (which imports this module).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict

import numba
import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.plan import Plan

SHARE = "share"
ENGINES = (SHARE, "sglang", "vllm", "trtllm")
SERVING_ENGINES = ENGINES[1:]
SGLANG_SEED = 42  # the seed of SGLang's fair choice (compute_logical_to_rank_dispatch_physical_map)
TRTLLM_BLOCK_ENTRIES = 1024  # (token, k) entries per thread block of TensorRT-LLM's route kernel

DESCRIPTIONS = {
    SHARE: "the project's share-aware router (plan shares honoured; no serving engine implements it today)",
    "sglang": "SGLang static dispatch (own-GPU replica, else a fair seeded choice over the replicas)",
    "vllm": "vLLM EPLB dispatch (entry position modulo the replica count: an even split)",
    "trtllm": "TensorRT-LLM wide-EP load balancer (round-robin over the replicas: an even split)",
}


def check_engine(engine: str | None) -> str:
    """The engine's name (``None`` -> the share-aware router); a :class:`PlacementError` if unknown."""
    name = SHARE if engine is None else engine
    if name not in ENGINES:
        raise PlacementError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return name


def plan_engine(plan: Plan) -> str:
    """The engine a plan was solved for (its provenance), the share-aware router when unrecorded."""
    return check_engine(plan.provenance.engine)


def describe(engine: str) -> str:
    """One line for reports: whose dispatch a figure assumes."""
    name = check_engine(engine)
    return f"dispatch: {name} = {DESCRIPTIONS[name]}"


def replica_split(
    gpu_of: np.ndarray, capacity: np.ndarray, demand: np.ndarray, gpus_per_node: int
) -> np.ndarray:
    """Share of each home GPU's tokens sent to each replica, ``[gpus, replicas]`` (rows sum to 1): the
    share-aware router.

    ``gpu_of[replicas]``: the replicas' GPUs; ``capacity[replicas]``: tokens each should take (its planned
    share of the expert's demand); ``demand[gpus]``: the expert's tokens by home GPU. Nearest first (a
    replica on the home GPU, then in the home node) while it has capacity left, then the replicas with the
    most capacity left, water-filling.
    """
    gpus = demand.shape[0]
    replicas = gpu_of.shape[0]
    cap = capacity.astype(np.float64).copy()
    left = demand.astype(np.float64).copy()
    taken = np.zeros((gpus, replicas))
    node_of = gpu_of // gpus_per_node

    def take(h: int, candidates: np.ndarray) -> None:
        for r in candidates[np.argsort(-cap[candidates], kind="stable")]:
            if left[h] <= 0:
                return
            amount = min(left[h], max(cap[r], 0.0))
            if amount > 0:
                taken[h, r] += amount
                cap[r] -= amount
                left[h] -= amount

    for h in range(gpus):  # pass 1: a replica on the home GPU itself
        take(h, np.flatnonzero(gpu_of == h))
    for h in range(gpus):  # pass 2: replicas in the home node
        if left[h] > 0:
            take(h, np.flatnonzero(node_of == h // gpus_per_node))
    everyone = np.arange(replicas)
    for h in range(gpus):  # pass 3: the replicas with the most capacity left
        if left[h] > 0:
            take(h, everyone)
        if left[h] > 1e-9:  # rounding: the rest to the replica with the most capacity left
            taken[h, int(np.argmax(cap))] += left[h]
            left[h] = 0.0
    total = taken.sum(axis=1, keepdims=True)
    fallback = capacity / max(float(capacity.sum()), 1e-12)
    return np.where(total > 0, taken / np.where(total > 0, total, 1.0), fallback[None, :])


def _local_slot(plan: Plan, layer: int) -> np.ndarray:
    """``[gpus, experts]``: the lowest slot of each expert on each GPU, -1 where the GPU holds none."""
    G, E = plan.num_gpus, plan.num_experts
    big = plan.num_slots
    first = np.full((G, E), big, dtype=np.int64)
    slots = np.arange(plan.num_slots)
    np.minimum.at(first, (plan.slot_gpu(), plan.phy2log[layer]), slots)
    return np.where(first < big, first, -1)


def sglang_expected_shares(plan: Plan, layer: int) -> np.ndarray:
    """``D[src, slot]`` of SGLang's static rule in expectation over its fair draw: 1 for the source's own
    replica, ``1/replicas`` for each replica otherwise (for comparison: the engine fixes one draw)."""
    experts = plan.phy2log[layer].astype(np.int64)
    count = np.bincount(experts, minlength=plan.num_experts)
    even = np.broadcast_to(1.0 / count[experts], (plan.num_gpus, experts.size))
    local = _local_slot(plan, layer)[:, experts]  # [gpus, slots]: the source's own replica
    own = local == np.arange(experts.size)[None, :]
    return np.where(local >= 0, own.astype(np.float64), even)


def dispatch_shares(
    plan: Plan,
    layer: int,
    engine: str,
    demand: np.ndarray | None = None,
    sglang_table: np.ndarray | None = None,
) -> np.ndarray:
    """``D[src, slot]`` for one layer: the share of source GPU ``src``'s tokens of expert
    ``phy2log[layer, slot]`` that go to ``slot`` (for each source and expert, 1 over the expert's slots).

    ``demand[gpus, experts]`` (the layer's assignments by home GPU) is needed by the share-aware router
    only; without it that router's shares are the plan's own, the same from every source.
    ``sglang_table``: the plan's :func:`sglang_static_slots`, drawn over the whole plan (computed here
    when not given: pass it when asking for several layers)."""
    name = check_engine(engine)
    experts = plan.phy2log[layer].astype(np.int64)
    G = plan.num_gpus
    count = np.bincount(experts, minlength=plan.num_experts)
    if name in ("vllm", "trtllm"):
        return np.broadcast_to(1.0 / count[experts], (G, experts.size)).copy()
    if name == "sglang":
        table = sglang_static_slots(plan) if sglang_table is None else sglang_table
        D = np.zeros((G, experts.size))
        D[np.arange(G)[:, None], table[layer]] = 1.0  # each source: all of an expert to one slot
        return D
    shares = plan.shares()[layer]
    out = np.broadcast_to(shares, (G, experts.size)).copy()
    if demand is None:
        return out
    slot_gpu = plan.slot_gpu()
    for expert in map(int, np.flatnonzero(count > 1)):
        slots = np.flatnonzero(experts == expert)
        d = demand[:, expert]
        out[:, slots] = replica_split(
            slot_gpu[slots], shares[slots] * d.sum(), d, plan.gpus_per_node
        )
    return out


def engine_table(plan: Plan, engine: str) -> np.ndarray | None:
    """What an engine's rule draws once per plan: SGLang's static table, ``None`` for the others."""
    return sglang_static_slots(plan) if check_engine(engine) == "sglang" else None


def slot_shares(
    plan: Plan,
    layer: int,
    engine: str,
    demand: np.ndarray | None = None,
    sglang_table: np.ndarray | None = None,
    sglang_expected: bool = False,
) -> np.ndarray:
    """``[slots]``: the share of its expert's tokens each slot takes under ``engine`` with the sources'
    ``demand[gpus, experts]`` (uniform over sources when ``None``, as for load-only inputs).
    ``sglang_expected``: SGLang's expectation over its draw instead of the draw (a cheap estimate for
    one layer of a plan still being built: the draw runs over the whole plan)."""
    if sglang_expected and check_engine(engine) == "sglang":
        D = sglang_expected_shares(plan, layer)
    else:
        D = dispatch_shares(plan, layer, engine, demand, sglang_table)
    experts = plan.phy2log[layer].astype(np.int64)
    if demand is None:
        weight = np.ones((plan.num_gpus, experts.size))
    else:
        weight = np.asarray(demand, dtype=np.float64)[:, experts]
    total = weight.sum(axis=0)
    taken = (weight * D).sum(axis=0)
    even = D.mean(axis=0)  # an expert nobody sends to: the sources' mean split
    return np.where(total > 0, taken / np.where(total > 0, total, 1.0), even)


def engine_plan_shares(plan: Plan, engine: str, demand: np.ndarray | None = None) -> np.ndarray:
    """``[layers, slots]`` the shares a plan's slots take under ``engine`` (``demand[layers, gpus,
    experts]`` or ``None`` for uniform sources): what a plan solved for that engine stores."""
    table = engine_table(plan, engine)
    return np.stack(
        [
            slot_shares(plan, layer, engine, None if demand is None else demand[layer], table)
            for layer in range(plan.num_layers)
        ]
    )


# ---------------------------------------------------------------- emulation of the engines' own rules


def _fair_deal(candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """SGLang's fair choice: each candidate ``k // n`` times, ``k % n`` distinct ones once more, in a
    shuffled order (the same calls on the same generator as the engine, so a seed gives its draw)."""
    quotient, remainder = divmod(k, len(candidates))
    dealt = candidates * quotient + rng.sample(candidates, k=remainder)
    rng.shuffle(dealt)
    return dealt


_TABLES: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_TABLES_KEPT = 8  # a CLI run or a solve evaluates a handful of plans, each several times


def sglang_static_slots(plan: Plan, seed: int = SGLANG_SEED) -> np.ndarray:
    """:func:`draw_sglang_static_slots`, memoised on the plan's layout (a draw costs ~2 s at DeepSeek
    scale: the engine's generator is stepped once per shuffled rank)."""
    digest = hashlib.sha1(np.ascontiguousarray(plan.phy2log, dtype=np.int64).tobytes())
    digest.update(f"{plan.num_gpus},{plan.slots_per_gpu}".encode())
    key = (digest.hexdigest(), seed)
    if key in _TABLES:
        _TABLES.move_to_end(key)
        return _TABLES[key]
    table = draw_sglang_static_slots(plan, seed)
    table.setflags(write=False)
    _TABLES[key] = table
    while len(_TABLES) > _TABLES_KEPT:
        _TABLES.popitem(last=False)
    return table


KERNEL_MIN_CALLS = 100_000  # generator calls from which the compiled deal pays for its compilation


def draw_sglang_static_slots(
    plan: Plan, seed: int = SGLANG_SEED, kernel: bool | None = None
) -> np.ndarray:
    """``[layers, gpus, experts]``: the slot each EP rank sends an expert's tokens to under SGLang's
    static dispatch: its own replica (the lowest slot on its GPU), else the seeded fair deal over all
    the expert's replicas (layers, experts and ranks in the engine's order).

    The deal replays ``random.Random(seed)`` exactly (``sample`` then ``shuffle`` per expert, as the
    engine calls them) on the generator's own 32-bit output stream, in a compiled kernel
    (:func:`_deal_kernel`); :func:`_fair_deal` is the same in plain Python (tests compare the two). The
    engine draws over every row of its map, dense layers included, so its own table can deal the remote
    ranks differently; how uneven each deal is (its counts) is the same. ``kernel``: force (or refuse)
    the compiled path; by default it runs from :data:`KERNEL_MIN_CALLS` generator calls (a cold compile
    costs ~20 CPU-s, the Python deal ~3 s at DeepSeek-V3 scale)."""
    L, G, E = plan.num_layers, plan.num_gpus, plan.num_experts
    log2phy = plan.log2phy()
    count = plan.logcnt()
    if kernel is False or (kernel is None and L * E * G < KERNEL_MIN_CALLS):
        return _python_deal(plan, seed)
    out = np.full((L, G, E), -1, dtype=np.int64)
    cand_flat, cand_start, cand_len = [], [], []
    remote_len = []
    remote_where: list[np.ndarray] = []
    at = 0
    for layer in range(L):
        local = _local_slot(plan, layer)  # [gpus, experts]
        out[layer] = local
        for expert in range(E):
            candidates = log2phy[layer, expert, : count[layer, expert]]
            cand_flat.append(candidates)
            cand_start.append(at)
            cand_len.append(candidates.size)
            at += candidates.size
            remote = np.flatnonzero(local[:, expert] < 0)
            remote_len.append(remote.size)
            remote_where.append(remote)
    lens = np.asarray(remote_len, dtype=np.int64)
    calls = int(lens.sum() + np.asarray(cand_len).sum())
    rng = random.Random(seed)
    key_pos = rng.getstate()[1]
    dealt = np.empty(int(lens.sum()), dtype=np.int64)
    words = 2 * calls + 4096
    while True:
        bits = np.random.MT19937()
        state = bits.state
        state["state"]["key"] = np.asarray(key_pos[:624], dtype=np.uint32)
        state["state"]["pos"] = int(key_pos[624])
        bits.state = state
        stream = bits.random_raw(words).astype(np.uint32)
        if _deal_kernel(
            stream,
            np.concatenate(cand_flat).astype(np.int64),
            np.asarray(cand_start, dtype=np.int64),
            np.asarray(cand_len, dtype=np.int64),
            lens,
            _SAMPLE_SETSIZE,
            dealt,
        ):
            break
        words *= 2  # the rejection sampling used more words than drawn: draw more
    offset = 0
    for op, remote in enumerate(remote_where):
        layer, expert = divmod(op, E)
        out[layer, remote, expert] = dealt[offset : offset + remote.size]
        offset += remote.size
    return out


def _python_deal(plan: Plan, seed: int) -> np.ndarray:
    """:func:`draw_sglang_static_slots` with the engine's own generator calls in plain Python."""
    rng = random.Random(seed)
    L, G, E = plan.num_layers, plan.num_gpus, plan.num_experts
    out = np.full((L, G, E), -1, dtype=np.int64)
    log2phy = plan.log2phy()
    count = plan.logcnt()
    for layer in range(L):
        local = _local_slot(plan, layer)
        for expert in range(E):
            candidates = log2phy[layer, expert, : count[layer, expert]].tolist()
            row = local[:, expert].copy()
            remote = np.flatnonzero(row < 0)
            row[remote] = _fair_deal(candidates, remote.size, rng)
            out[layer, :, expert] = row
    return out


def _sample_setsize(k: int) -> int:
    """``random.Random.sample``'s switch between its pool and set methods, computed as CPython does."""
    setsize = 21
    if k > 5:
        setsize += 4 ** math.ceil(math.log(k * 3, 4))
    return setsize


_SAMPLE_SETSIZE = np.array([_sample_setsize(k) for k in range(4097)], dtype=np.int64)


@numba.njit(cache=True)
def _randbelow(stream: np.ndarray, at: np.ndarray, n: int) -> np.int64:
    """CPython's ``_randbelow_with_getrandbits(n)`` on the generator's 32-bit outputs (``at[0]`` the next
    one; past the end, -1)."""
    k = np.int64(0)
    m = np.int64(n)
    while m > 0:
        k += 1
        m >>= 1
    while True:
        if at[0] >= stream.size:
            return np.int64(-1)
        r = np.int64(stream[at[0]]) >> (np.int64(32) - k)
        at[0] += 1
        if r < n:
            return r


@numba.njit(cache=True)
def _deal_kernel(
    stream: np.ndarray,
    cand_flat: np.ndarray,
    cand_start: np.ndarray,
    cand_len: np.ndarray,
    remote_len: np.ndarray,
    setsize_of: np.ndarray,
    dealt: np.ndarray,
) -> bool:
    """SGLang's ``_fair_choices`` for every (layer, expert) in order: ``quotient`` copies of the
    candidates, ``sample(candidates, remainder)``, ``shuffle``; written to ``dealt`` expert after expert.
    False when the stream ran out (the caller draws more)."""
    at = np.zeros(1, dtype=np.int64)
    out_at = 0
    for op in range(cand_len.size):
        n = cand_len[op]
        k = remote_len[op]
        cand = cand_flat[cand_start[op] : cand_start[op] + n]
        quotient = k // n
        remainder = k % n
        x = np.empty(k, dtype=np.int64)
        for q in range(quotient):
            x[q * n : (q + 1) * n] = cand
        base = quotient * n
        if remainder > 0:
            if n <= setsize_of[remainder]:
                pool = cand.copy()
                for i in range(remainder):
                    j = _randbelow(stream, at, n - i)
                    if j < 0:
                        return False
                    x[base + i] = pool[j]
                    pool[j] = pool[n - i - 1]
            else:
                taken = np.zeros(n, dtype=np.bool_)
                for i in range(remainder):
                    j = _randbelow(stream, at, n)
                    if j < 0:
                        return False
                    while taken[j]:
                        j = _randbelow(stream, at, n)
                        if j < 0:
                            return False
                    taken[j] = True
                    x[base + i] = cand[j]
        for i in range(k - 1, 0, -1):
            j = _randbelow(stream, at, i + 1)
            if j < 0:
                return False
            tmp = x[i]
            x[i] = x[j]
            x[j] = tmp
        dealt[out_at : out_at + k] = x
        out_at += k
    return True


def emulated_shares(
    plan: Plan,
    layer: int,
    engine: str,
    demand: np.ndarray,
    sglang_table: np.ndarray | None = None,
) -> np.ndarray:
    """``D[src, slot]`` that an engine's own discrete rule realises for whole (token, k) entries.

    ``sglang``: the static table (the model already is the engine's deal). ``vllm`` / ``trtllm``: each
    source's ``round(demand)`` entries of an expert dealt over the replicas in slot order: ``vllm`` from
    replica 0 (positions modulo the count), ``trtllm`` from replica ``rank mod count`` (the EP-rank offset
    of its round-robin); the remainder entries fall on the first replicas dealt. ``share``: the router's
    own split (:func:`dispatch_shares` with the demand)."""
    name = check_engine(engine)
    if name in (SHARE, "sglang"):
        return dispatch_shares(plan, layer, name, demand, sglang_table)
    experts = plan.phy2log[layer].astype(np.int64)
    G = plan.num_gpus
    D = np.ones((G, experts.size))  # an expert with one replica: all to it
    log2phy = plan.log2phy()[layer]
    count = np.bincount(experts, minlength=plan.num_experts)
    entries = np.rint(np.asarray(demand, dtype=np.float64)).astype(np.int64)  # [gpus, experts]
    sources = np.arange(G)
    for expert in map(int, np.flatnonzero(count > 1)):
        r = int(count[expert])
        n = entries[:, expert]
        start = sources % r if name == "trtllm" else np.zeros(G, dtype=np.int64)
        # replica j's entries: n // r, plus one if j is among the first n % r dealt from ``start``
        offset = (np.arange(r)[None, :] - start[:, None]) % r
        dealt = (n // r)[:, None] + (offset < (n % r)[:, None])
        share = np.where(n[:, None] > 0, dealt / np.maximum(n, 1)[:, None], 1.0 / r)
        D[:, log2phy[expert, :r]] = share
    return D


def gpu_load(plan: Plan, layer: int, D: np.ndarray, demand: np.ndarray) -> np.ndarray:
    """``[gpus]`` (token, expert) assignments each GPU computes when sources send ``demand[gpus,
    experts]`` by the dispatch shares ``D[src, slot]``."""
    experts = plan.phy2log[layer].astype(np.int64)
    slot_load = (np.asarray(demand, dtype=np.float64)[:, experts] * D).sum(axis=0)
    return np.bincount(plan.slot_gpu(), weights=slot_load, minlength=plan.num_gpus)
