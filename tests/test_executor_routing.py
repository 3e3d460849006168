"""Executor routing and calibration fits: pure NumPy, no workers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.errors import PlacementError
from moe_placement.executor.calibrate import calibrated_spec, fit_compute, fit_link
from moe_placement.executor.routing import route_layer
from moe_placement.metrics import dedup_copies


@st.composite
def routed_tokens(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    nodes = draw(st.integers(1, 3))
    gpn = draw(st.integers(1, 3))
    G = nodes * gpn
    spg = draw(st.integers(1, 3))
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, min(3, G * spg)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    home = rng.integers(0, G, size=n)
    slots = (
        np.stack([rng.choice(G * spg, size=k, replace=False) for _ in range(n)])
        if n
        else np.zeros((0, k))
    )
    return home, slots.astype(np.int64), G, gpn, spg


@settings(max_examples=60, deadline=None)
@given(routed_tokens())
def test_moved_rows_equal_evaluator_copies(
    case: tuple[np.ndarray, np.ndarray, int, int, int],
) -> None:
    home, slots, G, gpn, spg = case
    weights = np.ones(slots.shape, dtype=np.float32)
    routing = route_layer(home, slots, weights, G, gpn, spg)
    expected = dedup_copies(home, slots // spg, G, gpn)
    assert np.array_equal(routing.sent_copies, (expected.nvlink + expected.nic).astype(np.int64))
    # Every send has a matching receive, and every (token, k) is computed exactly once.
    for r, lay in enumerate(routing.ranks):
        assert lay.n_home == int((home == r).sum())
        for p in range(G):
            assert routing.ranks[p].d1_recv_counts[r] == lay.d1_send_counts[p]
            assert routing.ranks[p].d2_recv_counts[r] == lay.d2_send_counts[p]
        assert lay.comp_rows.size == int(((slots // spg) == r).sum())
        assert lay.comp_rows.size == 0 or lay.comp_rows.max() < lay.n_work
        assert lay.d2_send_idx.size == 0 or lay.d2_send_idx.max() < lay.n_r1
    assert routing.stage2 == any(lay.has_stage2 for lay in routing.ranks)


def test_single_node_has_no_forwarding() -> None:
    rng = np.random.default_rng(0)
    home = rng.integers(0, 4, size=64)
    slots = np.stack([rng.choice(8, size=2, replace=False) for _ in range(64)])
    routing = route_layer(home, slots, np.ones((64, 2), np.float32), 4, 4, 2)
    assert not routing.stage2


def test_fit_link_recovers_bandwidth_and_latency() -> None:
    nbytes = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
    times = 50.0 + nbytes / (2.5 * 1e3)
    fit = fit_link(nbytes, times)
    assert fit.latency_us == pytest.approx(50.0, rel=1e-6)
    assert fit.gbytes_per_s == pytest.approx(2.5, rel=1e-6)
    with pytest.raises(PlacementError):
        fit_link(np.array([1.0]), np.array([1.0]))


def test_fit_compute_recovers_roofline() -> None:
    flops = np.array([1e6, 1e7, 1e8, 1e9])
    wbytes = np.array([4e5, 4e5, 8e5, 8e5])
    peak, mem = 2e4, 1e3  # FLOP/us and bytes/us
    times = np.maximum(flops / peak, wbytes / mem)
    fit = fit_compute(flops, wbytes, times)
    for f, b, t in zip(flops, wbytes, times, strict=True):
        assert fit.predict_us(f, b) == pytest.approx(t, rel=1e-6)


def test_calibrated_spec_round_trips(tmp_path: object) -> None:
    from pathlib import Path

    from moe_placement.cluster import load_cluster
    from moe_placement.executor.calibrate import Calibration, save_calibrated

    link = fit_link(np.array([1e3, 1e6]), np.array([60.0, 1060.0]))
    comp = fit_compute(np.array([1e6, 1e8]), np.array([1e5, 1e5]), np.array([100.0, 10000.0]))
    spec = calibrated_spec(link, comp, world=4, device="cpu", memory_gib=4.0)
    path = Path(str(tmp_path)) / "cal.yaml"
    save_calibrated(Calibration(spec, link, comp, 128, 64, "float32"), str(path))
    loaded = load_cluster(str(path))
    assert loaded.num_gpus == 4
    assert loaded.nvlink_effective_gbytes_per_s == pytest.approx(link.gbytes_per_s)
    assert loaded.nvlink_latency_us == pytest.approx(link.latency_us)
    assert loaded.gpu.bf16_tflops == pytest.approx(comp.tflops)
