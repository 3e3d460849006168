"""The finish window (``simulate_uniform(finish_window=...)``, ``placement simulate --finish-window``):
flows that finish within a share of the simulated time end in one event. Checked against the exact
event simulation: within the stated bound on every algorithm and preset, fewer events, the exact
simulation unchanged by the option's plumbing, and bad values refused with one line."""

from __future__ import annotations

import json
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
from moe_placement.simulator.engine import FINISH_TOL
from moe_placement.simulator.moe import (
    COARSE_FINISH_WINDOW,
    FINISH_WINDOW_ERROR_BOUND,
    MAX_FINISH_WINDOW,
    PLAN_WINDOW_LAYER_BOUND,
)


def _uniform(preset: str, gpus: int, algo: str, **extra: object) -> dict:  # type: ignore[type-arg]
    low_latency = algo.startswith("deepep-ll")
    gpn = 4 if preset == "gb200-nvl72" else 8
    return simulate_uniform(
        load_cluster(preset).with_counts(gpus, gpn),
        tokens=128 if low_latency else 512,
        node_limit=None if low_latency else 4,
        algo=algo,
        num_experts=256,
        **extra,  # type: ignore[arg-type]
    )


def _check_window(preset: str, gpus: int, algo: str) -> None:
    exact = _uniform(preset, gpus, algo)
    windowed = _uniform(preset, gpus, algo, finish_window=COARSE_FINISH_WINDOW)
    for phase in ("dispatch", "combine"):
        error = windowed[f"{phase}_us"] / exact[f"{phase}_us"] - 1
        assert abs(error) <= FINISH_WINDOW_ERROR_BOUND, (phase, error)
        # every flow still ends: the same bytes leave each GPU
        for kind in ("nvlink_bytes_sent", "nic_bytes_sent"):
            assert windowed[phase][kind] == pytest.approx(exact[phase][kind], rel=1e-9, abs=1e-3)
    # fewer events; the relay may cut its forwarding into other pieces as the arrivals batch
    assert windowed["events"] < exact["events"]
    assert windowed["finish_window"] == COARSE_FINISH_WINDOW and exact["finish_window"] is None


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("preset", ["h800-mpft", "gb200-nvl72"])
def test_windowed_within_its_stated_bound_at_16_gpus(preset: str, algo: str) -> None:
    _check_window(preset, 16, algo)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("preset", ["h100-multirail", "b200-multirail"])
def test_windowed_within_its_stated_bound_at_64_gpus(preset: str, algo: str) -> None:
    _check_window(preset, 64, algo)


def test_the_exact_tolerance_as_a_window_is_the_exact_simulation() -> None:
    """The window is the exact simulation's own tolerance by default: passing that tolerance gives
    the very same run (the option's plumbing changes nothing)."""
    exact = _uniform("h800-mpft", 32, "deepep")
    same = _uniform("h800-mpft", 32, "deepep", finish_window=FINISH_TOL)
    for key in ("dispatch_us", "combine_us", "events", "recomputes", "flows"):
        assert same[key] == exact[key], key


def test_a_wider_window_plays_fewer_events_and_the_same_ones_twice() -> None:
    runs = [_uniform("h800-mpft", 32, "deepep", finish_window=w) for w in (1e-4, 1e-3, 1e-2)]
    events = [r["events"] for r in runs]
    assert events[0] > events[1] > events[2] > 0
    again = _uniform("h800-mpft", 32, "deepep", finish_window=1e-3)
    for key in ("dispatch_us", "combine_us", "events", "recomputes", "flows"):
        assert again[key] == runs[1][key], key


@pytest.mark.parametrize("window", [0.0, -1e-3, MAX_FINISH_WINDOW * 2, float("nan")])
def test_a_window_out_of_range_is_refused(window: float) -> None:
    with pytest.raises(PlacementError, match="finish window"):
        _uniform("h800-mpft", 16, "deepep", finish_window=window)


def test_a_window_needs_the_compiled_event_loop() -> None:
    with pytest.raises(PlacementError, match="fast"):
        _uniform("h800-mpft", 16, "deepep", finish_window=1e-3, fast=True)
    with pytest.raises(PlacementError, match="simpy"):
        _uniform("h800-mpft", 16, "deepep", finish_window=1e-3, event_loop="simpy")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("placement")), "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


_UNIFORM = ("--traffic", "uniform", "--gpus", "16", "--tokens", "256", "--node-limit", "4")


def test_cli_finish_window_in_json_and_text() -> None:
    out = _cli(*_UNIFORM, "--finish-window", "3e-3", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["finish_window"] == 3e-3 and res["events"] > 0
    text = _cli(*_UNIFORM, "--finish-window", "3e-3")
    assert text.returncode == 0, text.stderr
    assert "finishes batched within 0.003 of the simulated time" in text.stdout


@pytest.mark.parametrize(
    "extra",
    [
        ("--finish-window", "0.5"),
        ("--finish-window", "0"),
        ("--finish-window", "1e-3", "--fast"),
        ("--finish-window", "1e-3", "--event-loop", "simpy"),
    ],
)
def test_cli_refuses_a_bad_window_with_one_line(extra: tuple[str, ...]) -> None:
    out = _cli(*_UNIFORM, *extra)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("algo", ["deepep", "direct", "deepep-ll", "2dh"])
def test_a_plan_windowed_within_its_stated_bounds(tiny_trace: Path, algo: str) -> None:
    cluster = load_cluster("h800-mpft").with_counts(16, 8)
    plan = Plan(16, 8, 1, np.tile(np.arange(16), (4, 1)), provenance=Provenance("round-robin"))
    workload = load_workload(str(tiny_trace), 16, progress=False)
    exact = simulate_moe(plan, cluster, workload, algo=algo, progress=False)
    windowed = simulate_moe(
        plan, cluster, workload, algo=algo, progress=False, finish_window=COARSE_FINISH_WINDOW
    )
    assert abs(windowed.total_us / exact.total_us - 1) <= FINISH_WINDOW_ERROR_BOUND
    for w_row, e_row in zip(windowed.per_layer, exact.per_layer, strict=True):
        assert abs(w_row["layer_us"] / e_row["layer_us"] - 1) <= PLAN_WINDOW_LAYER_BOUND
    assert windowed.config["finish_window"] == COARSE_FINISH_WINDOW
    assert 0 < windowed.stats["events"] < exact.stats["events"]


def test_a_window_plays_layers_without_overlap(tiny_trace: Path) -> None:
    cluster = load_cluster("h800-mpft").with_counts(8, 4)
    plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance("round-robin"))
    workload = load_workload(str(tiny_trace), 8, progress=False)
    with pytest.raises(PlacementError, match="compiled event loop"):
        simulate_moe(plan, cluster, workload, overlap="two-batch", finish_window=1e-3)


def test_cli_refuses_a_window_with_overlap() -> None:
    out = _cli(
        "--trace",
        "t.parquet",
        "--plan",
        "p.json",
        "--overlap",
        "two-batch",
        "--finish-window",
        "1e-3",
    )
    assert out.returncode == 2
    assert "--finish-window plays layers without overlap" in out.stderr


def test_only_a_window_fills_every_class_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole refill (an event that moves many classes) is the windowed path's alone: the exact
    simulation always refills locally, so its results stay the same bit for bit."""
    from moe_placement.simulator import moe

    seen: list[int] = []
    play = moe.play_phases

    def counting(*args: object, **kwargs: object) -> tuple[object, object]:
        outcomes, stats = play(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(stats.whole_refills)
        return outcomes, stats

    monkeypatch.setattr(moe, "play_phases", counting)
    _uniform("h800-mpft", 32, "deepep")
    _uniform("h800-mpft", 32, "deepep", finish_window=COARSE_FINISH_WINDOW)
    assert seen[0] == 0 and seen[1] > 0
