"""Column bounds on the busiest GPU's hits (``solvers.columns``): valid against brute force, and the
cut they add to the CP-SAT model never removes the optimum."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.solvers.columns import cheap_column_bound, exact_column_bound


def _hits(col: tuple[int, ...], prim: np.ndarray, save: np.ndarray) -> float:
    return float(prim[list(col)].sum()) - sum(save[f, g] for f, g in itertools.combinations(col, 2))


def _partitions(items: list[int], size: int):  # type: ignore[no-untyped-def]
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for others in itertools.combinations(rest, size - 1):
        left = [i for i in rest if i not in others]
        for tail in _partitions(left, size):
            yield [(first, *others), *tail]


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=8, max_size=8),
    st.lists(st.integers(0, 12), min_size=28, max_size=28),
    st.sampled_from([2, 4]),
)
def test_column_bounds_are_valid(loads: list[int], savings: list[int], spg: int) -> None:
    prim = np.array(loads, dtype=np.int64)
    save = np.zeros((8, 8))
    pairs = []
    for (f, g), s in zip(itertools.combinations(range(8), 2), savings, strict=True):
        save[f, g] = save[g, f] = s
        if s > 0:
            pairs.append((f, g, s))
    # the true minimum over columns containing each expert, by enumeration
    true_min = np.full(8, np.inf)
    for col in itertools.combinations(range(8), spg):
        h = _hits(col, prim, save)
        for e in col:
            true_min[e] = min(true_min[e], h)
    cheap = cheap_column_bound(prim.astype(float), save, 1.0, spg)
    assert np.all(cheap <= true_min + 1e-9)
    exact = exact_column_bound(prim, pairs, spg, time_limit_s=5.0, max_experts=8)
    assert exact == int(true_min.max())  # every expert solved: the bound is exact
    # and it never exceeds the best layout's busiest GPU
    best = min(max(_hits(c, prim, save) for c in part) for part in _partitions(list(range(8)), spg))
    assert exact <= best + 1e-9
