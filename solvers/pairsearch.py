"""Swap local search and a spectral bound for the pairwise co-location part of the layer model.

The CP-SAT layer model (:mod:`moe_placement.solvers.cpsat`) starts from a balance-only greedy hint, which ignores
co-activation: on OLMoE-shaped layers (64 experts, top-8, 8 GPUs) that hint keeps only the savings of a
random partition, and CP-SAT does not find the co-activation groups from there within seconds. Two
pieces close the gap from both sides:

* :func:`swap_search`: iterated local search over expert swaps between GPUs, on the model's own
  objective for one NVLink node (``A max_g load[g] + B max_g hits[g]``, hits = load minus the pair
  savings ``c sum coact`` of experts sharing a GPU). All ``E^2`` swaps are scored at once in NumPy
  (``O(E^2)`` per step from the per-(expert, GPU) co-activation sums); ties on the objective are broken
  by total savings, so the search walks plateaus of the max-terms; random kicks restart it.
* :func:`partition_pair_bound`: an upper bound on the co-activation mass that *any* partition of the
  experts into ``groups`` groups of ``size`` can keep inside groups (Donath-Hoffman: with indicator
  columns ``x_g``, ``sum_g x_g' C x_g <= size * sum of the top-``groups`` eigenvalues of C + diag(d)
  minus trace(d)`` for every ``d``; ``d`` is improved by subgradient steps and every iterate is valid).
  It is combined (min) with the per-expert bound (each expert keeps at most its ``size - 1`` strongest
  partners).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MAX_KICKS_WITHOUT_GAIN = 60  # restarts from the best layout before the search gives up
MAX_SPECTRAL_EXPERTS = 160  # eigen-decompositions above this size cost more than the bound is worth


def partition_pair_bound(coact: np.ndarray, groups: int, size: int, iters: int = 60) -> float:
    """Upper bound on ``sum over groups of sum_{e<f in group} coact[e, f]`` over every partition of the
    experts into ``groups`` groups of ``size`` (``coact[E, E]`` symmetric, ``E = groups * size``)."""
    E = coact.shape[0]
    per_expert = 0.5 * float((-np.sort(-coact, axis=1))[:, : max(size - 1, 0)].sum())
    if size <= 1:
        return 0.0
    if groups <= 1 or E > MAX_SPECTRAL_EXPERTS or groups * size != E:
        return per_expert
    digest = hashlib.blake2b(
        np.ascontiguousarray(coact, dtype=np.float64).tobytes(), digest_size=16
    )
    return min(
        per_expert, _spectral(digest.hexdigest(), coact.astype(np.float64), groups, size, iters)
    )


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Multi-threaded BLAS on tiny matrices runs ~100x slower on a busy 2-core machine: use one thread
    (when threadpoolctl is installed; otherwise leave the BLAS as it is)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


_CACHE: dict[tuple[str, int, int, int], float] = {}


def _spectral(key: str, coact: np.ndarray, groups: int, size: int, iters: int) -> float:
    memo = (key, groups, size, iters)
    if memo in _CACHE:
        return _CACHE[memo]
    with one_blas_thread():
        out = _spectral_iterate(coact, groups, size, iters)
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[memo] = out
    return out


def _spectral_iterate(coact: np.ndarray, groups: int, size: int, iters: int) -> float:
    C = coact.copy()
    np.fill_diagonal(C, 0.0)
    E = C.shape[0]
    d = np.zeros(E)
    best = np.inf
    step0 = 0.5 * float(np.abs(C).sum()) / max(E, 1)
    for it in range(iters):
        w, V = np.linalg.eigh(C + np.diag(d))
        best = min(best, size * float(w[-groups:].sum()) - float(d.sum()))
        grad = size * (V[:, -groups:] ** 2).sum(axis=1) - 1.0
        norm = float(np.linalg.norm(grad))
        if norm < 1e-12:
            break
        d -= step0 / np.sqrt(it + 1.0) * grad / norm
    return max(0.0, 0.5 * best)  # each pair counted from both ends


def _max_excluding(values: np.ndarray) -> np.ndarray:
    """``[G, G]``: the largest of ``values`` over GPUs other than ``a`` and ``b`` (``-inf`` if none)."""
    G = values.size
    order = np.argsort(-values, kind="stable")[:3]
    out = np.full((G, G), -np.inf)
    for a in range(G):
        for b in range(G):
            for g in order:
                if g != a and g != b:
                    out[a, b] = values[g]
                    break
    return out


def swap_search(
    load: np.ndarray,
    coact: np.ndarray,
    held: list[list[int]],
    **kwargs: object,
) -> list[list[int]]:
    """Iterated swap search minimising ``compute_us * max load + hit_us * max (load - c pairs)`` for
    one NVLink node with one replica per expert; returns the best layout found before ``until``
    (read on ``clock``). ``held[G][spg]`` is the start; see :func:`_swap_search` for the keywords."""
    with one_blas_thread():
        return _swap_search(load, coact, held, **kwargs)  # type: ignore[arg-type]


def _swap_search(
    load: np.ndarray,
    coact: np.ndarray,
    held: list[list[int]],
    *,
    compute_us: float,
    hit_us: float,
    pair_factor: float,
    hit_alpha: float = 1.0,
    until: float,
    rng: np.random.Generator,
    clock: object = time.perf_counter,
    max_steps: int = 20_000,
) -> list[list[int]]:
    """The search itself: ``compute_us``/``hit_us`` price the busiest GPU's load / hits, ``pair_factor``
    the hits saved per co-activation, ``hit_alpha`` the hits per assignment, ``max_steps`` bounds the swaps (deterministic runs)."""
    now = clock  # type: ignore[assignment]
    prices = _Prices(compute_us, hit_us, pair_factor, hit_alpha)
    G, E = len(held), load.size
    C = coact.astype(np.float64).copy()
    np.fill_diagonal(C, 0.0)
    lay = _layout(C, load, _groups_of(held, E), G)
    tol = 1e-9 * max(float(load.sum()), 1.0) * max(compute_us, hit_us, 1e-12)
    cur = prices.score(lay.L, lay.S)
    best, best_grp = cur, lay.grp.copy()
    steps = stale = kicks_without_gain = 0
    while steps < max_steps and now() < until:  # type: ignore[operator]
        steps += 1
        swaps = _score_swaps(lay, C, load, prices)
        e, f = _best_swap(swaps, lay.diff, tol)
        new = swaps.new[e, f]
        improves = new < cur - tol or (
            new <= cur + tol and swaps.gain_pairs[e, f] > 1e-9 and stale < 4 * E
        )
        if not improves:
            if cur < best - tol:
                best, best_grp = cur, lay.grp.copy()
                kicks_without_gain = 0
            kicks_without_gain += 1
            if kicks_without_gain > MAX_KICKS_WITHOUT_GAIN:
                break
            # kick: a few random swaps from the best layout, then descend again
            lay = _layout(C, load, _kicked(best_grp, rng), G)
            cur = prices.score(lay.L, lay.S)
            stale = 0
            continue
        stale = stale + 1 if new >= cur - tol else 0
        _apply_swap(lay, swaps, e, f, C)
        cur = new
        if cur < best - tol:
            best, best_grp = cur, lay.grp.copy()
    return [sorted(np.flatnonzero(best_grp == g).tolist()) for g in range(G)]


@dataclass(frozen=True)
class _Prices:
    """The objective's prices: ``compute_us * max load + hit_us * max hits`` over the node's GPUs."""

    compute_us: float
    hit_us: float
    pair_factor: float
    hit_alpha: float

    def hits(self, L: np.ndarray, S: np.ndarray) -> np.ndarray:
        """Hits from loads ``L`` and kept pair sums ``S`` (any matching shapes)."""
        return self.hit_alpha * L - self.pair_factor * S

    def score(self, L: np.ndarray, S: np.ndarray) -> float:
        """The objective of a layout with per-GPU loads ``L[G]`` and pair sums ``S[G]``."""
        return self.compute_us * float(L.max()) + self.hit_us * float(self.hits(L, S).max())


@dataclass
class _Layout:
    """The layout under search and the sums every swap is scored from; :func:`_apply_swap` keeps them
    in step, :func:`_layout` rebuilds them after a kick."""

    grp: np.ndarray  # [E] GPU of each expert
    M: np.ndarray  # [E, G] co-activation of e with GPU g's experts
    L: np.ndarray  # [G] load per GPU
    S: np.ndarray  # [G] co-activation kept inside each GPU
    diff: np.ndarray  # [E, E] e and f on different GPUs (the swaps that change anything)


def _groups_of(held: list[list[int]], E: int) -> np.ndarray:
    """``[E]`` GPU of each expert in the layout ``held[G][spg]``."""
    grp = np.empty(E, dtype=np.int64)
    for g, row in enumerate(held):
        grp[row] = g
    return grp


def _layout(C: np.ndarray, load: np.ndarray, grp: np.ndarray, G: int) -> _Layout:
    """The sums of the layout ``grp[E]`` computed from scratch."""
    E = grp.size
    onehot = np.zeros((E, G))
    onehot[np.arange(E), grp] = 1.0
    M = C @ onehot
    L = np.bincount(grp, weights=load, minlength=G).astype(np.float64)
    S = 0.5 * (onehot * M).sum(axis=0)
    return _Layout(grp=grp, M=M, L=L, S=S, diff=grp[:, None] != grp[None, :])


@dataclass(frozen=True)
class _Swaps:
    """Every swap ``(e, f)`` scored at once, each ``[E, E]``: the new loads / pair sums of e's GPU
    (``La``, ``Sa``) and f's GPU (``Lb``, ``Sb``), the new objective and the pairs gained overall."""

    La: np.ndarray
    Lb: np.ndarray
    Sa: np.ndarray
    Sb: np.ndarray
    new: np.ndarray
    gain_pairs: np.ndarray


def _score_swaps(lay: _Layout, C: np.ndarray, load: np.ndarray, prices: _Prices) -> _Swaps:
    """Score all ``E^2`` swaps in ``O(E^2)`` from the per-(expert, GPU) sums ``lay.M``."""
    E = load.size
    M, L, S = lay.M, lay.L, lay.S
    a, b = lay.grp[:, None], lay.grp[None, :]  # e on a, f on b
    le, lf = load[:, None], load[None, :]
    La = L[a] - le + lf
    Lb = L[b] - lf + le
    # the two GPUs' new pair sums (M[f, a] still counts C[f, e], removed once more by - C):
    # S_a' = S_a - M[e, a] + M[f, a] - C[e, f];  S_b' = S_b - M[f, b] + M[e, b] - C[e, f]
    e_rows, f_rows = np.arange(E)[:, None], np.arange(E)[None, :]
    Sa = S[a] - M[e_rows, a] + M[f_rows, a] - C
    Sb = S[b] - M[f_rows, b] + M[e_rows, b] - C
    Ha, Hb = prices.hits(La, Sa), prices.hits(Lb, Sb)
    Lrest = _max_excluding(L)[a, b]
    Hrest = _max_excluding(prices.hits(L, S))[a, b]
    new = prices.compute_us * np.maximum(np.maximum(La, Lb), Lrest) + prices.hit_us * np.maximum(
        np.maximum(Ha, Hb), Hrest
    )
    gain_pairs = (Sa + Sb) - (S[a] + S[b])
    return _Swaps(La=La, Lb=Lb, Sa=Sa, Sb=Sb, new=new, gain_pairs=gain_pairs)


def _best_swap(swaps: _Swaps, diff: np.ndarray, tol: float) -> tuple[int, int]:
    """The lowest-objective swap between two GPUs; ties go to more pairs kept overall (lower
    average hits), which lets the search walk plateaus of the max-terms."""
    key = np.where(diff, swaps.new - 1e-6 * tol * swaps.gain_pairs, np.inf)
    e, f = np.unravel_index(int(np.argmin(key)), key.shape)
    return e, f  # type: ignore[return-value]


def _apply_swap(lay: _Layout, swaps: _Swaps, e: int, f: int, C: np.ndarray) -> None:
    """Swap experts ``e`` and ``f`` and update the layout's sums in place (``O(E)``)."""
    grp, diff = lay.grp, lay.diff
    ga, gb = int(grp[e]), int(grp[f])
    lay.L[ga], lay.L[gb] = swaps.La[e, f], swaps.Lb[e, f]
    lay.S[ga], lay.S[gb] = swaps.Sa[e, f], swaps.Sb[e, f]
    lay.M[:, ga] += C[:, f] - C[:, e]
    lay.M[:, gb] += C[:, e] - C[:, f]
    grp[e], grp[f] = gb, ga
    diff[e, :] = grp[e] != grp
    diff[:, e] = diff[e, :]
    diff[f, :] = grp[f] != grp
    diff[:, f] = diff[f, :]


def _kicked(best_grp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of the best layout with a few random swaps: the restart when no swap improves."""
    grp = best_grp.copy()
    E = grp.size
    for _ in range(int(rng.integers(2, 5))):
        u, v = rng.choice(E, size=2, replace=False)
        if grp[u] != grp[v]:
            grp[u], grp[v] = grp[v], grp[u]
    return grp
