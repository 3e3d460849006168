"""Uniformly routed tokens of DeepEP's tests, counted per GPU pair in one compiled pass.

:func:`uniform_routing` draws, per sending GPU, one random score per (token, expert) exactly as before
(``rng.random((tokens, experts), dtype=float32)``, one call per GPU, in GPU order), keeps each token's top
``node_limit`` node groups by their best score, then its top-k experts among them, and counts what the
collectives need. The selection and counting run in :func:`_count_tokens` (numba), one token at a time,
instead of numpy's ``argpartition`` / ``unique`` over the whole score matrix (most of a 64-GPU run).

Exactly the same counts as the numpy formulation (:func:`_count_numpy`, kept as the reference): a top-k
*set* does not depend on how it is found, except when two scores tie at the boundary of the set; the
kernel flags those tokens (a few per million) and they are counted by the numpy reference, whose
``argpartition`` then decides the tie as it always did.
"""

from __future__ import annotations

import numpy as np

from moe_placement.metrics import dedup_copies, gpu_pair_copies
from moe_placement.simulator.kernels import _njit, announce_compile


@_njit(cache=True)
def _top_set(values: np.ndarray, count: int, chosen: np.ndarray) -> bool:
    """The indices of the ``count`` largest ``values`` into ``chosen[:count]`` (any order); returns
    False when the set is not unique (a tie at its boundary)."""
    n = values.shape[0]
    # insertion into a short descending list of count + 1 (value, index) entries
    best_v = np.full(count + 1, -np.inf)
    best_i = np.full(count + 1, -1, dtype=np.int64)
    filled = 0
    for i in range(n):
        v = values[i]
        if filled == count + 1 and v <= best_v[count]:
            continue  # not among the count + 1 largest (an equal value ties only what is there)
        pos = filled if filled < count + 1 else count
        while pos > 0 and best_v[pos - 1] < v:
            if pos < count + 1:
                best_v[pos] = best_v[pos - 1]
                best_i[pos] = best_i[pos - 1]
            pos -= 1
        best_v[pos] = v
        best_i[pos] = i
        if filled < count + 1:
            filled += 1
    for j in range(count):
        chosen[j] = best_i[j]
    # unique unless the count-th and (count+1)-th largest are equal (or there are too few values)
    if filled < count:
        return False
    return not (filled == count + 1 and best_v[count] == best_v[count - 1])


@_njit(cache=True)
def _sort_small(values: np.ndarray) -> None:
    """Sort a short int64 array in place (insertion sort: a handful of node indices)."""
    for i in range(1, values.shape[0]):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v


@_njit(cache=True)
def _count_tokens(
    scores: np.ndarray,
    src: int,
    gpus_per_node: int,
    per_gpu: int,
    top_k: int,
    node_limit: int,
    pairs: np.ndarray,
    nic: np.ndarray,
    nvlink: np.ndarray,
    expert_pairs: np.ndarray,
    tied: np.ndarray,
) -> tuple[int, int]:
    """Count the tokens of GPU ``src`` (``scores[tokens, experts]``) into the ``[gpus, gpus]`` matrices
    (row ``src`` of ``pairs`` and ``expert_pairs``; ``nic`` and ``nvlink`` as
    :func:`moe_placement.metrics.dedup_copies` counts them). Tokens whose top set is not unique are
    skipped and listed in ``tied``. Returns ((token, node) pairs counted, tokens tied)."""
    tokens, experts = scores.shape
    G = pairs.shape[0]
    gpn = gpus_per_node
    nodes = G // gpn
    group_size = per_gpu * gpn
    limit = node_limit < nodes
    group = np.empty(nodes, dtype=np.float32)
    keep_nodes = np.empty(node_limit, dtype=np.int64)
    node_kept = np.zeros(nodes, dtype=np.bool_)
    masked = np.empty(experts, dtype=np.float32)
    candidates = np.empty(node_limit * group_size, dtype=np.float32)
    cand_expert = np.empty(node_limit * group_size, dtype=np.int64)
    chosen = np.empty(top_k, dtype=np.int64)
    gpu_seen = np.zeros(G, dtype=np.bool_)
    node_seen = np.zeros(nodes, dtype=np.bool_)
    dsts = np.empty(top_k, dtype=np.int64)
    node_pairs = 0
    ntied = 0
    src_node = src // gpn
    src_local = src % gpn
    for t in range(tokens):
        row = scores[t]
        if limit:
            for n in range(nodes):
                best = row[n * group_size]
                for e in range(n * group_size + 1, (n + 1) * group_size):
                    if row[e] > best:
                        best = row[e]
                group[n] = best
            if not _top_set(group, node_limit, keep_nodes):
                tied[ntied] = t
                ntied += 1
                continue
            if node_limit * group_size > top_k:
                # the top-k lies among the kept groups' experts (the rest score -1, below any kept
                # one): select among those alone, in expert order, and map back
                _sort_small(keep_nodes)
                m = 0
                for j in range(node_limit):
                    base = keep_nodes[j] * group_size
                    for e in range(base, base + group_size):
                        candidates[m] = row[e]
                        cand_expert[m] = e
                        m += 1
                ok = _top_set(candidates[:m], top_k, chosen)
                if ok:
                    for j in range(top_k):
                        chosen[j] = cand_expert[chosen[j]]
            else:
                for n in range(nodes):
                    node_kept[n] = False
                for j in range(node_limit):
                    node_kept[keep_nodes[j]] = True
                for e in range(experts):
                    masked[e] = row[e] if node_kept[e // group_size] else np.float32(-1.0)
                ok = _top_set(masked, top_k, chosen)
        else:
            ok = _top_set(row, top_k, chosen)
        if not ok:
            tied[ntied] = t
            ntied += 1
            continue
        # unique destination GPUs of the token, in selection order
        ndst = 0
        for j in range(top_k):
            g = chosen[j] // per_gpu
            expert_pairs[src, g] += 1.0
            if not gpu_seen[g]:
                gpu_seen[g] = True
                dsts[ndst] = g
                ndst += 1
        for j in range(ndst):
            g = dsts[j]
            gpu_seen[g] = False
            pairs[src, g] += 1.0
            g_node = g // gpn
            if not node_seen[g_node]:
                node_seen[g_node] = True
                node_pairs += 1
                if g_node != src_node:  # one NIC copy per (token, remote node), to the forwarder
                    nic[src, g_node * gpn + src_local] += 1.0
            if g == src:
                continue
            if g_node == src_node:
                nvlink[src, g] += 1.0
            else:
                forwarder = g_node * gpn + src_local
                if g != forwarder:
                    nvlink[forwarder, g] += 1.0
        for j in range(ndst):
            node_seen[dsts[j] // gpn] = False
    return node_pairs, ntied


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
    out = tuple(np.zeros((G, G)) for _ in range(4))
    pairs, nic, nvlink, expert_pairs = out
    node_pairs = np.zeros(G)
    tied = np.empty(tokens, dtype=np.int64)
    if compiled:
        announce_compile(_count_tokens)
    limit = node_limit if node_limit is not None and node_limit < nodes else nodes
    for s in range(G):
        scores = rng.random((tokens, per_gpu * G), dtype=np.float32)
        if not compiled:
            dst = _select_numpy(scores, nodes, per_gpu, top_k, node_limit)
            node_pairs[s] = _count_numpy(dst, s, G, gpn, out)
            continue
        counted, ntied = _count_tokens(
            scores, s, gpn, per_gpu, top_k, limit, pairs, nic, nvlink, expert_pairs, tied
        )
        node_pairs[s] = counted
        if ntied:
            dst = _select_numpy(scores[tied[:ntied]], nodes, per_gpu, top_k, node_limit)
            node_pairs[s] += _count_numpy(dst, s, G, gpn, out)
    return pairs, nic, nvlink, node_pairs, expert_pairs
