"""The fast paths of the simulator: the analytical phase estimate against the event simulation, the
compiled uniform routing against its numpy reference, the fast path of simulate_moe, the flat NVLink
domain of GB200 NVL72, and the message of a cold kernel compile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.commands._common import load_workload
from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.plan import Plan, Provenance
from moe_placement.simulator import simulate_moe, simulate_uniform
from moe_placement.simulator.collectives import ALGOS
from moe_placement.simulator.fast import FAST_ERROR_BOUND
from moe_placement.simulator.routing import uniform_routing


def _fast_and_exact(preset: str, gpus: int, algo: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    cluster = load_cluster(preset).with_counts(gpus, 8)
    low_latency = algo.startswith("deepep-ll")
    kw = {
        "tokens": 128 if low_latency else 256,
        "node_limit": None if low_latency else 4,
        "algo": algo,
        "num_experts": 256,
    }
    exact = simulate_uniform(cluster, **kw)  # type: ignore[arg-type]
    fast = simulate_uniform(cluster, fast=True, **kw)  # type: ignore[arg-type]
    return fast, exact


def _check_within_bound(fast: dict, exact: dict) -> None:  # type: ignore[type-arg]
    for phase in ("dispatch", "combine"):
        error = fast[f"{phase}_us"] / exact[f"{phase}_us"] - 1
        assert abs(error) <= FAST_ERROR_BOUND, (phase, fast[f"{phase}_us"], exact[f"{phase}_us"])
        # the same bytes leave each GPU over NVLink and over its NIC, whichever path computed them
        for kind in ("nvlink_bytes_sent", "nic_bytes_sent"):
            np.testing.assert_allclose(fast[phase][kind], exact[phase][kind], rtol=1e-9, atol=1e-3)
        # both share one lower bound: the busiest link's bytes at full capacity
        assert fast[phase]["lower_bound_us"] == pytest.approx(exact[phase]["lower_bound_us"])
    assert fast["events"] == 0 and exact["events"] > 0


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("preset", ["h800-mpft", "h100-multirail"])
def test_fast_path_within_its_stated_bound_at_16_gpus(preset: str, algo: str) -> None:
    _check_within_bound(*_fast_and_exact(preset, 16, algo))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("preset", ["h800-mpft", "h100-multirail"])
def test_fast_path_within_its_stated_bound_at_32_gpus(preset: str, algo: str) -> None:
    _check_within_bound(*_fast_and_exact(preset, 32, algo))


def test_fast_path_refuses_ecmp() -> None:
    with pytest.raises(PlacementError):
        simulate_uniform(load_cluster("h100-multirail"), tokens=64, routing="ecmp", fast=True)


@pytest.mark.parametrize(
    ("gpus", "per_node", "tokens", "experts", "node_limit", "top_k"),
    [
        (16, 8, 512, 256, 2, 8),
        (32, 8, 256, 256, 4, 8),
        (8, 8, 300, 64, None, 8),
        (24, 4, 200, 48, 3, 6),
    ],
)
def test_compiled_routing_counts_exactly_as_numpy(
    gpus: int, per_node: int, tokens: int, experts: int, node_limit: int | None, top_k: int
) -> None:
    kw = {"tokens": tokens, "top_k": top_k, "num_experts": experts, "node_limit": node_limit}
    compiled = uniform_routing(gpus, per_node, rng=np.random.default_rng(7), **kw)  # type: ignore[arg-type]
    reference = uniform_routing(
        gpus,
        per_node,
        rng=np.random.default_rng(7),
        compiled=False,
        **kw,  # type: ignore[arg-type]
    )
    for got, want in zip(compiled, reference, strict=True):
        np.testing.assert_array_equal(got, want)
    pairs, _, _, node_pairs, expert_pairs = compiled
    assert expert_pairs.sum() == gpus * tokens * top_k  # every selection counted once
    assert pairs.sum() <= expert_pairs.sum() and node_pairs.sum() <= pairs.sum()


def test_nvl72_all_to_all_barely_grows_from_ep8_to_ep64() -> None:
    # GB200 NVL72 is one flat NVLink domain: each GPU sends (ep - 1) / ep of its copies whatever the EP
    # size, so the time barely grows (TensorRT-LLM's published NVL72 all-to-all latencies do the same)
    rack = load_cluster("gb200-nvl72")
    times = {}
    for ep in (8, 64):
        res = simulate_uniform(rack.with_counts(ep, ep), tokens=128, algo="deepep-ll", fast=True)
        assert sum(res["dispatch"]["nic_bytes_sent"]) == 0
        times[ep] = res["dispatch_us"] + res["combine_us"]
    assert times[8] < times[64] < times[8] * 1.25
    # the same EP64 across eight 8-GPU B200 nodes leaves NVLink and is several times slower
    b200 = load_cluster("b200-multirail").with_counts(64, 8)
    res = simulate_uniform(b200, tokens=128, algo="deepep-ll", fast=True)
    assert res["dispatch_us"] + res["combine_us"] > 3 * times[64]


@pytest.mark.slow
def test_cold_compile_says_so_on_stderr_once(tmp_path: object) -> None:
    code = (
        "from moe_placement.cluster import load_cluster\n"
        "from moe_placement.simulator import simulate_uniform\n"
        "simulate_uniform(load_cluster('h800-mpft').with_counts(16, 8), tokens=32, node_limit=2)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count("compiling simulator kernels (once, ~") == 1
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "compiling simulator kernels" not in warm.stderr


# The fast path of simulate_moe: each phase from its busiest link with a barrier between phases, so it
# misses what the event simulation overlaps across skewed GPUs; stated bound per layer (docs/simulator.md).
MOE_FAST_BOUND = 0.20


@pytest.mark.parametrize("algo", ["deepep", "direct", "deepep-ll"])
def test_moe_fast_path_within_its_stated_bound(tiny_trace: Path, algo: str) -> None:
    cluster = load_cluster("h800-mpft").with_counts(8, 4)
    plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance("round-robin"))
    workload = load_workload(str(tiny_trace), 8, progress=False)
    exact = simulate_moe(plan, cluster, workload, algo=algo, progress=False)
    fast = simulate_moe(plan, cluster, workload, algo=algo, progress=False, fast=True)
    assert fast.stats["events"] == 0 and exact.stats["events"] > 0
    for f_row, e_row in zip(fast.per_layer, exact.per_layer, strict=True):
        assert abs(f_row["layer_us"] / e_row["layer_us"] - 1) <= MOE_FAST_BOUND, (f_row, e_row)
        assert f_row["compute_us"] == pytest.approx(e_row["compute_us"])
    np.testing.assert_allclose(
        fast.per_gpu_bytes("nic-tx"), exact.per_gpu_bytes("nic-tx"), rtol=1e-9, atol=1e-3
    )
    with pytest.raises(PlacementError):
        simulate_moe(plan, cluster, workload, overlap="two-batch", fast=True, progress=False)
