"""The three dangerous defects of the hardening issue: memory that grew combinatorially with slots per GPU,
outputs that silently replaced their inputs, and NaN tolerances that switched a CI gate off."""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

import pytest

from moe_placement.cli.main import main
from moe_placement.reports.regress import compare
from moe_placement.solvers.common import _splits, improve_layout


def test_splits_never_enumerate_large_combinations() -> None:
    """C(32, 16) = 6e8 splits would take tens of GB; the single-swap neighbourhood is spg^2 + 1."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    masks = _splits(16)
    assert masks.shape == (16 * 16 + 1, 32)
    assert (masks.sum(axis=1) == 16).all()
    assert time.perf_counter() - start < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000
    # small spg keeps every split
    assert _splits(3).shape == (20, 6)


def test_improve_layout_on_one_gpu_is_a_no_op() -> None:
    held, weights = [[0, 1, 2]], [[3.0, 2.0, 1.0]]
    assert improve_layout(held, weights, 3) == (held, weights)


@pytest.mark.parametrize(("gpus", "per_node", "redundant"), [(1, 1, 0), (2, 2, 16), (4, 4, 48)])
def test_many_slots_per_gpu_solve_in_bounded_time(
    tiny_trace: Path, tmp_path: Path, gpus: int, per_node: int, redundant: int
) -> None:
    """16 experts on 1 GPU and 16+ slots per GPU used to be killed for memory."""
    out = tmp_path / "plan.json"
    start = time.perf_counter()
    argv = ["solve", "--trace", str(tiny_trace), "--gpus", str(gpus), "--gpus-per-node"]
    argv += [str(per_node), "--redundant", str(redundant), "--solver", "greedy", "--out", str(out)]
    assert main(argv) == 0
    assert time.perf_counter() - start < 60 and out.exists()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_output_onto_input_is_refused(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.parquet"
    shutil.copy(tiny_trace, trace)
    before = trace.read_bytes()
    argv = [
        "solve",
        "--trace",
        str(trace),
        "--gpus",
        "8",
        "--solver",
        "greedy",
        "--out",
        str(trace),
    ]
    assert main(argv) == 2
    assert "destroy the input" in _one_error_line(capsys)
    assert trace.read_bytes() == before

    plan = tmp_path / "plan.json"
    argv = ["solve", "--trace", str(trace), "--gpus", "8", "--solver", "greedy", "--out", str(plan)]
    assert main(argv) == 0
    capsys.readouterr()
    plan_before = plan.read_bytes()
    # the same file under another spelling (a symlink) is caught too
    link = tmp_path / "link.json"
    link.symlink_to(plan)
    assert main(["export", "--plan", str(plan), "--out", str(link)]) == 2
    assert "--plan" in _one_error_line(capsys)
    assert plan.read_bytes() == plan_before
    sim = ["simulate", "--trace", str(trace), "--plan", str(plan), "--chrome-trace", str(trace)]
    assert main([*sim, "--gpus", "8"]) == 2
    _one_error_line(capsys)
    assert main(["import", str(trace), "--format", "csv", "--out", str(trace)]) == 2
    _one_error_line(capsys)
    assert trace.read_bytes() == before


def test_regress_refuses_nan_tolerance_and_junit_onto_baseline(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "base.json"
    common = ["regress", "--trace", str(tiny_trace), "--baseline", str(baseline), "--solver"]
    common += ["greedy"]
    assert main([*common, "--update-baseline"]) == 0
    capsys.readouterr()
    stored = baseline.read_bytes()
    for tolerance in ("max_load=nan", "max_load=inf", "max_load=0.1+nan", "layer_us=-0.1"):
        assert main([*common, "--tolerance", tolerance]) == 2, tolerance
        _one_error_line(capsys)
    assert main([*common, "--junit", str(baseline)]) == 2
    assert "destroy the input" in _one_error_line(capsys)
    assert baseline.read_bytes() == stored


def test_compare_fails_closed_on_non_finite_limits() -> None:
    entry = {"metrics": {"max_load": 10.0, "layer_us": 5.0}}
    tolerances = {"max_load": {"rel": float("nan"), "abs": 0.0}, "layer_us": {"rel": 0.1, "abs": 0}}
    checks = compare(
        "t", {"max_load": 9.0, "layer_us": float("nan")}, entry, tolerances, engine_changed=False
    )
    assert {c.metric: c.status for c in checks} == {"max_load": "fail", "layer_us": "fail"}


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--traffic", "uniform", "--attention-us", "nan"],
        ["simulate", "--traffic", "uniform", "--dispatch-bytes", "inf"],
        ["whatif", "--out", "x", "--time-limit", "nan"],
        ["solve", "--trace", "t.parquet", "--time-limit=-inf"],
    ],
)
def test_non_finite_floats_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "finite" in _one_error_line(capsys)


def test_weights_refuse_nan(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["solve", "--trace", str(tiny_trace), "--trace", str(tiny_trace), "--weights", "1,nan"]
    assert main(argv) == 2
    assert "finite" in _one_error_line(capsys)
