"""Uniformly routed tokens of DeepEP's tests, counted per GPU pair in one compiled pass per GPU.

:func:`uniform_routing` draws, per sending GPU, one random score per (token, expert), the same numbers as
``rng.random((tokens, experts), dtype=float32)`` once per GPU in GPU order (as it always did), keeps each
token's top ``node_limit`` node groups by their best score, then its top-k experts among them, and counts
what the collectives need. :func:`_route_gpu` (numba) does one GPU, in blocks of rows that stay in cache.

The draw. numpy fills float32 from its bit generator's 32-bit halves, low half first, as ``k / 2**24``
with ``k`` the top 24 bits; one call per GPU or one per block of rows gives the same stream. For numpy's
default bit generator (PCG64) the kernel computes that stream itself (:func:`_fill_pcg`): the scores stay
the integers ``k`` (same order, same ties as the floats), never go through memory as a ``[tokens,
experts]`` matrix, and each costs about 0.9 ns instead of numpy's 2.3 (no indirect call per number; the
three 64-bit multiplies of the 128-bit LCG step bound it, and the node groups' maxima come on the way
for free). The generator's state goes back into ``rng`` at the end, exactly where numpy's draw would
have left it. Any other bit generator (or no numba): the numpy reference does it all.

The selection. A top-k *set* does not depend on how it is found, except when two scores tie at the
boundary of the set; the kernel flags those tokens (a few per million) and they are counted by the numpy
reference (:func:`_select_numpy`, :func:`_count_numpy`), whose ``argpartition`` then decides the tie as it
always did. ``compiled=False`` runs that reference for every token (tests compare the two exactly).
Scores below a pre-filter threshold (:func:`_thresholds`) cannot be among the top when enough are above
it; the rest go into a short sorted list without a branch (:func:`_top_of_keys`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from moe_placement.metrics import dedup_copies, gpu_pair_copies
from moe_placement.simulator.kernels import HAVE_NUMBA, _njit, announce_compile

# PCG64 (numpy's default bit generator): a 128-bit LCG, output XSL-RR of the state after each step.
PCG64_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_MASK64 = (1 << 64) - 1
_MULT_HI = PCG64_MULTIPLIER >> 64  # each half fits an int64: numba takes them as constants
_MULT_LO = PCG64_MULTIPLIER & _MASK64
_MASK128 = (1 << 128) - 1

# numpy's float32 scores are k / SCORE_LEVELS, k a 24-bit integer; the kernels compare the k.
SCORE_LEVELS = 1 << 24

# The pre-filter of the selection keeps this many times the entries it needs, on average: fewer
# insertions against a few more rescans (when fewer than needed pass).
PREFILTER_SURPLUS = 2.0

# Length of the sorted list the selection keeps when the top-k + 1 and node_limit + 1 fit (top-8 of
# DeepSeek-V3 needs 9).
SHORT_LIST = 9

# Routings of at least this many scores split the GPUs over threads (the kernel runs without the GIL,
# each thread from its own place in the stream: the same numbers); a smaller one (64 GPUs: 2**26) is
# over before a thread pays off.
THREAD_MIN_SCORES = 1 << 28
MAX_THREADS = 8

# Scores drawn per block of rows: small enough to stay in L2 between the fill and the selection.
BLOCK_BYTES = 128 * 1024

if HAVE_NUMBA:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic  # type: ignore[misc]
    def _pcg_next_llvm(
        typingctx: Any, hi: Any, lo: Any, mult_hi: Any, mult_lo: Any, plus_hi: Any, plus_lo: Any
    ) -> Any:
        """``state * mult + plus`` (mod 2**128) on uint64 halves, and PCG64's XSL-RR output of the new
        state: ``(new_hi, new_lo, out64)``. numba has no 128-bit integer; LLVM does."""
        u64 = types.uint64
        sig = types.UniTuple(u64, 3)(u64, u64, u64, u64, u64, u64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i64, i128 = ir.IntType(64), ir.IntType(128)

            def joined(high: Any, low: Any) -> Any:
                wide = builder.shl(builder.zext(high, i128), ir.Constant(i128, 64))
                return builder.or_(wide, builder.zext(low, i128))

            state = builder.add(
                builder.mul(joined(args[0], args[1]), joined(args[2], args[3])),
                joined(args[4], args[5]),
            )
            new_lo = builder.trunc(state, i64)
            new_hi = builder.trunc(builder.lshr(state, ir.Constant(i128, 64)), i64)
            mixed = builder.xor(new_hi, new_lo)
            rot = builder.lshr(new_hi, ir.Constant(i64, 58))
            back = builder.and_(builder.sub(ir.Constant(i64, 0), rot), ir.Constant(i64, 63))
            out = builder.or_(builder.lshr(mixed, rot), builder.shl(mixed, back))
            return context.make_tuple(builder, signature.return_type, [new_hi, new_lo, out])

        return sig, codegen

    _pcg_next: Any = _pcg_next_llvm

else:  # pragma: no cover - without numba the PCG64 fill is never used (numpy draws)

    def _pcg_next_python(
        hi: Any, lo: Any, mult_hi: Any, mult_lo: Any, plus_hi: Any, plus_lo: Any
    ) -> Any:
        """Plain-Python stand-in of the intrinsic (same results)."""
        state = ((int(hi) << 64 | int(lo)) * (int(mult_hi) << 64 | int(mult_lo))) + (
            int(plus_hi) << 64 | int(plus_lo)
        )
        state &= _MASK128
        new_hi, new_lo = state >> 64, state & _MASK64
        mixed, rot = new_hi ^ new_lo, new_hi >> 58
        out = ((mixed >> rot) | (mixed << ((64 - rot) & 63))) & _MASK64
        return np.uint64(new_hi), np.uint64(new_lo), np.uint64(out)

    _pcg_next = _pcg_next_python


# The kernels' scratch vectors (int64 each, in one homogeneous tuple), by index.
(
    _GROUP_MAX,  # [block * nodes] best score of each node group, row by row
    _GROUP_KEYS,  # [block * nodes] keys (value << 32 | group) of those at or above the threshold
    _GROUP_COUNT,  # [block] how many
    _KEEP,  # [node_limit] first expert of each kept group
    _BEST,  # [list] best keys, descending
    _CHOSEN,  # [experts] chosen experts
    _KEYS,  # [experts] keys (value << 32 | expert) surviving the pre-filter
    _EXPERTS_TO,  # [gpus] (token, expert) copies per destination GPU
    _COPIES_TO,  # [gpus] token copies per destination GPU
    _NIC_TO,  # [gpus] NIC copies per forwarding GPU
    _NVLINK_TO,  # [gpus] NVLink copies per destination GPU
    _GPU_SEEN,  # [gpus] 0/1
    _NODE_SEEN,  # [nodes] 0/1
    _DSTS,  # [top_k] distinct destination GPUs of a token
    _GPU_OF_EXPERT,  # [experts]
    _NODE_OF_GPU,  # [gpus]
) = range(16)


@_njit(cache=True)
def _fill_pcg(
    flat: np.ndarray,
    n: int,
    state: np.ndarray,
    group_size: int,
    threshold: int,
    maxima: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
) -> None:
    """``flat[:n]`` (int32) <- the next ``n`` float32 scores of numpy's PCG64 as the integers ``k`` of
    ``k / 2**24``. ``state`` (uint64): state hi, lo, increment hi, lo, has a 32-bit half left, that
    half (numpy's ``has_uint32`` / ``uinteger``), advanced in place.

    ``group_size`` > 0 (``flat`` holds rows of ``nodes = maxima.size // counts.size`` groups of
    ``group_size`` scores): on the way, per row ``t`` and node group ``g``, its best score into
    ``maxima[t * nodes + g]``, the keys ``value << 32 | g`` of the groups at or above ``threshold``
    into ``keys[t * nodes:]`` (in order, compacted without a branch) and their count into
    ``counts[t]``. The multiplies of the draw bound the loop, so this costs no time."""
    hi, lo, inc_hi, inc_lo = state[0], state[1], state[2], state[3]
    m_hi, m_lo = np.uint64(_MULT_HI), np.uint64(_MULT_LO)
    low_half, shift, high = np.uint64(0xFFFFFFFF), np.uint64(8), np.uint64(32)
    has_half, half = state[4] == np.uint64(1), state[5]
    groups = maxima.size // counts.size
    per_group = group_size if group_size > 0 else n + 1
    left = per_group
    best = np.int32(-1)
    row, group, kept = 0, 0, 0
    # one flat loop over the scores, its few branches predictable (nested loops over rows and groups
    # ran half as fast): each 64-bit draw gives a score of its low half, then one of its high half
    for i in range(n):
        if has_half:
            score = np.int32(half >> shift)
            has_half = False
        else:
            hi, lo, out = _pcg_next(hi, lo, m_hi, m_lo, inc_hi, inc_lo)
            score = np.int32((out & low_half) >> shift)
            has_half, half = True, out >> high
        flat[i] = score
        best = max(best, score)
        left -= 1
        if left == 0:
            maxima[row * groups + group] = best
            keys[row * groups + kept] = (np.int64(best) << 32) | group
            kept += int(best >= threshold)
            left = per_group
            best = np.int32(-1)
            group += 1
            if group == groups:
                counts[row] = kept
                row, group, kept = row + 1, 0, 0
    state[0], state[1], state[4], state[5] = hi, lo, has_half, half


@_njit(cache=True)
def _top_of_keys(keys: np.ndarray, m: int, best: np.ndarray, cap: int) -> bool:
    """The ``cap`` largest of ``keys[:m]`` (``value << 32 | index``) into ``best[:cap]``, descending;
    returns whether the top ``cap - 1`` are a unique set (enough keys, and the values of the last two
    entries differ). Each key goes into the sorted list without a branch (entry j becomes
    max(entry j, min(entry j - 1, key))): on random scores every branch of an insertion sort
    mispredicts, which cost most of the selection."""
    # a list of SHORT_LIST entries whatever cap (a longer one holds the cap largest too) unrolls
    # into registers: about twice as fast as a list of a length known only at run time
    size = SHORT_LIST if cap <= SHORT_LIST else cap
    for j in range(size):
        best[j] = -1
    if cap <= SHORT_LIST:
        for i in range(m):
            key = keys[i]
            for j in range(SHORT_LIST - 1, 0, -1):
                best[j] = max(best[j], min(best[j - 1], key))
            best[0] = max(best[0], key)
    else:
        for i in range(m):
            key = keys[i]
            for j in range(cap - 1, 0, -1):
                best[j] = max(best[j], min(best[j - 1], key))
            best[0] = max(best[0], key)
    if m < cap - 1:
        return False
    return m == cap - 1 or best[cap - 1] >> 32 != best[cap - 2] >> 32


@_njit(cache=True, nogil=True)
def _route_gpu(
    src: int,
    scores_in: tuple[np.ndarray, np.ndarray, np.ndarray],
    params: tuple[int, ...],
    counts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tied_rows: np.ndarray,
    scratch: tuple[np.ndarray, ...],
) -> tuple[int, int]:
    """Draw, select and count the tokens of GPU ``src``.

    Scores are the integers ``k`` of numpy's float32 ``k / 2**24``, drawn in blocks of ``buf`` from
    the PCG64 ``state`` by :func:`_fill_pcg`: ``scores_in`` = (buf[rows, experts], the same buffer
    flat, state). ``params`` = (gpus_per_node, per_gpu, top_k, node_limit, and the pre-filter
    thresholds of the group maxima and of the experts' scores, see :func:`_thresholds`); the kept
    groups hold more than top-k experts. ``tied_rows`` gives the token count and receives the rows
    whose top set is not unique. ``counts`` = (pairs, nic, nvlink, expert_pairs), ``[gpus, gpus]`` each, as
    :func:`uniform_routing` returns them, added to. ``scratch``: see :func:`_scratch`. Returns
    ((token, node) pairs counted, rows tied).

    Per token: the top ``node_limit + 1`` node groups by their best score (keys of the groups above
    the group threshold, or all when too few pass), then the top ``top_k + 1`` experts of the kept
    groups among those above the expert threshold (or all when too few pass): the cap largest are
    then all among them, and the thresholds keep a few times cap of uniform scores. One function,
    its steps inline: numba compiles a call tree of small kernels several times slower."""
    buf, flat, state = scores_in
    gpn, per_gpu, top_k, node_limit, group_threshold, expert_threshold = params
    tokens, experts = tied_rows.shape
    maxima, group_keys, group_count = (
        scratch[_GROUP_MAX],
        scratch[_GROUP_KEYS],
        scratch[_GROUP_COUNT],
    )
    keep, best, chosen, keys = scratch[_KEEP], scratch[_BEST], scratch[_CHOSEN], scratch[_KEYS]
    gpu_seen, node_seen, dsts = scratch[_GPU_SEEN], scratch[_NODE_SEEN], scratch[_DSTS]
    experts_to, copies_to = scratch[_EXPERTS_TO], scratch[_COPIES_TO]
    nic_to, nvlink_to = scratch[_NIC_TO], scratch[_NVLINK_TO]
    gpu_of_expert, node_of_gpu = scratch[_GPU_OF_EXPERT], scratch[_NODE_OF_GPU]
    G = counts[0].shape[0]
    nodes = G // gpn
    group_size = per_gpu * gpn
    limited = node_limit < nodes
    spans, span = (node_limit, group_size) if limited else (1, experts)
    src_node = src // gpn
    src_local = src % gpn
    index = np.int64(0xFFFFFFFF)
    block = buf.shape[0]
    fused = group_size if limited else 0
    node_pairs = 0
    ntied = 0
    for t0 in range(0, tokens, block):
        rows = min(block, tokens - t0)
        # the block's scores, and each row's node groups on the way
        _fill_pcg(
            flat, rows * experts, state, fused, group_threshold, maxima, group_keys, group_count
        )
        for t in range(rows):
            row = buf[t]
            # the kept node groups: first expert of each into keep
            if limited:
                tk = group_keys[t * nodes : (t + 1) * nodes]
                m = group_count[t]
                if m <= node_limit:  # too few above the threshold (rare): all compete
                    for g in range(nodes):
                        tk[g] = (maxima[t * nodes + g] << 32) | g
                    m = nodes
                unique = _top_of_keys(tk, m, best, node_limit + 1)
                for j in range(node_limit):
                    keep[j] = (best[j] & index) * group_size
            else:
                unique = True
                keep[0] = 0
            # the top-k experts among them
            if unique:
                for floor in (expert_threshold, -1):  # too few above it (rare): all compete
                    m = 0
                    for j in range(spans):
                        for e in range(keep[j], keep[j] + span):
                            v = row[e]
                            keys[m] = (np.int64(v) << 32) | e  # compacted without a branch
                            m += v >= floor
                    if m > top_k:
                        break
                unique = _top_of_keys(keys, m, best, top_k + 1)
                for j in range(top_k):
                    chosen[j] = best[j] & index
            if not unique:  # the numpy reference decides
                for e in range(experts):  # (a whole-row assignment compiles numba's string code)
                    tied_rows[ntied, e] = row[e]
                ntied += 1
                continue
            # count the token: its distinct destination GPUs, nodes, and forwarded copies
            ndst = 0
            for j in range(top_k):
                g = gpu_of_expert[chosen[j]]  # (tables: a 64-bit division costs some 25 cycles)
                experts_to[g] += 1
                if not gpu_seen[g]:
                    gpu_seen[g] = 1
                    dsts[ndst] = g
                    ndst += 1
            for j in range(ndst):
                g = dsts[j]
                gpu_seen[g] = 0
                copies_to[g] += 1
                g_node = node_of_gpu[g]
                forwarder = g_node * gpn + src_local  # src itself inside its own node
                if not node_seen[g_node]:
                    node_seen[g_node] = 1
                    node_pairs += 1
                    if (
                        g_node != src_node
                    ):  # one NIC copy per (token, remote node), to the forwarder
                        nic_to[forwarder] += 1
                if g != forwarder:  # NVLink from src inside its node, else from the forwarder
                    nvlink_to[g] += 1
            for j in range(ndst):
                node_seen[node_of_gpu[dsts[j]]] = 0
    # the per-GPU vectors (in cache, unlike the rows of the matrices NVLink forwarding writes to)
    # into the matrices, and zeroed for the next GPU
    pairs, nic, nvlink, expert_pairs = counts
    for g in range(G):
        expert_pairs[src, g] += experts_to[g]
        pairs[src, g] += copies_to[g]
        nic[src, g] += nic_to[g]
        g_node = node_of_gpu[g]
        sender = src if g_node == src_node else g_node * gpn + src_local
        nvlink[sender, g] += nvlink_to[g]
        experts_to[g] = copies_to[g] = nic_to[g] = nvlink_to[g] = 0
    return node_pairs, ntied


def _scratch(
    num_gpus: int, gpus_per_node: int, experts: int, top_k: int, node_limit: int, block: int
) -> tuple[np.ndarray, ...]:
    """The kernels' scratch vectors (see the index names above), zeroed, with the tables filled."""
    nodes = num_gpus // gpus_per_node
    sizes = {
        _GROUP_MAX: block * nodes,
        _GROUP_KEYS: block * nodes,
        _GROUP_COUNT: block,
        _KEEP: max(1, node_limit),
        _BEST: max(top_k + 1, node_limit + 1, SHORT_LIST),
        _CHOSEN: max(top_k, experts),
        _KEYS: experts,
        _EXPERTS_TO: num_gpus,
        _COPIES_TO: num_gpus,
        _NIC_TO: num_gpus,
        _NVLINK_TO: num_gpus,
        _GPU_SEEN: num_gpus,
        _NODE_SEEN: nodes,
        _DSTS: top_k,
    }
    scratch = [np.zeros(sizes[i], dtype=np.int64) for i in range(len(sizes))]
    scratch.append(np.arange(experts, dtype=np.int64) // (experts // num_gpus))  # _GPU_OF_EXPERT
    scratch.append(np.arange(num_gpus, dtype=np.int64) // gpus_per_node)  # _NODE_OF_GPU
    return tuple(scratch)


def _thresholds(nodes: int, group_size: int, top_k: int, node_limit: int) -> tuple[int, int]:
    """Pre-filter thresholds of the selection (as integers k of k / 2**24) for the group maxima
    and for the experts' scores: about ``PREFILTER_SURPLUS`` times the entries a selection needs
    (node_limit + 1 groups, top_k + 1 experts) lie at or above them when scores are uniform, as they
    are here (the maximum of ``group_size`` uniform scores is below x with probability
    ``x ** group_size``). Any threshold gives the same sets; a bad one only costs time."""
    candidates = node_limit * group_size if node_limit < nodes else nodes * group_size
    group_share = min(1.0, PREFILTER_SURPLUS * (node_limit + 1) / nodes)
    expert_share = min(1.0, PREFILTER_SURPLUS * (top_k + 1) / candidates)
    group_threshold = (1.0 - group_share) ** (1.0 / group_size)
    return int(group_threshold * SCORE_LEVELS), int((1.0 - expert_share) * SCORE_LEVELS)


def _pcg_state(rng: np.random.Generator) -> np.ndarray | None:
    """``rng``'s state as :func:`_fill_pcg` takes it when ``rng`` is numpy's PCG64 and the kernels are
    compiled; None otherwise (the numpy reference draws)."""
    if not HAVE_NUMBA or type(rng.bit_generator) is not np.random.PCG64:
        return None
    st = rng.bit_generator.state
    pcg, inc = st["state"]["state"], st["state"]["inc"]
    return np.array(
        [pcg >> 64, pcg & _MASK64, inc >> 64, inc & _MASK64, st["has_uint32"], st["uinteger"]],
        dtype=np.uint64,
    )


def _pcg_state_at(start: np.ndarray, position: int) -> np.ndarray:
    """The state of :func:`_fill_pcg` ``position`` float32 scores after ``start`` (numpy's own LCG
    jump-ahead, ``PCG64.advance``, over the 64-bit draws, then half a draw when the place falls in one)."""
    if position == 0:
        return start.copy()
    halves = position - int(start[4])  # after the half left over, if any
    generator = np.random.PCG64()
    generator.state = {
        "bit_generator": "PCG64",
        "state": {
            "state": int(start[0]) << 64 | int(start[1]),
            "inc": int(start[2]) << 64 | int(start[3]),
        },
        "has_uint32": 0,
        "uinteger": 0,
    }
    generator.advance(halves // 2)
    has_half, half = 0, 0
    if halves % 2:  # the low half of the next draw is used: its high half is left
        has_half, half = 1, int(generator.random_raw()) >> 32
    pcg = generator.state["state"]["state"]
    return np.array([pcg >> 64, pcg & _MASK64, start[2], start[3], has_half, half], dtype=np.uint64)


def _workers(scores: int) -> int:
    """Threads for a routing of ``scores`` scores: one per usable CPU (at most MAX_THREADS) from
    THREAD_MIN_SCORES on, else one."""
    if scores < THREAD_MIN_SCORES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _store_state(rng: np.random.Generator, state: np.ndarray) -> None:
    """Leave ``rng`` where numpy's own draw of the same scores would have left it."""
    st = dict(rng.bit_generator.state)
    st["state"] = {**st["state"], "state": int(state[0]) << 64 | int(state[1])}
    st["has_uint32"] = int(state[4])
    st["uinteger"] = int(state[5])
    rng.bit_generator.state = st


def _select_numpy(
    scores: np.ndarray, nodes: int, per_gpu: int, top_k: int, node_limit: int | None
) -> np.ndarray:
    """``[tokens, top_k]`` destination GPUs of each token by numpy's argpartition (the reference)."""
    tokens = scores.shape[0]
    if node_limit is not None and node_limit < nodes:
        group = scores.reshape(tokens, nodes, -1).max(axis=2)
        keep = np.argpartition(-group, node_limit - 1, axis=1)[:, :node_limit]
        mask = np.zeros((tokens, nodes), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, scores.shape[1] // nodes, axis=1), scores, -1.0)
    top = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
    return top // per_gpu


def _count_numpy(dst: np.ndarray, s: int, G: int, gpn: int, out: tuple[np.ndarray, ...]) -> float:
    """Add the tokens of GPU ``s`` with destinations ``dst[tokens, top_k]`` to ``out`` = (pairs, nic,
    nvlink, expert_pairs); returns their (token, node) pairs."""
    pairs, nic, nvlink, expert_pairs = out
    tokens = dst.shape[0]
    src = np.full(tokens, s, dtype=np.int64)
    pairs += gpu_pair_copies(src, dst, G)
    copies = dedup_copies(src, dst, G, gpn)
    nic += copies.nic
    nvlink += copies.nvlink
    expert_pairs[s] += np.bincount(dst.ravel(), minlength=G)
    rows = np.repeat(np.arange(tokens, dtype=np.int64), dst.shape[1])
    return float(np.unique(rows * (G // gpn) + (dst // gpn).ravel()).size)


def uniform_routing(
    num_gpus: int,
    gpus_per_node: int,
    *,
    tokens: int,
    top_k: int,
    num_experts: int,
    node_limit: int | None,
    rng: np.random.Generator,
    compiled: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DeepEP-test routing: per token, random scores; top ``node_limit`` node groups by their best score,
    then the top-k experts among them. Experts are split evenly over GPUs.

    Returns ``(pairs[G, G], nic[G, G], nvlink[G, G], node_pairs[G], expert_pairs[G, G])``: direct
    per-GPU-pair copies (diagonal: GPU-local), the DeepEP-deduplicated NIC / NVLink copies of
    :func:`moe_placement.metrics.dedup_copies`, per source GPU its (token, destination node) pairs, and the
    (token, selected expert) copies per GPU pair (no deduplication: DeepEP's low-latency messages).
    ``compiled=False``: the numpy reference for every token (same counts, slower).
    """
    G, gpn = num_gpus, gpus_per_node
    nodes = G // gpn
    per_gpu = num_experts // G
    experts = per_gpu * G
    out = tuple(np.zeros((G, G)) for _ in range(4))
    pairs, nic, nvlink, expert_pairs = out
    node_pairs = np.zeros(G)
    limit = node_limit if node_limit is not None and node_limit < nodes else nodes
    pcg = _pcg_state(rng)
    if not compiled or pcg is None or (limit < nodes and limit * per_gpu * gpn <= top_k):
        # the reference; also for a bit generator other than PCG64, and where the kept groups hold
        # top-k experts or fewer (every token then takes them all, tied with the masked rest unless
        # that is exactly top-k)
        for s in range(G):
            scores = rng.random((tokens, experts), dtype=np.float32)
            dst = _select_numpy(scores, nodes, per_gpu, top_k, node_limit)
            node_pairs[s] = _count_numpy(dst, s, G, gpn, out)
        return pairs, nic, nvlink, node_pairs, expert_pairs
    announce_compile(_route_gpu)
    params = (gpn, per_gpu, top_k, limit, *_thresholds(nodes, per_gpu * gpn, top_k, limit))

    def route(gpus: range, pcg: np.ndarray, out: tuple[np.ndarray, ...]) -> None:
        """GPUs ``gpus`` into ``out``, drawn from ``pcg`` (advanced in place)."""
        buf = np.empty((max(1, BLOCK_BYTES // (4 * experts)), experts), dtype=np.int32)
        scores_in = (buf, buf.reshape(-1), pcg)
        scratch = _scratch(G, gpn, experts, top_k, limit, buf.shape[0])
        tied_rows = np.empty((tokens, experts), dtype=np.int32)  # pages touched only by tied rows
        for s in gpus:
            counted, ntied = _route_gpu(s, scores_in, params, out, tied_rows, scratch)
            node_pairs[s] = counted
            if ntied:  # the reference decides, on the floats numpy drew (k / 2**24, exact)
                scores = tied_rows[:ntied].astype(np.float32) / np.float32(SCORE_LEVELS)
                dst = _select_numpy(scores, nodes, per_gpu, top_k, node_limit)
                node_pairs[s] += _count_numpy(dst, s, G, gpn, out)

    workers = _workers(G * tokens * experts)
    if workers == 1:
        route(range(G), pcg, out)
    else:
        # each thread from its first GPU's place in the stream; its own matrices (NVLink forwarding
        # writes into other GPUs' rows), summed after: integer counts, the same sums in any order
        bounds = [G * w // workers for w in range(workers + 1)]
        states = [_pcg_state_at(pcg, bounds[w] * tokens * experts) for w in range(workers)]
        outs = [out, *(tuple(np.zeros((G, G)) for _ in range(4)) for _ in range(workers - 1))]
        spans = [range(bounds[w], bounds[w + 1]) for w in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(route, spans, states, outs))
        for extra in outs[1:]:
            for total, part in zip(out, extra, strict=True):
                total += part
        pcg = states[-1]  # where the last GPU's draw ended
    _store_state(rng, pcg)
    return pairs, nic, nvlink, node_pairs, expert_pairs
