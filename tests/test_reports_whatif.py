"""``placement whatif``: a 3-axis sweep end to end, the cache, Ray against serial, report-only, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from moe_placement.cli.main import main
from moe_placement.pipeline.results import load_results
from moe_placement.pipeline.sweep import ray_available
from moe_placement.reports.report import ReportOptions, build_report
from moe_placement.solvers import REGISTRY

# Wall-clock columns: the only ones allowed to differ between two runs of the same sweep. The key and
# the source hash differ too if someone edits solvers or the simulator between the two runs.
TIMING_COLUMNS = ["solve_s", "wall_s", "key", "code_version"]

# The sweep adds contiguous (and eplb, once registered) to the solver axis for comparison.
SOLVERS = ["greedy", "contiguous"] + (["eplb"] if "eplb" in REGISTRY else [])
N = 8 * len(SOLVERS)
SWEEP = [
    "--sweep",
    "gpus=2,4",
    "--sweep",
    "topology=multi-rail,three-tier",
    "--sweep",
    "nic_gbps=200,400",
]


def _whatif(trace: Path, out: Path, *extra: str) -> list[str]:
    return [
        "whatif",
        "--trace",
        str(trace),
        "--gpus-per-node",
        "2",
        "--solver",
        "greedy",
        "--tokens-per-gpu",
        "1024",
        *SWEEP,
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def serial_run(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whatif") / "serial"
    assert main([*_whatif(tiny_trace, out), "--serial"]) == 0
    return out


def test_sweep_writes_results_and_report(serial_run: Path) -> None:
    for name in (
        "results.parquet",
        "results.csv",
        "layers.parquet",
        "layers.csv",
        "sweep.json",
        "report.html",
        "summary.md",
    ):
        assert (serial_run / name).stat().st_size > 0, name
    results, layers, meta = load_results(serial_run)
    # 2 x 2 x 2 swept values x solvers
    assert len(results) == N and (results["status"] == "ok").all()
    assert list(dict.fromkeys(results["solver"])) == SOLVERS
    assert len(layers) == N * 4  # 4 MoE layers each
    assert meta["axes"]["solver"] == SOLVERS
    ok = results
    # consistent accounting: throughput from the step time, step time from the layers
    assert (ok["tokens_per_s"] - ok["tokens_per_step"] / (ok["step_us"] * 1e-6)).abs().max() < 1e-3
    per_key = layers.groupby("key")["layer_us"].sum()
    assert (per_key.loc[ok["key"]].to_numpy() - ok["step_us"].to_numpy()).__abs__().max() < 1e-6
    # a one-node cluster has no network endpoints; halving NIC bandwidth never speeds up a multi-node one
    assert (ok.loc[ok["gpus"] == 2, "network_endpoints"] == 0).all()
    assert (ok.loc[ok["gpus"] == 4, "network_endpoints"] == 4).all()
    multi = ok[ok["gpus"] == 4].set_index(["solver", "topology", "nic_gbps"])["layer_us"]
    for solver in SOLVERS:
        for topo in ("multi-rail", "three-tier"):
            assert multi[(solver, topo, 200.0)] >= multi[(solver, topo, 400.0)]


def test_report_is_self_contained_and_answers_the_questions(serial_run: Path) -> None:
    page = (serial_run / "report.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 5
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in page and "https://" not in page
    for heading in (
        "Throughput and per-layer latency versus GPU count",
        "Where the time goes",
        "What placement optimisation buys",
        "worth paying for",
        "Smallest cluster",
    ):
        assert heading in page
    md = (serial_run / "summary.md").read_text()
    assert "greedy versus contiguous" in md and "$/M tok" in md


def test_rerun_with_one_changed_axis_computes_only_new(
    tiny_trace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pin the source hash: other work may edit solvers or the simulator while this test runs, and a
    # changed source rightly invalidates the cache; this test is about the scenario part of the key.
    monkeypatch.setattr("moe_placement.pipeline.engine.code_version", lambda: "pinned")
    argv = [
        "whatif",
        "--trace",
        str(tiny_trace),
        "--gpus-per-node",
        "2",
        "--solver",
        "greedy",
        "--no-reference-solvers",
        "--sweep",
        "gpus=2,4",
        "--sweep",
        "nic_gbps=200,400",
        "--sweep",
        "overlap=none",
        "--serial",
        "--json",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 4
    argv[argv.index("nic_gbps=200,400")] = "nic_gbps=200,400,800"
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scenarios_run"] == 6 and len(info["scenarios"]) == 6
    assert info["computed"] == 2 and info["cached"] == 4
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["computed"] == 0 and info["cached"] == 6
    results, _, _ = load_results(tmp_path)
    assert sorted(results["nic_gbps"].unique()) == [200.0, 400.0, 800.0]


@pytest.mark.skipif(not ray_available(), reason="ray not installed")
def test_ray_and_serial_give_identical_results(serial_run: Path, tiny_trace: Path) -> None:
    out = serial_run.parent / "ray"
    assert main(_whatif(tiny_trace, out)) == 0
    a, la, _ = load_results(serial_run)
    b, lb, meta = load_results(out)
    assert json.loads((out / "sweep.json").read_text())["scenarios"] == N
    pd.testing.assert_frame_equal(a.drop(columns=TIMING_COLUMNS), b.drop(columns=TIMING_COLUMNS))
    pd.testing.assert_frame_equal(la.drop(columns="key"), lb.drop(columns="key"))
    assert meta["engine"] == json.loads((serial_run / "sweep.json").read_text())["engine"]


def test_report_only_is_a_pure_function_of_stored_results(serial_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("results.parquet", "layers.parquet", "sweep.json"):
        (copy / name).write_bytes((serial_run / name).read_bytes())
    assert main(["whatif", "--report-only", "--out", str(copy)]) == 0
    assert (copy / "summary.md").read_text() == (serial_run / "summary.md").read_text()
    # Prices and targets change the report, not the stored results.
    base = build_report(copy, ReportOptions())
    results, _, _ = load_results(copy)
    target = float(results["tokens_per_s"].median())
    pricey = build_report(
        copy, ReportOptions(gpu_hour_usd={"H100": 10.0}, target_tokens_per_s=target)
    )
    assert pricey.findings["max_tokens_per_s"] == base.findings["max_tokens_per_s"]
    meeting = results[results["tokens_per_s"] >= target]
    assert pricey.findings["smallest_cluster_gpus"] == int(meeting["gpus"].min())
    assert "smallest cluster meeting it" in (copy / "summary.md").read_text()
    impossible = build_report(copy, ReportOptions(target_layer_us=1e-6))
    assert impossible.findings["smallest_cluster_gpus"] is None


def test_infeasible_scenarios_are_listed(tiny_trace: Path, tmp_path: Path) -> None:
    # 16 experts + 3 redundant = 19 slots cannot spread over 4 GPUs; 16 + 4 = 20 can
    argv = [
        "whatif",
        "--trace",
        str(tiny_trace),
        "--gpus-per-node",
        "2",
        "--sweep",
        "gpus=4",
        "--sweep",
        "redundant=3,4",
        "--sweep",
        "solver=greedy",
        "--no-reference-solvers",
        "--serial",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    results, _, _ = load_results(tmp_path)
    assert list(results["status"]) == ["infeasible", "ok"]
    assert "Infeasible scenarios" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["whatif", "--out", "OUT"],
        ["whatif", "--trace", "TRACE", "--sweep", "gpus=x", "--out", "OUT"],
        ["whatif", "--trace", "TRACE", "--sweep", "speed=1", "--out", "OUT"],
        ["whatif", "--trace", "missing.parquet", "--out", "OUT"],
        ["whatif", "--report-only", "--out", "OUT"],
        ["whatif", "--report-only", "--out", "OUT", "--gpu-hour-usd", "H100=cheap"],
    ],
)
def test_bad_input_exits_2(
    argv: list[str], tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        str(tmp_path / "o") if a == "OUT" else str(tiny_trace) if a == "TRACE" else a for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("placement whatif: error:") and "\n" not in err


def test_model_shape_with_synthetic_profile_sweeps_experts(tmp_path: Path) -> None:
    argv = [
        "whatif",
        "--model",
        "mixtral-8x7b",
        "--synth-tokens",
        "512",
        "--synth-layers",
        "2",
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        "--sweep",
        "experts=8,16",
        "--sweep",
        "solver=greedy",
        "--no-reference-solvers",
        "--serial",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    results, _, meta = load_results(tmp_path)
    assert list(results["experts"]) == [8, 16] and list(results["num_experts"]) == [8, 16]
    assert results["trace_fingerprint"].nunique() == 2
    assert "synthetic profile of mixtral-8x7b" in meta["trace"]
    # the generator is seeded: a re-run finds the same traces and hence every result cached
    assert main(argv) == 0
    assert len(list((tmp_path / "traces").glob("*.parquet"))) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_experts_axis_needs_a_model(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["whatif", "--trace", str(tiny_trace), "--sweep", "experts=8", "--out", str(tmp_path)])
        == 2
    )
    assert "needs --model" in capsys.readouterr().err
