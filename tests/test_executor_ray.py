"""The Ray executor end to end on CPU: 4 gloo workers, a tiny synthetic trace, real collectives.

One local Ray serves the whole module (started once, ~5 s); each test starts its own workers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from moe_placement.cli.main import main  # noqa: E402

WORKERS = 4


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("executor")
    trace = str(root / "t.parquet")
    assert (
        main(
            [
                "synth",
                "--out",
                trace,
                "--layers",
                "2",
                "--experts",
                "8",
                "--top-k",
                "2",
                "--tokens",
                "512",
                "--seed",
                "3",
                "--hidden",
                "128",
                "--intermediate",
                "64",
            ]
        )
        == 0
    )
    plans = {"trace": trace}
    for name, solver, per_node, extra in [
        ("contiguous", "contiguous", "4", []),
        ("greedy", "greedy", "4", ["--redundant", "4"]),
        ("twonode", "greedy", "2", []),
    ]:
        out = str(root / f"{name}.json")
        assert (
            main(
                [
                    "solve",
                    "--trace",
                    trace,
                    "--gpus",
                    str(WORKERS),
                    "--gpus-per-node",
                    per_node,
                    "--solver",
                    solver,
                    "--out",
                    out,
                    "--json",
                    *extra,
                ]
            )
            == 0
        )
        plans[name] = out
    plans["root"] = str(root)
    return plans


def test_validate_end_to_end(
    ray_session: Any, inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    out = Path(inputs["root"]) / "report.json"
    code = main(
        [
            "validate",
            "--trace",
            inputs["trace"],
            "--plan",
            inputs["greedy"],
            "--baseline-plan",
            inputs["contiguous"],
            "--workers",
            str(WORKERS),
            "--reps",
            "2",
            "--rounds",
            "2",
            "--chunks",
            "2",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 2 and report["reps"] == 2
    assert (
        json.loads(out.read_text())["plans"].keys()
        == report["plans"].keys()
        == {"plan", "baseline"}
    )
    assert report["calibration"]["all_to_all"]["gbytes_per_s"] > 0
    host = report["calibration"]["host"]  # CPU ranks: the host-sharing model predicts
    assert host["cores"] > 0 and host["us_per_mflop"] > 0 and len(host["compute_points"]) >= 10
    for res in report["plans"].values():
        assert res["copies_match_evaluator"] and res["predictor"].startswith("host model")
        assert len(res["layers"]) == 2
        for row in res["layers"]:
            assert row["measured"]["layer_us"] > 0 and row["simulated"]["layer_us"] > 0
            assert row["measured"]["dispatch_us"] > 0 and row["measured"]["compute_us"] > 0
            assert row["measured"]["overlap_layer_us"] > 0
            assert np.isfinite(row["error"]["layer_us"])
        assert np.isfinite(res["mean_abs_layer_error"])
    assert report["speedup"]["measured"] > 0 and report["speedup"]["simulated"] > 0


def test_replay_computes_the_moe_layer(ray_session: Any, inputs: dict[str, str]) -> None:
    """The distributed layer (two nodes: forwarders, fan-out, partial sums) equals a local reference."""
    from moe_placement.executor.driver import ExecConfig, load_replay_input, measure
    from moe_placement.executor.group import WorkerGroup
    from moe_placement.executor.kernels import expert_weights, swiglu
    from moe_placement.plan import Plan

    plan = Plan.load(inputs["twonode"])
    config = ExecConfig(workers=WORKERS, reps=1, warmup=0, chunks=2)
    data = load_replay_input(inputs["trace"], WORKERS, config)
    with WorkerGroup(WORKERS, timeout_s=60) as group:
        m = measure(group, plan, data, config, return_outputs=True)
    h, i = data.shape.hidden_size, data.shape.expert_intermediate_size
    cache: dict[tuple[int, int], Any] = {}
    for rank_out in m.outputs:
        for layer, (tokens, x, y) in enumerate(rank_out):
            ref = np.zeros_like(y)
            for row, t in enumerate(tokens):
                for k in range(data.expert_ids.shape[2]):
                    e = int(data.expert_ids[layer, t, k])
                    w = cache.setdefault(
                        (layer, e),
                        expert_weights(0, layer, e, h, i, torch.float32, torch.device("cpu")),
                    )
                    ref[row] += (
                        data.weights[layer, t, k]
                        * swiglu(torch.tensor(x[row : row + 1]), w).numpy()[0]
                    )
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def _validate_with_fault(
    inputs: dict[str, str], capsys: pytest.CaptureFixture[str], fault: str, timeout_s: int
) -> tuple[int, str]:
    """``placement validate`` of the contiguous plan with a worker fault injected: (exit code, stderr)."""
    code = main(
        [
            "validate",
            "--trace",
            inputs["trace"],
            "--plan",
            inputs["contiguous"],
            "--workers",
            str(WORKERS),
            "--cluster",
            "h100-single-node",
            "--timeout",
            str(timeout_s),
            "--inject-fault",
            fault,
        ]
    )
    return code, capsys.readouterr().err.strip()


def test_killed_worker_gives_clear_error(
    ray_session: Any, inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    start = time.monotonic()
    code, err = _validate_with_fault(inputs, capsys, "2:die:1", timeout_s=30)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "worker rank 2" in err and "died" in err
    assert time.monotonic() - start < 60


def test_out_of_memory_worker_gives_clear_error(
    ray_session: Any, inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, err = _validate_with_fault(inputs, capsys, "1:oom", timeout_s=30)
    assert code == 2
    assert "worker rank 1 ran out of memory" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_hung_worker_gives_clear_error(
    ray_session: Any, inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    start = time.monotonic()
    code, err = _validate_with_fault(inputs, capsys, "3:hang", timeout_s=5)
    assert code == 2
    assert "rank(s) 3" in err and len(err.splitlines()) == 1
    assert time.monotonic() - start < 60


def test_calibrate_writes_a_loadable_spec(
    ray_session: Any, inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_placement.cluster import load_cluster
    from moe_placement.executor.hostmodel import load_host_model

    out = Path(inputs["root"]) / "cal.yaml"
    assert (
        main(
            [
                "calibrate",
                "--workers",
                str(WORKERS),
                "--out",
                str(out),
                "--trace",
                inputs["trace"],
                "--reps",
                "2",
                "--json",
            ]
        )
        == 0
    )
    spec = load_cluster(str(out))
    assert spec.num_gpus == WORKERS and spec.nvlink_bw > 0 and spec.gpu.bf16_tflops > 0
    host = load_host_model(str(out))  # written next to the spec for CPU ranks
    assert host is not None and host.comm_latency_us >= 0 and host.cores > 0
    capsys.readouterr()


def test_plan_that_does_not_fit_is_refused_before_starting(
    inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    start = time.monotonic()
    code = main(
        ["validate", "--trace", inputs["trace"], "--plan", inputs["contiguous"], "--workers", "2"]
    )
    assert code == 2
    assert "--workers" in capsys.readouterr().err
    assert time.monotonic() - start < 10  # no Ray, no workers


def test_bad_inputs_exit_2(inputs: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "validate",
                "--trace",
                "/nonexistent.parquet",
                "--plan",
                inputs["contiguous"],
                "--workers",
                "4",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "validate",
                "--trace",
                inputs["trace"],
                "--plan",
                inputs["contiguous"],
                "--workers",
                "4",
                "--inject-fault",
                "x",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "validate",
                "--trace",
                inputs["trace"],
                "--plan",
                inputs["contiguous"],
                "--workers",
                "4",
                "--hidden-scale",
                "0",
            ]
        )
        == 2
    )
    assert main(["calibrate", "--workers", "0", "--out", "/tmp/never.yaml"]) == 2
    capsys.readouterr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_single_gpu(
    ray_session: Any, inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """World size 1 on NCCL: the CUDA path, side-stream overlap and the checks (run where a GPU exists)."""
    plan = tmp_path / "one.json"
    assert (
        main(
            [
                "solve",
                "--trace",
                inputs["trace"],
                "--gpus",
                "1",
                "--gpus-per-node",
                "1",
                "--solver",
                "contiguous",
                "--out",
                str(plan),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "validate",
                "--trace",
                inputs["trace"],
                "--plan",
                str(plan),
                "--workers",
                "1",
                "--backend",
                "nccl",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["plans"]["plan"]["copies_match_evaluator"]
