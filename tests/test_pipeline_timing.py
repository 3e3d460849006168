"""The pipeline speaks the one timing type: a scenario's times are the simulator's StepTime, stored rows
are its fields, and regress measures the same figures as a what-if row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import evaluate
from moe_placement.pipeline.engine import (
    TIMING_ENGINE,
    layer_rows,
    quality,
    simulate_step,
    solve_plan,
)
from moe_placement.pipeline.regress import FIGURES, measure
from moe_placement.timing import TIME_KEYS
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile

CONFIG = {
    "solver": "greedy",
    "redundant": 0,
    "mode": "standard",
    "tokens_per_gpu": 512,
    "overlap": "none",
    "algo": "deepep",
    "seed": 0,
    "time_limit_s": 5.0,
}


def test_scenario_times_are_the_simulators_step(
    tiny_trace: Path, small_cluster: ClusterSpec
) -> None:
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=small_cluster.num_gpus)
    plan = solve_plan(
        wl, small_cluster, solver="greedy", redundant=0, mode="standard", time_limit_s=5.0, seed=0
    )
    step = simulate_step(
        plan, small_cluster, wl, mode="standard", algo="deepep", overlap="none", tokens_per_gpu=512
    )
    assert step.source == TIMING_ENGINE and len(step.layers) == plan.num_layers
    rows = layer_rows(step)
    assert [r["layer"] for r in rows] == list(range(plan.num_layers))
    for row, t in zip(rows, step.layers, strict=True):
        assert set(row) == {"layer", *TIME_KEYS} and row["layer_us"] == t.layer_us
    ev = evaluate(plan, small_cluster, wl, tokens_per_gpu=512)
    figures = quality(plan, ev, step)
    assert figures["max_load"] == pytest.approx(float(ev.max_load().mean()))
    assert figures["step_us"] == pytest.approx(step.moe_time_us)
    assert figures["layer_us"] == pytest.approx(step.moe_time_us / plan.num_layers)
    assert figures["worst_layer_us"] == pytest.approx(float(step.column("layer_us").max()))
    assert figures["compute_us"] == pytest.approx(float(np.mean(step.column("compute_us"))))


def test_regress_measures_the_what_if_figures(tiny_trace: Path, small_cluster: ClusterSpec) -> None:
    got = measure(str(tiny_trace), small_cluster, CONFIG)
    assert got.engine == TIMING_ENGINE and set(got.metrics) == set(FIGURES)
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=small_cluster.num_gpus)
    plan = solve_plan(
        wl, small_cluster, solver="greedy", redundant=0, mode="standard", time_limit_s=5.0, seed=0
    )
    ev = evaluate(plan, small_cluster, wl, tokens_per_gpu=512)
    assert got.metrics["max_load"] == pytest.approx(float(ev.max_load().mean()))
    assert got.metrics["max_over_mean"] == pytest.approx(float(ev.max_over_mean().mean()))
    assert got.metrics["inter_node_bytes"] == ev.summary()["inter_node_bytes"]
