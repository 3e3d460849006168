"""`--algo hybrid-ep` against the figures DeepEP publishes for NVIDIA's Hybrid-EP, and its SM term.

The published points are the "kernel only" bandwidths of DeepEP's ``docs/README_Hybrid-EP.md`` (H100: IB
bandwidth at 16-64 ranks and 4/8/16 SMs; B200 and GB200: NVLink bandwidth at 8-36 ranks and 16/32 SMs):
4096 tokens per rank, hidden 7168, top-8, 8 experts per rank, uniform random routing, counted as
``tests/test_hybrid_ep.py`` counts them (token bytes only: received token copies per rank for NVL,
(token, node) pairs with its own node for IB). One set of constants per preset and GPU type (presets
``h100-multirail``, ``gb200-nvl72``, ``b200-multirail`` unchanged; ``GPUSpec.sm_copy_gbytes_per_s`` and
``sm_message_us``), nothing per point. docs/simulator.md ("Hybrid-EP") has the table and the reasons.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.commands._common import load_workload
from moe_placement.cli.main import main
from moe_placement.cluster import ClusterSpec, preset
from moe_placement.plan import Plan, Provenance
from moe_placement.simulator import simulate_moe, simulate_uniform
from moe_placement.simulator.collectives import build_phase, hybrid_ep_prob_bytes

FP8 = 1.0 + 4.0 / 128.0
BF16 = 2.0
HIDDEN = 7168

# (preset, ranks, SMs) -> published kernel-only GB/s: dispatch FP8, dispatch BF16, combine
PUBLISHED: dict[tuple[str, int, int], tuple[float, float, float]] = {
    ("h100-multirail", 16, 4): (34.00, 44.40, 52.00),
    ("h100-multirail", 16, 8): (62.00, 76.80, 68.00),
    ("h100-multirail", 16, 16): (68.48, 71.71, 62.95),
    ("h100-multirail", 32, 4): (38.50, 52.60, 51.00),
    ("h100-multirail", 32, 8): (51.30, 54.50, 56.40),
    ("h100-multirail", 32, 16): (55.35, 57.69, 57.46),
    ("h100-multirail", 64, 4): (37.50, 48.00, 46.00),
    ("h100-multirail", 64, 8): (46.63, 50.55, 51.03),
    ("h100-multirail", 64, 16): (46.52, 49.97, 49.77),
    ("b200-multirail", 8, 16): (599.27, 734.95, 673.84),
    ("gb200-nvl72", 8, 16): (620.98, 750.15, 684.27),
    ("gb200-nvl72", 8, 32): (713.98, 764.03, 737.13),
    ("gb200-nvl72", 16, 16): (577.17, 661.93, 600.75),
    ("gb200-nvl72", 16, 32): (650.48, 706.95, 666.26),
    ("gb200-nvl72", 24, 16): (360.12, 637.80, 565.53),
    ("gb200-nvl72", 24, 32): (577.96, 665.97, 639.80),
    ("gb200-nvl72", 32, 16): (286.93, 629.79, 547.25),
    ("gb200-nvl72", 32, 32): (538.86, 642.23, 605.15),
    ("gb200-nvl72", 36, 16): (260.53, 612.85, 543.27),
    ("gb200-nvl72", 36, 32): (489.27, 632.31, 596.99),
}
# Stated bound on every point used (relative error of the simulated bandwidth)
BOUND = 0.40
# ... and a tighter one where the fabric, not the SMs, binds in both model and measurement: H100 at 4-8
# nodes with >= 8 SMs (the NICs) and the BF16 dispatch of B200/GB200 (NVLink)
TIGHT_BOUND = 0.12
# Not followed (and not in BOUND): GB200 FP8 dispatch with 16 SMs at 24-36 ranks - the measured copy
# cost per token grows with the rank count there, which the model has no term for (it is faster)
NOT_FOLLOWED = {("gb200-nvl72", 24, 16, 0), ("gb200-nvl72", 32, 16, 0), ("gb200-nvl72", 36, 16, 0)}


def _cluster(name: str, ranks: int, sms: int) -> ClusterSpec:
    gpus_per_node = ranks if name == "gb200-nvl72" else 8  # NVL72: one NVLink domain of `ranks`
    return dataclasses.replace(preset(name).with_counts(ranks, gpus_per_node), comm_sms=sms)


def _simulated(name: str, ranks: int, sms: int, *, fast: bool) -> tuple[float, float, float]:
    """Simulated GB/s counted as Hybrid-EP's test counts them: dispatch FP8, dispatch BF16, combine."""
    cluster = _cluster(name, ranks, sms)
    key = "rdma" if cluster.num_nodes > 1 else "nvl"
    out = []
    for dispatch_bytes in (FP8, BF16):
        res = simulate_uniform(
            cluster,
            tokens=4096,
            hidden=HIDDEN,
            top_k=8,
            num_experts=8 * ranks,
            dispatch_bytes=dispatch_bytes,
            combine_bytes=BF16,
            algo="hybrid-ep",
            fast=fast,
        )
        out.append(
            res[f"dispatch_{key}_gbytes_per_s"]
        )  # the token's bytes, not the probability row
    out.append(res[f"combine_{key}_gbytes_per_s"])
    return out[0], out[1], out[2]


def _check_points(points: list[tuple[str, int, int]], *, fast: bool) -> None:
    for name, ranks, sms in points:
        simulated = _simulated(name, ranks, sms, fast=fast)
        for i, (sim, pub) in enumerate(zip(simulated, PUBLISHED[(name, ranks, sms)], strict=True)):
            err = sim / pub - 1
            where = f"{name} {ranks} ranks {sms} SMs {('FP8', 'BF16', 'combine')[i]}: {sim:.1f} vs {pub}"
            if (name, ranks, sms, i) in NOT_FOLLOWED:
                assert err > BOUND, f"now followed, update the docs: {where}"
                continue
            assert abs(err) <= BOUND, where
            tight = (name == "h100-multirail" and ranks >= 32 and sms >= 8) or (
                name != "h100-multirail" and i == 1
            )
            if tight:
                assert abs(err) <= TIGHT_BOUND, where


def test_published_points_small() -> None:
    """The points at 8-16 ranks, on the event simulation."""
    _check_points(
        [p for p in PUBLISHED if p[1] <= 16 and p[0] != "h100-multirail"]
        + [("h100-multirail", 16, 4), ("h100-multirail", 16, 8)],
        fast=False,
    )


@pytest.mark.slow
def test_every_published_point_within_bound() -> None:
    """Every point of the table, on the fast path (within its stated bound of the event simulation)."""
    _check_points(list(PUBLISHED), fast=True)


# DeepEP V2 (README "Performance": 8192 tokens per rank, hidden 7168, top-8 of 256 experts, FP8 dispatch,
# BF16 combine; "bottleneck" bandwidth counted with local traffic, RDMA across nodes, NVLink in one):
# (preset, GPUs, SMs) -> published dispatch, combine GB/s. V2's hybrid mode moves DeepEP's hierarchical
# bytes (RDMA to the peer, NVLink fan-out), so `--algo deepep` models it where the fabric binds.
DEEPEP_V2: dict[tuple[str, int, int], tuple[float, float]] = {
    ("h100-multirail", 16, 12): (90.0, 81.0),
    ("h100-multirail", 32, 6): (61.0, 61.0),
    ("b200-multirail", 16, 12): (90.0, 91.0),
    ("b200-multirail", 8, 64): (726.0, 740.0),
    ("b200-multirail", 8, 24): (643.0, 675.0),  # V2 with its fewest SMs: SM-bound, not followed
}


def test_deepep_v2_fabric_bound_points() -> None:
    """V2's points at the fabric's limit within TIGHT_BOUND (fast path); its 24-SM NVLink point, bound
    by V2's own SM count (no term for V2's kernels), comes out faster than published."""
    for (name, gpus, sms), published in DEEPEP_V2.items():
        res = simulate_uniform(
            preset(name).with_counts(gpus, 8),
            tokens=8192,
            hidden=HIDDEN,
            top_k=8,
            num_experts=256,
            algo="deepep",
            fast=True,
        )
        key = "rdma" if gpus > 8 else "nvl"
        simulated = (res[f"dispatch_{key}_gbytes_per_s"], res[f"combine_{key}_gbytes_per_s"])
        for sim, pub in zip(simulated, published, strict=True):
            where = f"{name} {gpus} GPUs {sms} SMs: {sim:.1f} vs {pub}"
            if sms == 24:
                assert sim / pub - 1 > TIGHT_BOUND, where
            else:
                assert abs(sim / pub - 1) <= TIGHT_BOUND, where


def test_event_simulation_matches_fast_path_on_an_sm_bound_phase() -> None:
    """One stage, SM-bound (GB200, 8 GPUs, 16 SMs, FP8 dispatch): the event simulation's phase is the
    SM link's bytes at capacity plus a path latency, as the fast path says - each phase with its own
    coefficient (dispatch and combine differ by their message sizes)."""
    cluster = _cluster("gb200-nvl72", 8, 16)
    kw: dict = dict(tokens=1024, hidden=HIDDEN, top_k=8, num_experts=64, algo="hybrid-ep")  # type: ignore[type-arg]
    exact = simulate_uniform(cluster, **kw)
    fast = simulate_uniform(cluster, fast=True, **kw)
    for phase in ("dispatch", "combine"):
        assert exact[f"{phase}_us"] == pytest.approx(fast[f"{phase}_us"], rel=0.02), phase


def _uniform(cluster: ClusterSpec, algo: str, **kw: object) -> dict:  # type: ignore[type-arg]
    args: dict = dict(tokens=512, hidden=HIDDEN, top_k=8, num_experts=8 * cluster.num_gpus)  # type: ignore[type-arg]
    args.update(kw)
    return simulate_uniform(cluster, algo=algo, **args)


def test_plentiful_sms_leave_deepeps_data_path() -> None:
    """With SMs to spare the SM links never bind: hybrid-ep's combine (no probability row) is DeepEP's,
    to the last digit, on the event simulation; the plans move the same bytes."""
    cluster = dataclasses.replace(preset("h100-multirail").with_counts(16, 8), comm_sms=100_000)
    hybrid = _uniform(cluster, "hybrid-ep")
    deepep = _uniform(cluster, "deepep")
    assert hybrid["combine_us"] == pytest.approx(deepep["combine_us"], rel=1e-9)
    assert hybrid["combine"]["nic_bytes_sent"] == pytest.approx(deepep["combine"]["nic_bytes_sent"])
    pairs = np.full((16, 16), 3.0)
    a = build_phase(
        "hybrid-ep",
        "dispatch",
        pairs=pairs,
        nic=pairs,
        nvlink=pairs,
        bytes_per_copy=100.0,
        gpus_per_node=8,
        sm_message_bytes=50.0,
    )
    b = build_phase(
        "deepep",
        "dispatch",
        pairs=pairs,
        nic=pairs,
        nvlink=pairs,
        bytes_per_copy=100.0,
        gpus_per_node=8,
    )
    assert a.sm_coef == pytest.approx(1.5) and b.sm_coef == 0.0
    for x, y in ((a.direct, b.direct), (a.stage1, b.stage1), (a.stage2, b.stage2)):
        np.testing.assert_array_equal(x, y)


def test_few_sms_bind_at_the_sm_link() -> None:
    """With one SM the phase is bound by the SM link: its lower bound is the busiest GPU's NVLink sends
    x (1 + per-message cost / message) over one SM's rate, and doubling the SMs nearly halves it."""
    base = preset("gb200-nvl72").with_counts(8, 8)
    one = _uniform(dataclasses.replace(base, comm_sms=1), "hybrid-ep", dispatch_bytes=BF16)
    two = _uniform(dataclasses.replace(base, comm_sms=2), "hybrid-ep", dispatch_bytes=BF16)
    gpu = base.gpu
    message = HIDDEN * BF16 + hybrid_ep_prob_bytes(64, 8, 8)
    coef = 1 + gpu.sm_message_us * gpu.sm_copy_gbytes_per_s * 1e3 / message
    sm_bound_us = (
        max(one["dispatch"]["nvlink_bytes_sent"]) * coef / (gpu.sm_copy_gbytes_per_s * 1e3)
    )
    assert one["dispatch"]["lower_bound_us"] == pytest.approx(sm_bound_us, rel=1e-9)
    assert one["dispatch_us"] >= sm_bound_us
    assert two["dispatch_us"] == pytest.approx(one["dispatch_us"] / 2, rel=0.02)


def test_gpu_type_without_sm_constants_has_no_sm_term() -> None:
    """A100 has no per-SM figures: hybrid-ep is DeepEP's data path there, whatever the SM count."""
    cluster = dataclasses.replace(preset("a100-fat-tree").with_counts(16, 8), comm_sms=1)
    assert cluster.gpu.sm_copy_gbytes_per_s == 0.0
    hybrid = _uniform(cluster, "hybrid-ep", fast=True)
    deepep = _uniform(cluster, "deepep", fast=True)
    assert hybrid["combine_us"] == pytest.approx(deepep["combine_us"], rel=1e-12)


def test_cli_sms_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sms`` sets the SMs of hybrid-ep's kernels: fewer SMs, slower dispatch; 0 is refused (exit 2)."""
    common = ["simulate", "--traffic", "uniform", "--cluster", "b200-multirail", "--gpus", "8"]
    common += ["--tokens", "512", "--experts", "64", "--algo", "hybrid-ep", "--json"]
    dispatch_us = []
    for sms in ("2", "32"):
        assert main([*common, "--sms", sms]) == 0
        dispatch_us.append(json.loads(capsys.readouterr().out)["dispatch_us"])
    assert dispatch_us[0] > 2 * dispatch_us[1]
    with pytest.raises(SystemExit) as refused:
        main([*common, "--sms", "0"])
    assert refused.value.code == 2
    assert "--sms" in capsys.readouterr().err


def test_plan_simulation_runs_hybrid_ep(tiny_trace: Path) -> None:
    """On a plan, hybrid-ep plays in the event simulation (with overlap too) and on the fast path; one SM
    per GPU makes every layer's dispatch slower than 64 do; the fast path stays within its stated bound
    per layer of simulate_moe's event simulation."""
    cluster = preset("h800-mpft").with_counts(8, 4)
    plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance("round-robin"))
    workload = load_workload(str(tiny_trace), 8, progress=False)

    def run(sms: int, **kw: object) -> list[dict]:  # type: ignore[type-arg]
        spec = dataclasses.replace(cluster, comm_sms=sms)
        return simulate_moe(plan, spec, workload, algo="hybrid-ep", progress=False, **kw).per_layer  # type: ignore[arg-type]

    few, many = run(1), run(64)
    for slow, quick in zip(few, many, strict=True):
        assert slow["dispatch_us"] > quick["dispatch_us"]
    for f_row, e_row in zip(run(1, fast=True), few, strict=True):
        assert abs(f_row["layer_us"] / e_row["layer_us"] - 1) <= 0.20, (f_row, e_row)
    assert all(row["layer_us"] > 0 for row in run(4, overlap="two-batch"))
