"""The uniform routing's compiled draw and selection (simulator/routing.py) against numpy: the PCG64 fill
gives numpy's float32 stream and leaves the generator where numpy would, and the counts equal the numpy
reference on the shapes that take each path (fused group maxima or not, odd counts, ties, other bit
generators, any pre-filter threshold)."""

from __future__ import annotations

import numpy as np
import pytest

from moe_placement.simulator import routing
from moe_placement.simulator.kernels import HAVE_NUMBA
from moe_placement.simulator.routing import SCORE_LEVELS, uniform_routing

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="the PCG64 fill runs only compiled")


def _empty() -> np.ndarray:
    return np.zeros(1, dtype=np.int64)


@needs_numba
@pytest.mark.parametrize("skip", [0, 1])  # 1: a half of a 64-bit draw is left over at the start
def test_pcg_fill_is_numpys_float32_stream(skip: int) -> None:
    rng = np.random.default_rng(11)
    rng.random(skip, dtype=np.float32)
    numpy_rng = np.random.default_rng(11)
    numpy_rng.random(skip, dtype=np.float32)
    state = routing._pcg_state(rng)
    assert state is not None
    for n in (7, 64, 1, 0, 130, 3):  # odd counts carry a half into the next call, as numpy does
        flat = np.full(n, -1, dtype=np.int32)
        routing._fill_pcg(flat, n, state, 0, 0, _empty(), _empty(), _empty())
        want = numpy_rng.random(n, dtype=np.float32) * np.float32(SCORE_LEVELS)
        np.testing.assert_array_equal(flat, want.astype(np.int32))
    routing._store_state(rng, state)
    assert rng.bit_generator.state == numpy_rng.bit_generator.state
    assert rng.random(5).tolist() == numpy_rng.random(5).tolist()


@needs_numba
@pytest.mark.parametrize(("group_size", "skip"), [(4, 0), (3, 1)])  # odd: groups split draws
def test_pcg_fill_groups_on_the_way(group_size: int, skip: int) -> None:
    rows, nodes, threshold = 5, 6, SCORE_LEVELS // 2
    rng = np.random.default_rng(3)
    rng.random(skip, dtype=np.float32)
    state = routing._pcg_state(rng)
    assert state is not None
    flat = np.empty(rows * nodes * group_size, dtype=np.int32)
    maxima = np.empty(rows * nodes, dtype=np.int64)
    keys = np.empty(rows * nodes, dtype=np.int64)
    counts = np.empty(rows, dtype=np.int64)
    routing._fill_pcg(flat, flat.size, state, group_size, threshold, maxima, keys, counts)
    numpy_rng = np.random.default_rng(3)
    scores = numpy_rng.random(skip + flat.size, dtype=np.float32)[skip:] * SCORE_LEVELS
    np.testing.assert_array_equal(flat, scores.astype(np.int32))
    best = flat.reshape(rows, nodes, group_size).max(axis=2)
    np.testing.assert_array_equal(maxima.reshape(rows, nodes), best)
    for t in range(rows):
        above = np.flatnonzero(best[t] >= threshold)
        assert counts[t] == above.size
        kept = keys[t * nodes : t * nodes + above.size]
        np.testing.assert_array_equal(kept & 0xFFFFFFFF, above)
        np.testing.assert_array_equal(kept >> 32, best[t, above])


def _both(gpus: int, per_node: int, rng_of: object, **kw: object) -> None:
    compiled_rng, reference_rng = rng_of(), rng_of()  # type: ignore[operator]
    compiled = uniform_routing(gpus, per_node, rng=compiled_rng, **kw)  # type: ignore[arg-type]
    reference = uniform_routing(gpus, per_node, rng=reference_rng, compiled=False, **kw)  # type: ignore[arg-type]
    for got, want in zip(compiled, reference, strict=True):
        np.testing.assert_array_equal(got, want)
    # the generator is left where numpy's own draw leaves it
    np.testing.assert_equal(compiled_rng.bit_generator.state, reference_rng.bit_generator.state)
    expert_pairs = compiled[4]
    assert expert_pairs.sum() == gpus * kw["tokens"] * kw["top_k"]  # type: ignore[operator]


def _pcg() -> np.random.Generator:
    return np.random.default_rng(5)


def _pcg_with_a_half_left() -> np.random.Generator:
    rng = np.random.default_rng(5)
    rng.random(1, dtype=np.float32)
    return rng


def _philox() -> np.random.Generator:
    return np.random.Generator(np.random.Philox(5))


@pytest.mark.parametrize(
    ("gpus", "per_node", "tokens", "experts", "node_limit", "top_k", "rng_of"),
    [
        (64, 8, 40, 64, 4, 8, _pcg),  # one expert per GPU (groups of 8), as at 1024 GPUs
        (16, 8, 300, 256, 2, 8, _pcg_with_a_half_left),  # group maxima across draws
        (3, 3, 37, 9, None, 2, _pcg),  # odd scores per GPU: halves carried across GPUs
        (6, 3, 50, 18, 1, 4, _pcg),  # odd group size
        (8, 4, 60, 8, 1, 4, _pcg),  # the kept groups hold exactly top-k experts
        (8, 4, 60, 8, 1, 6, _pcg),  # fewer than top-k: every token tied, numpy decides
        (16, 8, 200, 64, 1, 8, _philox),  # another bit generator: the numpy reference
        (8, 8, 100, 32, None, 6, _philox),
    ],
)
def test_routing_counts_as_numpy_on_every_path(
    gpus: int,
    per_node: int,
    tokens: int,
    experts: int,
    node_limit: int | None,
    top_k: int,
    rng_of: object,
) -> None:
    kw = {"tokens": tokens, "top_k": top_k, "num_experts": experts, "node_limit": node_limit}
    _both(gpus, per_node, rng_of, **kw)


@pytest.mark.parametrize("levels", [(0, 0), (SCORE_LEVELS, SCORE_LEVELS), (SCORE_LEVELS // 2, 1)])
@pytest.mark.parametrize("node_limit", [2, None])
def test_any_prefilter_threshold_gives_the_same_counts(
    monkeypatch: pytest.MonkeyPatch, levels: tuple[int, int], node_limit: int | None
) -> None:
    # 0: every score competes; 2**24: none passes, every token rescans all; the sets stay the same
    kw = {"tokens": 150, "top_k": 8, "num_experts": 128, "node_limit": node_limit}
    default = uniform_routing(32, 8, rng=np.random.default_rng(9), **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(routing, "_thresholds", lambda *args: levels)
    extreme = uniform_routing(32, 8, rng=np.random.default_rng(9), **kw)  # type: ignore[arg-type]
    for got, want in zip(extreme, default, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cap", [2, 5, 9, 13])  # the short unrolled list and a longer one
def test_top_of_keys_sorts_and_flags_ties_at_the_boundary(cap: int) -> None:
    rng = np.random.default_rng(cap)
    flags = set()
    for m in [0, 1, cap - 2, cap - 1, cap, cap + 1, 40]:
        for _ in range(30):
            values = rng.integers(0, 12, size=max(m, 0))  # few levels: many ties
            keys = (values.astype(np.int64) << 32) | np.arange(values.size)
            best = np.empty(max(cap, routing.SHORT_LIST), dtype=np.int64)
            unique = routing._top_of_keys(keys, values.size, best, cap)
            top = np.sort(keys)[::-1][:cap]
            np.testing.assert_array_equal(best[: top.size], top)
            ranked = np.sort(values)[::-1]
            want = values.size == cap - 1 or (
                values.size >= cap and ranked[cap - 2] != ranked[cap - 1]
            )
            assert unique == want, (values, cap)
            flags.add(unique)
    assert flags == {True, False}


@needs_numba
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(
    ("gpus", "per_node", "tokens", "experts", "node_limit", "rng_of"),
    [
        (16, 8, 120, 64, 2, _pcg),
        (3, 3, 37, 9, None, _pcg_with_a_half_left),  # threads start inside a 64-bit draw
        (6, 3, 31, 18, 1, _pcg),
    ],
)
def test_threads_count_as_one(
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    gpus: int,
    per_node: int,
    tokens: int,
    experts: int,
    node_limit: int | None,
    rng_of: object,
) -> None:
    # each thread starts from its first GPU's place in the stream: the same scores, counts and state
    monkeypatch.setattr(routing, "_workers", lambda scores: threads)
    kw = {"tokens": tokens, "top_k": 2, "num_experts": experts, "node_limit": node_limit}
    _both(gpus, per_node, rng_of, **kw)


@needs_numba
def test_stream_position_jump_matches_drawing() -> None:
    start = routing._pcg_state(_pcg_with_a_half_left())
    assert start is not None
    for position in (0, 1, 2, 7, 64, 1001):
        rng = _pcg_with_a_half_left()
        rng.random(position, dtype=np.float32)
        want = routing._pcg_state(rng)
        assert want is not None
        got = routing._pcg_state_at(start, position)
        np.testing.assert_array_equal(got[:5], want[:5])
        if got[4]:  # the half left over (a stale one otherwise, never read)
            assert got[5] == want[5]
