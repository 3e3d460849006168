"""Fluid engine: closed forms on uncongested cases, max-min fairness invariants, capacity never exceeded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.errors import PlacementError
from moe_placement.simulator import kernels
from moe_placement.simulator.engine import FluidNetwork


def _run_flows(
    caps: list[float], flows: list[tuple[list[int], float, float, float]]
) -> list[float]:
    """Each flow: (links, bytes, start_us, latency_us). Returns delivery times."""
    env = simpy.Environment()
    net = FluidNetwork(env, caps)
    done_at = [0.0] * len(flows)

    def start(i: int, links: list[int], size: float, t0: float, lat: float):  # type: ignore[no-untyped-def]
        yield env.timeout(t0)
        _, done = net.transfer(links, size, latency_us=lat)
        yield done
        done_at[i] = env.now

    for i, (links, size, t0, lat) in enumerate(flows):
        env.process(start(i, links, size, t0, lat))
    env.run()
    assert net.worst_utilisation <= 1 + 1e-9
    return done_at


def test_single_flow_matches_closed_form() -> None:
    assert _run_flows([100.0], [([0], 5000.0, 0.0, 2.8)]) == [pytest.approx(2.8 + 50.0, rel=1e-12)]


def test_two_flows_share_a_link_then_the_survivor_speeds_up() -> None:
    t = _run_flows([10.0], [([0], 100.0, 0.0, 0.0), ([0], 300.0, 0.0, 0.0)])
    assert t[0] == pytest.approx(20.0, rel=1e-12)  # half rate until it ends
    assert t[1] == pytest.approx(40.0, rel=1e-12)  # then the full link


def test_late_arrival_and_path_bottleneck() -> None:
    # flow B arrives at t=5 on link 1 only; flow A crosses links 0 (cap 10) and 1 (cap 4)
    t = _run_flows([10.0, 4.0], [([0, 1], 40.0, 0.0, 0.0), ([1], 10.0, 5.0, 0.0)])
    # A: 4/us for 5 us (20 bytes), then 2/us while B runs (B needs 5 us), then 4/us again
    assert t[1] == pytest.approx(10.0, rel=1e-12)
    assert t[0] == pytest.approx(10.0 + 10.0 / 4.0, rel=1e-12)


def reference_fill(paths: list[np.ndarray], cap: np.ndarray) -> np.ndarray:
    """Max-min fair rates by textbook progressive filling, in plain Python (the cross-check of the
    compiled kernel): every unfrozen flow rises by the same amount until a link saturates; the flows on
    the saturated links freeze; repeat."""
    rate = np.zeros(len(paths))
    frozen = np.zeros(len(paths), dtype=bool)
    left = cap.astype(np.float64).copy()
    while not frozen.all():
        counts = np.zeros(cap.size)
        for f, path in enumerate(paths):
            if not frozen[f]:
                counts[path] += 1
        loaded = counts > 0
        step = float((left[loaded] / counts[loaded]).min())
        rate[~frozen] += step
        left -= step * counts
        full = left <= cap * 1e-12
        for f, path in enumerate(paths):
            if not frozen[f] and full[path].any():
                frozen[f] = True
    return rate


def _csr(paths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fl_ptr = np.concatenate([[0], np.cumsum([len(p) for p in paths])]).astype(np.int64)
    fl_link = np.concatenate(paths).astype(np.int64)
    return fl_ptr, fl_link, np.ones(fl_link.size)


def _kernel_fill(
    paths: list[np.ndarray],
    cap: np.ndarray,
    rate: np.ndarray,
    keep_below: float,
    active: np.ndarray,
) -> np.ndarray:
    """The compiled full refill on ``active`` flows (rates below ``keep_below`` kept); returns rates."""
    fl_ptr, fl_link, coef = _csr(paths)
    out = rate.copy()
    n = len(paths)
    args = (fl_ptr, fl_link, coef, cap, np.zeros(cap.size), out)
    kernels.full_refill(
        active,
        keep_below,
        *args,
        np.zeros(n, np.int8),
        np.zeros(n, np.int64),
        kernels.scratch(n, cap.size),
    )
    return out


def test_textbook_max_min() -> None:
    # A over links 0 and 1, B over 0, C over 1; caps 1 and 2 -> A = B = 0.5, C = 1.5
    paths = [np.array([0, 1]), np.array([0]), np.array([1])]
    cap = np.array([1.0, 2.0])
    assert reference_fill(paths, cap) == pytest.approx([0.5, 0.5, 1.5])
    rate = _kernel_fill(paths, cap, np.full(3, np.inf), -np.inf, np.arange(3))
    assert rate == pytest.approx([0.5, 0.5, 1.5])


def test_rejects_bad_links() -> None:
    env = simpy.Environment()
    with pytest.raises(PlacementError):
        FluidNetwork(env, [0.0])
    net = FluidNetwork(env, [1.0])
    with pytest.raises(PlacementError):
        net.transfer([3], 10.0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=25),
    st.integers(0, 10_000),
)
def test_max_min_invariants(num_links: int, num_flows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cap = rng.uniform(1.0, 10.0, num_links)
    paths = [
        np.unique(rng.integers(0, num_links, rng.integers(1, num_links + 1)))
        for _ in range(num_flows)
    ]
    rate = _kernel_fill(paths, cap, np.full(num_flows, np.inf), -np.inf, np.arange(num_flows))
    assert rate == pytest.approx(reference_fill(paths, cap), rel=1e-9)
    fl_ptr, fl_link, _ = _csr(paths)
    load = np.bincount(fl_link, weights=np.repeat(rate, np.diff(fl_ptr)), minlength=num_links)
    assert (load <= cap * (1 + 1e-9)).all()
    # max-min optimality: every flow crosses a saturated link on which no flow is faster than it
    for f, p in enumerate(paths):
        ok = False
        for link in p:
            on = [g for g, q in enumerate(paths) if link in q]
            if load[link] >= cap[link] * (1 - 1e-9) and rate[f] >= max(rate[on]) * (1 - 1e-9):
                ok = True
        assert ok, f"flow {f} has no bottleneck"
    # the partial refill after a completion (flows below the finished one's level keep their rate)
    # gives the reference answer for the flows left
    if num_flows > 1:
        gone = int(rng.integers(0, num_flows))
        keep = np.array([f for f in range(num_flows) if f != gone])
        partial = _kernel_fill(paths, cap, rate, rate[gone] * (1 - 1e-12), keep)
        full = reference_fill([paths[f] for f in keep], cap)
        assert partial[keep] == pytest.approx(full, rel=1e-9)


def _delivery_times(
    caps: np.ndarray,
    flows: list[tuple[np.ndarray, float, float]],
    *,
    regroup_every_event: bool = False,
    **net_options: Any,
) -> tuple[np.ndarray, FluidNetwork]:
    env = simpy.Environment()
    net = FluidNetwork(env, caps, **net_options)
    if regroup_every_event:
        # the lazy-link and class bookkeeping is exercised as hard as it gets
        net.regroup_min_events = 1
        net.regroup_flows_per_event = 10**9
    out = np.zeros(len(flows))

    def start(i: int, links: np.ndarray, size: float, t0: float):  # type: ignore[no-untyped-def]
        yield env.timeout(t0)
        _, done = net.transfer(links, size)
        yield done
        out[i] = env.now

    for i, (links, size, t0) in enumerate(flows):
        env.process(start(i, links, size, t0))
    env.run()
    assert net.worst_utilisation <= 1 + 1e-9
    return out, net


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=2, max_value=8),
    st.integers(min_value=2, max_value=40),
    st.integers(0, 10_000),
)
def test_incremental_refill_equals_full_recompute(
    num_links: int, num_flows: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    caps = rng.uniform(1.0, 10.0, num_links)
    flows = [
        (
            np.unique(rng.integers(0, num_links, rng.integers(1, 4))),
            float(rng.uniform(1, 100)),
            float(rng.choice([0.0, 0.0, rng.uniform(0, 20)])),
        )
        for _ in range(num_flows)
    ]
    fast, _ = _delivery_times(caps, flows, incremental=True)
    full, _ = _delivery_times(caps, flows, incremental=False)
    assert fast == pytest.approx(full, rel=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=8),
    st.integers(min_value=2, max_value=40),
    st.integers(0, 10_000),
)
def test_classes_and_lazy_links_equal_per_flow_full_recompute(
    num_links: int, num_flows: int, seed: int
) -> None:
    """Flows grouped into classes (shared paths, lazy unsaturated links) get exactly the per-flow
    max-min rates: delivery times equal a full per-flow recomputation."""
    rng = np.random.default_rng(seed)
    caps = rng.uniform(1.0, 10.0, num_links)
    paths = [np.unique(rng.integers(0, num_links, rng.integers(1, 4))) for _ in range(4)]
    flows = [
        (
            paths[int(rng.integers(0, len(paths)))],  # few distinct paths: classes form
            float(rng.uniform(1, 100)),
            float(rng.choice([0.0, 0.0, rng.uniform(0, 20)])),
        )
        for _ in range(num_flows)
    ]
    fast, net = _delivery_times(
        caps, flows, incremental=True, aggregate=True, regroup_every_event=True
    )
    full, _ = _delivery_times(
        caps, flows, incremental=False, aggregate=False, regroup_every_event=True
    )
    assert fast == pytest.approx(full, rel=1e-7)
    assert net.regroups >= 1


def _alltoall_end_us(gpus: int, *, aggregate: bool) -> tuple[np.ndarray, FluidNetwork]:
    from moe_placement.cluster import load_cluster
    from moe_placement.simulator.collectives import PhasePlan, run_phase
    from moe_placement.simulator.topology import Topology

    cluster = load_cluster("h800-mpft").with_counts(gpus, 8)
    topo = Topology(cluster, routing="spray", pxn=True)
    for s in range(gpus):
        for d in range(gpus):
            topo.route(s, d)
    env = simpy.Environment()
    net = FluidNetwork(
        env,
        topo.capacity(),
        binding=topo.binding(),
        incremental=aggregate,
        aggregate=aggregate,
    )
    net.regroup_min_events = 4
    rng = np.random.default_rng(3)
    sizes = rng.uniform(0.5e6, 1.5e6, (gpus, gpus))
    np.fill_diagonal(sizes, 0.0)
    go = env.event()
    go.succeed()
    run_phase(env, net, topo, PhasePlan("a2a", sizes), [go] * gpus)
    env.run()
    return net.end_us[: net.num_flows].copy(), net


def test_aggregated_alltoall_is_event_exact() -> None:
    """A 32-GPU uneven PXN all-to-all: every flow ends when a per-flow full recompute says, while the
    solver merged flows (NVLink left the solver once it had slack)."""
    fast, net = _alltoall_end_us(32, aggregate=True)
    full, ref = _alltoall_end_us(32, aggregate=False)
    assert fast == pytest.approx(full, rel=1e-9)
    assert net.regroups >= 1 and net.lazy.any()
    assert ref.regroups == 0 and not ref.lazy.any()


def test_kernels_are_cached_on_disk() -> None:
    """Every compiled kernel caches its machine code (``cache=True``): CI runs do not recompile."""
    if not kernels.HAVE_NUMBA:
        pytest.skip("numba absent: kernels run as plain Python")
    from numba.core.caching import NullCache

    compiled = [v for v in vars(kernels).values() if hasattr(v, "py_func")]
    assert len(compiled) >= 10
    for k in compiled:
        assert not isinstance(k._cache, NullCache), k.py_func.__name__
