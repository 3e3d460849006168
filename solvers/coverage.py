"""Exact token coverage (the evaluator's deduplication) and the pairwise surrogate the CP-SAT model uses.

``placement.metrics`` sends a token once per destination GPU (and once per destination node over the
NIC), so a GPU's received copies are the tokens with *at least one* of their ``k`` experts there: a
coverage count, ``1[m >= 1]`` per (token, GPU) with ``m`` the token's experts on that GPU. The CP-SAT
model is linear in single experts and pairs only, so it counts ``q(m) = alpha m - beta C(m, 2)`` per
(token, GPU) instead (singles: ``alpha x load``; pairs: ``beta x coact`` for experts sharing a GPU).

* **Valid coefficients** (:func:`valid_coefs`): ``q(m) <= 1[m >= 1]`` for every reachable ``m``
  (``0..min(k, slots)``), so the surrogate never exceeds the exact coverage of any layout and the CP-SAT
  bound is a valid lower bound of the exact count (Bonferroni is ``alpha = beta = 1``). The vertices of
  that 2-variable polytope are ``q`` tight at ``m = j`` and ``j + 1``: ``alpha = 2 / (j + 1)``,
  ``beta = 2 / (j (j + 1))``; the one with the largest mean ``q`` on an observed distribution of ``m``
  is chosen. For top-2 (``m <= 2``) ``j = 1`` is exact.
* **Fitted coefficients** (:func:`fitted_coefs`): least squares of ``q(m)`` against ``1[m >= 1]`` on
  the observed distribution, for inputs whose objective stays the surrogate (replicas: the evaluator's
  replica router decides where each token goes, and the model cannot follow it token by token).

The old model's ``alpha = 1, beta = 2 / k`` over-counts (``m (k - m + 1) / k >= 1``), by ~30% on
OLMoE-shaped layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_placement.workload import Workload, home_gpus

MAX_TOKEN_ENTRIES = (
    16_000_000  # tokens x layers x k kept in memory for exact coverage; above: surrogate
)


@dataclass(frozen=True, eq=False)
class TokenLayer:
    """One layer's tokens: ``experts[n, k]`` expert ids and ``home[n]`` home GPU (the evaluator's)."""

    experts: np.ndarray
    home: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])


def token_layers(workload: Workload, num_gpus: int) -> list[TokenLayer] | None:
    """Every layer's tokens of a per-token trace (``None`` for load-only inputs or traces too large to
    keep in memory: the model then keeps the surrogate as its objective)."""
    if not workload.per_token:
        return None
    k = workload.shape.top_k
    if int(workload.num_tokens) * workload.num_layers * max(k, 1) > MAX_TOKEN_ENTRIES:
        return None
    ids: list[np.ndarray] = []
    homes: list[np.ndarray] = []
    for chunk in workload.chunks():
        ids.append(np.asarray(chunk.expert_ids, dtype=np.int32))
        homes.append(home_gpus(chunk.seq_id, chunk.pos, num_gpus, workload.home_policy))
    if not ids:
        return None
    experts = np.concatenate(ids, axis=1)  # [layers, n, k]
    home = np.concatenate(homes).astype(np.int64)
    return [TokenLayer(np.ascontiguousarray(experts[layer]), home) for layer in range(len(experts))]


def _cover(groups: np.ndarray, num_groups: int) -> np.ndarray:
    """``[n, groups]`` bool: token ``t`` has at least one expert in group ``g`` (``groups[n, k]``)."""
    out = np.zeros((groups.shape[0], num_groups), dtype=bool)
    rows = np.broadcast_to(np.arange(groups.shape[0])[:, None], groups.shape)
    out[rows, groups] = True
    return out


def gpu_coverage(tokens: TokenLayer, gpu_of: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G]`` tokens with at least one expert on each GPU (``gpu_of[E]``, one replica per expert)."""
    return _cover(gpu_of[tokens.experts], num_gpus).sum(axis=0).astype(np.float64)


def node_inflow_exact(
    tokens: TokenLayer, gpu_of: np.ndarray, gpus_per_node: int, num_nodes: int
) -> np.ndarray:
    """``[N]`` tokens homed in another node with at least one expert on each node: the copies the
    evaluator sends into that node over NICs (one per (token, destination node))."""
    cover = _cover(gpu_of[tokens.experts] // gpus_per_node, num_nodes)
    home_node = tokens.home // gpus_per_node
    cover[np.arange(cover.shape[0]), home_node] = False
    return cover.sum(axis=0).astype(np.float64)


def m_distribution(tokens: TokenLayer, gpu_of: np.ndarray, num_groups: int, top: int) -> np.ndarray:
    """``[top + 1]`` fraction of (token, group) pairs with ``m`` of the token's experts in the group
    (``gpu_of`` maps experts to groups: GPUs or nodes)."""
    grp = gpu_of[tokens.experts]
    n = grp.shape[0]
    counts = np.zeros((n, num_groups), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n)[:, None], grp.shape), grp), 1)
    hist = np.bincount(np.minimum(counts.ravel(), top), minlength=top + 1).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def hypergeometric_m(num_experts: int, top_k: int, group: int) -> np.ndarray:
    """``[min(k, group) + 1]`` distribution of ``m`` for uniform routing (no co-activation)."""
    from math import comb

    top = min(top_k, group)
    total = comb(num_experts, top_k)
    p = np.array(
        [
            comb(group, m) * comb(num_experts - group, top_k - m) / total if total else 0.0
            for m in range(top + 1)
        ]
    )
    return p / max(p.sum(), 1e-300)


def q_of(alpha: float, beta: float, m: np.ndarray) -> np.ndarray:
    return alpha * m - beta * m * (m - 1) / 2.0


def valid_coefs(p: np.ndarray) -> tuple[float, float]:
    """``(alpha, beta)`` with ``q(m) <= 1[m >= 1]`` for every ``m >= 0`` (``m <= 1`` when ``p`` has
    two entries, i.e. top-1) and the
    largest mean ``q`` under ``p`` (the tightest valid pairwise under-estimate of coverage)."""
    top = len(p) - 1
    if top <= 1:
        return 1.0, 0.0
    m = np.arange(top + 1, dtype=np.float64)
    best = (-np.inf, 1.0, 1.0)
    # q is a downward parabola with its top between j and j + 1: valid for every m >= 0, so one pair of
    # coefficients serves GPUs and (larger) nodes alike
    for alpha, beta in all_valid_coefs(top):
        mean = float((p * q_of(alpha, beta, m)).sum())
        if mean > best[0] + 1e-12:
            best = (mean, alpha, beta)
    return best[1], best[2]


def all_valid_coefs(top_k: int) -> list[tuple[float, float]]:
    """Every vertex ``(alpha, beta)`` of the valid polytope for tokens of ``top_k`` experts (``q`` tight
    at ``m = j, j + 1``, ``j = 1..k-1``; ``(1, 0)`` for ``k = 1``)."""
    if top_k <= 1:
        return [(1.0, 0.0)]
    return [(2.0 / (j + 1), 2.0 / (j * (j + 1))) for j in range(1, top_k)]


def bound_coefs(total: float, pair_bound: float, top_k: int) -> tuple[float, float]:
    """The valid ``(alpha, beta)`` whose average-hits bound ``alpha total - beta pair_bound`` is largest
    (``pair_bound``: the most co-activation any partition keeps inside groups)."""
    return max(all_valid_coefs(top_k), key=lambda ab: ab[0] * total - ab[1] * pair_bound)


def fitted_coefs(p: np.ndarray) -> tuple[float, float]:
    """``(alpha, beta)`` minimising the ``p``-weighted squared error of ``q(m)`` against ``1[m >= 1]``
    (no validity: for objectives that stay the surrogate). ``beta >= 0`` so pairs still save."""
    top = len(p) - 1
    if top <= 1:
        return 1.0, 0.0
    m = np.arange(top + 1, dtype=np.float64)
    A = np.stack([m, -m * (m - 1) / 2.0], axis=1) * np.sqrt(p)[:, None]
    y = (m >= 1).astype(np.float64) * np.sqrt(p)
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    alpha, beta = float(sol[0]), float(sol[1])
    if beta < 0 or alpha <= 0:
        return valid_coefs(p)
    return alpha, beta


def remote_coact(
    tokens: TokenLayer, num_experts: int, gpus_per_node: int, num_nodes: int
) -> np.ndarray:
    """``[N, E, E]`` co-activation counted over the tokens homed *outside* each node (symmetric, zero
    diagonal): the pairs whose deduplication saves NIC copies into that node."""
    ids = tokens.experts
    k = ids.shape[1]
    home_node = tokens.home // gpus_per_node
    iu, ju = np.triu_indices(k, 1)
    a, b = ids[:, iu].ravel(), ids[:, ju].ravel()
    hn = np.repeat(home_node, iu.size)
    E = num_experts
    per_home = np.bincount(hn * E * E + a * E + b, minlength=num_nodes * E * E).reshape(
        num_nodes, E, E
    )
    per_home = per_home + per_home.transpose(0, 2, 1)
    for h in range(num_nodes):
        np.fill_diagonal(per_home[h], 0)
    total = per_home.sum(axis=0)
    return (total[None, :, :] - per_home).astype(np.float64)
