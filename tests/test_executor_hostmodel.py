"""The executor's host-sharing model (CPU ranks on shared cores): makespan, fits, sidecar, prediction.
Pure NumPy, no workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.errors import PlacementError
from moe_placement.executor.calibrate import (
    CalibrationSamples,
    host_a2a_patterns,
    host_gemm_patterns,
)
from moe_placement.executor.driver import Measurement, pool_measurements
from moe_placement.executor.hostmodel import (
    HostModel,
    fit_host_comm,
    fit_host_compute,
    load_host_model,
    makespan_us,
    save_host_model,
    sharing_rate,
)
from moe_placement.timing import StepTime

MODEL = HostModel(
    cores=2.0,
    external_threads=0.5,
    expert_us=40.0,
    us_per_mflop=2.0,
    compute_fixed_us=150.0,
    comm_latency_us=800.0,
    comm_us_per_kbyte=0.3,
    thrash_exponent=1.5,
    compute_fit_error=0.1,
    comm_fit_error=0.2,
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0.0, 1e5), min_size=1, max_size=8),
    st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    st.sampled_from([0.0, 1.0, 3.0]),
    st.sampled_from([1.0, 1.5, 2.0]),
)
def test_makespan_between_the_busiest_rank_and_the_shared_total(
    work: list[float], cores: float, ext: float, gamma: float
) -> None:
    w = np.array(work)
    t = makespan_us(w, cores, ext, gamma)
    # No rank runs faster than alone on a core, and the ranks together get at most `cores` worth
    # (less with other jobs or thrashing).
    assert t >= w.max() * (1 - 1e-9) / sharing_rate(1, cores, ext, gamma)
    assert t >= w.sum() / cores * (1 - 1e-9)
    # Never slower than running them all at the slowest sharing rate.
    assert t <= w.max() / sharing_rate(w.size, cores, ext, gamma) * (1 + 1e-9) + 1e-9
    # Homogeneous: twice the work takes twice as long.
    assert makespan_us(2 * w, cores, ext, gamma) == pytest.approx(2 * t, rel=1e-9, abs=1e-9)


def test_makespan_on_two_cores() -> None:
    # One rank alone: its own work; two on two idle cores: in parallel; four equal: twice one.
    assert makespan_us(np.array([1000.0, 0, 0, 0]), 2, 0) == pytest.approx(1000.0)
    assert makespan_us(np.array([1000.0, 1000.0]), 2, 0) == pytest.approx(1000.0)
    assert makespan_us(np.array([1000.0] * 4), 2, 0) == pytest.approx(2000.0)
    # The imbalanced plan is far less than 2.8x slower than the balanced one with the same total.
    bal = makespan_us(np.array([2048.0] * 4), 2, 0)
    imb = makespan_us(np.array([221.0, 331.0, 5268.0, 2372.0]), 2, 0)  # layer 3, bundled trace
    assert imb / bal < 1.4


def test_fit_host_compute_recovers_known_parameters() -> None:
    pats = host_gemm_patterns(4)
    experts = np.array([[e for e, _ in p] for p in pats], float)
    flops = np.array([[e * t * 6.0 * 256 * 128 for e, t in p] for p in pats])
    times = np.array([MODEL.compute_us(e, f) for e, f in zip(experts, flops, strict=True)])
    fit = fit_host_compute(experts, flops, times, max_cores=2.0)
    assert fit["fit_error"] < 0.01
    # Cores, external load and exponent trade off against each other; the speed curve they give is
    # what the data pins down.
    for n in range(1, 5):
        got = sharing_rate(n, fit["cores"], fit["external_threads"], fit["thrash_exponent"])
        want = sharing_rate(n, MODEL.cores, MODEL.external_threads, MODEL.thrash_exponent)
        assert got == pytest.approx(want, rel=0.1)
    assert fit["us_per_mflop"] == pytest.approx(MODEL.us_per_mflop, rel=0.1)
    assert fit["expert_us"] == pytest.approx(MODEL.expert_us, rel=0.1)
    assert fit["compute_fixed_us"] == pytest.approx(MODEL.compute_fixed_us, rel=0.2, abs=20)
    with pytest.raises(PlacementError):
        fit_host_compute(experts[:2], flops[:2], times[:2], 2.0)


def test_fit_host_comm_recovers_latency_and_cost() -> None:
    mats = host_a2a_patterns(4)
    for rows in (8, 256, 2048):
        m = np.full((4, 4), rows)
        np.fill_diagonal(m, 0)
        mats.append(m)
    rank_bytes = np.array([(m.sum(0) + m.sum(1)) * 256 * 4.0 for m in mats])
    times = np.array([MODEL.comm_us(b) for b in rank_bytes])
    lat, per_kbyte, err = fit_host_comm(rank_bytes, times, 2.0, 0.5, 1.5)
    assert lat == pytest.approx(MODEL.comm_latency_us, rel=1e-6)
    assert per_kbyte == pytest.approx(MODEL.comm_us_per_kbyte, rel=1e-6)
    assert err < 1e-6
    with pytest.raises(PlacementError):
        fit_host_comm(rank_bytes[:1], times[:1], 2.0, 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_fit_host_comm_pools_heavy_tailed_repetitions(seed: int) -> None:
    # Gloo calls on shared cores: most repetitions near the model, a third stalled by a few ms (a
    # rank descheduled). The median regression over every repetition recovers the model; the medians
    # of a point's few repetitions alone would scatter.
    rng = np.random.default_rng(seed)
    rows = (16, 64, 128, 256, 512, 1024)
    mats = []
    for r in rows:
        m = np.full((4, 4), r)
        np.fill_diagonal(m, 0)
        mats.append(m)
    rank_bytes = np.array([(m.sum(0) + m.sum(1)) * 256 * 4.0 for m in mats])
    clean = np.array([MODEL.comm_us(b) for b in rank_bytes])
    reps = 16
    stall = (rng.random((len(rows), reps)) < 0.3) * rng.uniform(1000, 4000, (len(rows), reps))
    times = clean[:, None] * rng.uniform(0.97, 1.03, (len(rows), reps)) + stall
    lat, per_kbyte, _ = fit_host_comm(rank_bytes, times, 2.0, 0.5, 1.5)
    fitted = HostModel(
        **{**MODEL.to_dict(), "comm_latency_us": lat, "comm_us_per_kbyte": per_kbyte}
    )
    got = np.array([fitted.comm_us(b) for b in rank_bytes])
    assert np.all(np.abs(got / clean - 1) < 0.25)


def test_calibration_samples_and_measurements_pool() -> None:
    a = CalibrationSamples(np.ones((3, 2)), np.ones((2, 2)), np.ones((4, 2)), np.ones((5, 2)))
    b = CalibrationSamples(np.zeros((3, 3)), np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((5, 3)))
    m = a.merge(b)
    assert m.a2a_us.shape == (3, 5) and m.host_a2a_us is not None and m.host_a2a_us.shape == (5, 5)
    assert CalibrationSamples(np.ones((3, 2)), np.ones((2, 2))).merge(b).host_gemm_us is None
    raw1 = np.full((2, 1, 4), 1000.0)  # [reps, layers, phases]
    raw2 = np.full((3, 1, 4), 4000.0)
    nothing = StepTime.of([], "measured")
    parts = [
        Measurement(
            nothing,
            np.zeros(0),
            None,
            [],
            [],
            0,
            slowest_us=raw1,
            overlap_raw_us=np.full((2, 1), 10.0),
        ),
        Measurement(
            nothing,
            np.zeros(0),
            None,
            [],
            [],
            0,
            slowest_us=raw2,
            overlap_raw_us=np.full((3, 1), 20.0),
        ),
    ]
    pooled = pool_measurements(parts)
    [t] = pooled.step.layers
    # trimmed mean of all 5 reps (10% of 5 rounds down to none dropped): (2 x 1000 + 3 x 4000) / 5
    assert t.compute_us == pytest.approx(2800.0) and t.layer_us == pytest.approx(8400.0)
    assert pooled.step.source == "measured" and pooled.notify_us[0] == pytest.approx(2800.0)
    assert pooled.overlap_us is not None and pooled.overlap_us[0] == pytest.approx(16.0)
    with pytest.raises(PlacementError):
        pool_measurements([Measurement(nothing, np.zeros(0), None, [], [], 0)])


def test_host_layer_time_is_sequential_and_chunks_pay_fixed_costs() -> None:
    experts, flops = np.array([2.0, 1.0, 0.0, 3.0]), np.array([4e6, 1e6, 0.0, 6e6])
    d_bytes, c_bytes = np.full(4, 2048.0), np.full(4, 1024.0)
    one = MODEL.layer_time(experts, flops, d_bytes, c_bytes, stages=2)
    assert one.dispatch_us == pytest.approx(MODEL.comm_us(d_bytes, 2))
    assert one.combine_us == pytest.approx(MODEL.comm_us(c_bytes, 2))
    assert one.compute_us == pytest.approx(MODEL.compute_us(experts, flops))
    assert one.layer_us == pytest.approx(one.dispatch_us + one.compute_us + one.combine_us)
    four = MODEL.layer_time(experts, flops, d_bytes, c_bytes, stages=2, pieces=4)
    # three more pieces: three more latencies per stage in each phase, three more fixed compute costs
    assert four.dispatch_us - one.dispatch_us == pytest.approx(3 * 2 * MODEL.comm_latency_us)
    assert four.combine_us - one.combine_us == pytest.approx(3 * 2 * MODEL.comm_latency_us)
    assert four.compute_us > one.compute_us + 3 * MODEL.compute_fixed_us


def test_host_model_sidecar_round_trips(tmp_path: Path) -> None:
    spec = tmp_path / "cal.yaml"
    assert load_host_model(str(spec)) is None  # a preset or hand-written spec has none
    path = save_host_model(MODEL, str(spec))
    assert path.name == "cal.yaml.host.json"
    assert load_host_model(str(spec)) == MODEL
    path.write_text("[1, 2]")
    with pytest.raises(PlacementError):
        load_host_model(str(spec))


def test_host_prediction_follows_sharing_not_the_busiest_rank(tmp_path: Path) -> None:
    """On a trace, the contiguous plan's predicted compute exceeds the balanced plan's by far less than
    its max/mean load (the old GPU-per-rank prediction); the overlap prediction is finite."""
    from moe_placement.cli.main import main
    from moe_placement.executor.calibrate import ComputeFit, LinkFit, calibrated_spec
    from moe_placement.executor.driver import ExecConfig, load_replay_input
    from moe_placement.executor.predict import predict_layers
    from moe_placement.plan import Plan

    trace = str(tmp_path / "t.parquet")
    assert (
        main(
            [
                "synth", "--out", trace, "--layers", "2", "--experts", "16", "--top-k", "2",
                "--tokens", "2048", "--seed", "3", "--hidden", "128", "--intermediate", "64", "--json",
            ]
        )
        == 0
    )  # fmt: skip
    plans = {}
    for solver in ("contiguous", "greedy"):
        out = str(tmp_path / f"{solver}.json")
        args = ["solve", "--trace", trace, "--gpus", "4", "--gpus-per-node", "4"]
        assert main([*args, "--solver", solver, "--out", out, "--json"]) == 0
        plans[solver] = Plan.load(out)
    data = load_replay_input(trace, 4, ExecConfig(workers=4))
    spec = calibrated_spec(
        LinkFit(500.0, 1.0, []), ComputeFit(0.05, 10.0, []), world=4, device="cpu", memory_gib=1.0
    )
    pred = {}
    for name, plan in plans.items():
        step = predict_layers(plan, spec, data.workload, host=MODEL)
        assert step.source.startswith("host model") and len(step.layers) == plan.num_layers
        for t in step.layers:
            assert t.layer_us == pytest.approx(t.dispatch_us + t.compute_us + t.combine_us)
            assert t.exposed_comm_us == pytest.approx(t.dispatch_us + t.combine_us)
            assert t.dispatch_us >= MODEL.comm_latency_us
        over = predict_layers(plan, spec, data.workload, host=MODEL, overlap="chunked", chunks=4)
        assert all(o.layer_us >= t.layer_us for o, t in zip(over.layers, step.layers, strict=True))
        pred[name] = step
    for layer in range(2):
        ratio = (
            pred["contiguous"].layers[layer].compute_us / pred["greedy"].layers[layer].compute_us
        )
        assert 0.8 <= ratio < 2.0
