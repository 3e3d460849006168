"""Every former hang answers in bounded time: sizes beyond the machine refused with the estimate, the
time limit's hard edge, Ray addresses that do not answer, ``--num-cpus 0``, one run per ``--out``, and the
same what-if results serial or on Ray."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from moe_placement import interrupt
from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.solvers import PlacementProblem, SolverConfig
from moe_placement.solvers.sizing import check_size, estimate
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_hundred_thousand_gpus_are_refused_with_the_estimate(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used to run for hours (LPT over 100,000 GPUs, then 1.3 TB of GPU-pair tables)."""
    out = tmp_path / "plan.json"
    start = time.perf_counter()
    argv = ["solve", "--trace", str(tiny_trace), "--gpus", "100000", "--redundant", "99984"]
    assert main([*argv, "--out", str(out)]) == 2
    assert time.perf_counter() - start < 60
    line = _one_line(capsys)
    assert "too large" in line and "100000 GPUs" in line and "TB" in line
    assert not out.exists()


def _problem(tiny_trace: Path, gpus: int) -> PlacementProblem:
    cluster = load_cluster("h100-multirail").with_counts(gpus, 8)
    workload = derive_workload(TraceFile(tiny_trace), num_gpus=8)  # 16 experts
    return PlacementProblem(workloads=(workload,), cluster=cluster, num_redundant=gpus - 16)


def test_the_time_limit_decides_what_is_too_large(tiny_trace: Path) -> None:
    problem = _problem(tiny_trace, 2048)  # one slot per GPU
    est = estimate(problem)
    assert est.evaluator_bytes == 4 * 4 * 2048**2 * 8  # layers x GPU-pair tables
    with pytest.raises(PlacementError, match="too large for the time limit") as refused:
        check_size(problem, SolverConfig(time_limit_s=1.0))
    assert "raise --time-limit to" in str(refused.value)
    assert check_size(problem, SolverConfig(time_limit_s=10.0)) == est  # ~17 s: within 3 x 10 s


def test_a_deadline_stops_work_and_ends_with_its_block() -> None:
    start = time.perf_counter()
    with interrupt.deadline(0.2) as limit:
        while not interrupt.requested() and time.perf_counter() - start < 10:
            time.sleep(0.01)
    assert limit.reached and time.perf_counter() - start < 5
    assert interrupt.requested() is None  # the next solve in this process starts afresh


def test_a_deadline_that_fires_as_its_block_ends_leaves_no_stop_behind() -> None:
    # the race CI met once: the timer fired, the block ended (finish cleared the request), then the
    # timer's request landed and stopped the next solve of the process at once; finish now waits
    firing, release = threading.Event(), threading.Event()
    edge = interrupt.Deadline(0.0)
    expire = edge._expire

    def late_expire() -> None:
        firing.set()
        release.wait(5)
        expire()

    edge._expire = late_expire  # type: ignore[method-assign]
    edge.start()
    assert firing.wait(5)  # the timer is inside its request
    threading.Timer(0.1, release.set).start()
    try:
        assert edge.finish()  # waited for the request, then ended it
        assert interrupt.requested() is None
    finally:
        interrupt.reset()


def test_a_users_stop_outlives_a_deadline() -> None:
    try:
        with interrupt.deadline(0.05):
            time.sleep(0.1)
            interrupt.request(interrupt.STOPPED_BY_USER)
        assert interrupt.requested() == interrupt.STOPPED_BY_USER
    finally:
        interrupt.reset()


def test_num_cpus_zero_is_refused(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["whatif", "--trace", str(tiny_trace), "--gpus", "8", "--num-cpus", "0"]
    with pytest.raises(SystemExit) as usage:  # a usage error, from the parser
        main([*argv, "--out", str(tmp_path / "wi")])
    assert usage.value.code == 2
    assert "--num-cpus" in _one_line(capsys)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_ray_address_that_does_not_answer_is_named(
    how: str,
    tiny_trace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray")
    argv = ["whatif", "--trace", str(tiny_trace), "--gpus", "8", "--time-limit", "1"]
    if how == "flag":
        argv += ["--address", "127.0.0.1:1"]
    else:  # used to crash: "num_cpus and num_gpus must not be provided"
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    start = time.perf_counter()
    assert main([*argv, "--out", str(tmp_path / "wi")]) == 2
    assert time.perf_counter() - start < 30
    line = _one_line(capsys)
    assert "no Ray cluster answers at 127.0.0.1:1" in line


def test_the_executor_names_a_ray_address_that_does_not_answer() -> None:
    pytest.importorskip("ray")
    from moe_placement.executor.raycluster import init_ray

    with pytest.raises(PlacementError, match=r"no Ray cluster answers at 127\.0\.0\.1:1"):
        init_ray("127.0.0.1:1", num_cpus=1)


def test_one_run_per_out_folder(tmp_path: Path) -> None:
    from moe_placement.pipeline.sweep import FolderLock

    out = tmp_path / "wi"
    with FolderLock(out), pytest.raises(PlacementError, match="in use by another run"):
        FolderLock(out)
    with FolderLock(out):  # released: the next run may go
        pass


def test_a_busy_out_folder_refuses_a_second_whatif(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_placement.pipeline.sweep import FolderLock

    out = tmp_path / "wi"
    with FolderLock(out):
        argv = ["whatif", "--trace", str(tiny_trace), "--gpus", "8", "--serial"]
        assert main([*argv, "--out", str(out)]) == 2
    assert "in use by another run" in _one_line(capsys)
    assert not (out / "results.parquet").exists()


@pytest.mark.slow
def test_the_same_seed_gives_the_same_whatif_serial_or_on_ray(
    tiny_trace: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    common = ["whatif", "--trace", str(tiny_trace), "--gpus", "8", "--gpus-per-node", "4"]
    common += ["--sweep", "redundant=0,8", "--time-limit", "1", "--seed", "3"]
    assert main([*common, "--serial", "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--num-cpus", "2", "--out", str(tmp_path / "ray")]) == 0
    columns = ["redundant", "solver", "plan_fingerprint", "layer_us"]
    serial = pd.read_parquet(tmp_path / "serial" / "results.parquet")
    ray = pd.read_parquet(tmp_path / "ray" / "results.parquet")
    keep = [c for c in columns if c in serial.columns]
    assert "plan_fingerprint" in keep
    order = ["redundant", "solver"]
    pd.testing.assert_frame_equal(
        serial[keep].sort_values(order).reset_index(drop=True),
        ray[keep].sort_values(order).reset_index(drop=True),
    )


def test_a_solve_that_fails_leaves_no_deadline_armed(tiny_trace: Path, tmp_path: Path) -> None:
    """``placement solve --deterministic`` arms a wall-clock edge around the solve. An error inside it
    must disarm the edge: one left armed fired later in the same process and stopped another solve
    there at once (a deterministic-plan test then got two different plans from the same run)."""
    before = set(threading.enumerate())
    out = tmp_path / "plan.json"
    argv = ["solve", "--trace", str(tiny_trace), "--gpus", "8", "--gpus-per-node", "4"]
    argv += ["--deterministic", "--redundant-total", "5", "--out", str(out)]
    assert main(argv) == 2  # refused inside the edge's block: not a multiple of the GPUs
    armed = [
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer) and t not in before and t.is_alive()
    ]
    assert armed == []
    assert interrupt.requested() is None and not out.exists()
