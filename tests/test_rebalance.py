"""Replaying a trace under a rebalancing policy (``pipeline/rebalance.py``, ``placement rebalance``)."""

from __future__ import annotations

import numpy as np
import pytest

from moe_placement.cluster import load_cluster
from moe_placement.pipeline.rebalance import (
    Policy,
    moved_slots_per_gpu,
    replay,
    total_us,
    trace_windows,
)
from moe_placement.plan import Plan
from moe_placement.solvers import SolverConfig
from moe_placement.traces.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> list:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("rebalance") / "drift.parquet"
    generate(
        SynthConfig(num_layers=2, num_experts=8, top_k=2, num_tokens=1536, drift=1.0), path, seed=2
    )
    return trace_windows(str(path), 3, 4)


def test_moved_slots_count_received_experts_not_reordered_slots() -> None:
    old = Plan(num_gpus=2, gpus_per_node=2, slots_per_gpu=2, phy2log=np.array([[0, 1, 2, 3]]))
    swapped_within = Plan(2, 2, 2, np.array([[1, 0, 2, 3]]))
    assert moved_slots_per_gpu(old, swapped_within).tolist() == [0, 0]
    exchanged = Plan(2, 2, 2, np.array([[2, 1, 0, 3]]))
    assert moved_slots_per_gpu(old, exchanged).tolist() == [1, 1]


def test_replay_serves_every_window_and_prices_migration(windows: list) -> None:  # type: ignore[type-arg]
    cluster = load_cluster(None).with_counts(4, 2)
    config = SolverConfig(time_limit_s=1.0)
    never = replay(windows, cluster, 0, Policy(None, None), "eplb-global", config, 100)
    every = replay(windows, cluster, 0, Policy(1, None, overlap=False), "eplb-global", config, 100)
    assert [r.window for r in never] == [1, 2] == [r.window for r in every]
    assert all(r.moved_slots == 0 and r.exposed_us == 0 for r in never)
    # window 1 is served by the same first plan in both replays
    assert every[0].moe_time_us == pytest.approx(never[0].moe_time_us)
    moved = every[0]
    expert_bytes = windows[0].shape.expert_weight_bytes
    assert moved.moved_bytes == pytest.approx(moved.moved_slots * expert_bytes)
    if moved.moved_slots:  # not overlapped: all of the transfer is exposed
        assert moved.exposed_us == pytest.approx(moved.migration_us) and moved.migration_us > 0
    assert total_us(every, 100) == pytest.approx(
        sum(r.moe_time_us * 100 + r.exposed_us for r in every)
    )


def test_a_zero_move_budget_keeps_the_plan(windows: list) -> None:  # type: ignore[type-arg]
    cluster = load_cluster(None).with_counts(4, 2)
    config = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})
    rows = replay(windows, cluster, 0, Policy(1, 0), "best", config, 100)
    assert rows[0].moved_slots == 0
