"""Every spine subcommand on a tiny input; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_placement.cli.main import main

from .conftest import DSV3_LOADS, needs_dsv3


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_synth_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.parquet"
    info = run_json(
        capsys,
        [
            "synth",
            "--out",
            str(out),
            "--layers",
            "3",
            "--experts",
            "8",
            "--top-k",
            "2",
            "--tokens",
            "500",
            "--seed",
            "4",
            "--json",
        ],
    )
    assert info["tokens"] == 500 and out.exists()
    stats = run_json(capsys, ["stats", "--trace", str(out), "--json"])
    assert stats["layers"] == 3 and stats["experts"] == 8 and stats["tokens"] == 500
    assert 0 < stats["mean_nmi"] <= 1


def test_solve_then_evaluate_reproduces_bytes(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    solved = run_json(
        capsys,
        [
            "solve",
            "--trace",
            str(tiny_trace),
            "--gpus",
            "8",
            "--gpus-per-node",
            "4",
            "--out",
            str(plan),
            "--json",
        ],
    )
    assert len(solved["layers"]) == 4 and "summary" in solved
    saved = json.loads(plan.read_text())
    for key in (
        "schema_version",
        "num_gpus",
        "gpus_per_node",
        "slots_per_gpu",
        "phy2log",
        "provenance",
    ):
        assert key in saved
    evaluated = run_json(
        capsys, ["evaluate", "--trace", str(tiny_trace), "--plan", str(plan), "--json"]
    )
    assert evaluated["summary"] == solved["summary"]
    assert evaluated["layers"] == solved["layers"]


def test_solve_all_and_human_table(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "solve",
                "--trace",
                str(tiny_trace),
                "--gpus",
                "8",
                "--gpus-per-node",
                "4",
                "--solver",
                "all",
                "--redundant",
                "8",
                "--time-limit",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "contiguous" in out and "greedy" in out
    assert (
        main(
            [
                "solve",
                "--trace",
                str(tiny_trace),
                "--gpus",
                "4",
                "--solver",
                "round-robin",
                "--out",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    assert "plan written" in capsys.readouterr().out


def test_export_formats(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    assert (
        main(
            [
                "solve",
                "--trace",
                str(tiny_trace),
                "--gpus",
                "4",
                "--solver",
                "greedy",
                "--out",
                str(plan),
            ]
        )
        == 0
    )
    capsys.readouterr()
    for fmt, key in (
        ("sglang", "physical_to_logical_map"),
        ("vllm", "logical_to_physical_map"),
        ("eplb", "log2phy"),
    ):
        out = tmp_path / f"{fmt}.json"
        info = run_json(
            capsys, ["export", "--plan", str(plan), "--format", fmt, "--out", str(out), "--json"]
        )
        assert key in json.loads(out.read_text()) and info["format"] == fmt


def bad_exit(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc_info:
        code = main(argv)
        raise SystemExit(code)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_exit_2_with_one_line(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.parquet").write_text("not parquet")
    (tmp_path / "junk.json").write_text("{}")
    assert "not found" in bad_exit(capsys, ["solve", "--trace", str(tmp_path / "none.parquet")])
    assert "Parquet" in bad_exit(capsys, ["solve", "--trace", str(tmp_path / "junk.parquet")])
    assert "logical_count" in bad_exit(capsys, ["solve", "--trace", str(tmp_path / "junk.json")])
    assert "required" in bad_exit(capsys, ["evaluate"])  # a bare solve runs on the bundled trace
    assert "unknown solver" in bad_exit(
        capsys, ["solve", "--trace", str(tiny_trace), "--solver", "magic", "--gpus", "4"]
    )
    assert "cannot be spread" in bad_exit(
        capsys,
        [
            "solve",
            "--trace",
            str(tiny_trace),
            "--gpus",
            "8",
            "--gpus-per-node",
            "4",
            "--redundant",
            "3",
        ],
    )
    assert "neither a preset" in bad_exit(
        capsys, ["solve", "--trace", str(tiny_trace), "--cluster", "nope"]
    )
    assert "plan file not found" in bad_exit(
        capsys, ["evaluate", "--trace", str(tiny_trace), "--plan", "x.json"]
    )
    assert "invalid choice" in bad_exit(
        capsys, ["export", "--plan", "x", "--format", "onnx", "--out", "y"]
    )
    assert "top-k" in bad_exit(
        capsys, ["synth", "--out", str(tmp_path / "t.parquet"), "--experts", "2", "--top-k", "3"]
    )
    assert not (tmp_path / "t.parquet").exists()
    assert "invalid choice" in bad_exit(capsys, ["frobnicate"])


def test_missing_plan_file_leaves_nothing(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_exit(
        capsys,
        [
            "solve",
            "--trace",
            str(tiny_trace),
            "--gpus",
            "8",
            "--gpus-per-node",
            "4",
            "--redundant",
            "3",
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert list(tmp_path.iterdir()) == []


@needs_dsv3()
def test_solve_load_only_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = DSV3_LOADS / "prefill_in1024.json"
    res = run_json(
        capsys,
        [
            "solve",
            "--trace",
            str(path),
            "--gpus",
            "64",
            "--solver",
            "greedy",
            "--redundant",
            "64",
            "--out",
            str(tmp_path / "p.json"),
            "--json",
        ],
    )
    assert len(res["layers"]) == 58 and res["bytes_model"].startswith("independent")
    assert res["summary"]["mean_max_over_mean"] < 1.1


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The main job on the embedded default trace, every step, machine-readable."""
    info = run_json(
        capsys, ["demo", "--out", str(tmp_path / "demo"), "--time-limit", "1", "--json"]
    )
    steps = [s["step"] for s in info["steps"]]
    assert steps[:4] == ["trace statistics", "solver comparison", "best plan", "export for SGLang"]
    assert (tmp_path / "demo" / "plan.json").exists() and (
        tmp_path / "demo" / "sglang_map.json"
    ).exists()
    for step in info["steps"]:
        assert json.loads(Path(step["json"]).read_text())  # each step's JSON is complete


def test_simulate_says_when_the_exact_simulation_is_long(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From SLOW_EXACT_GPUS GPUs on, a uniform exact run names the wait, --finish-window and --fast on
    stderr (stdout stays the JSON); a --fast run, a windowed one and a smaller one say nothing."""
    from moe_placement.cli.commands import simulate

    monkeypatch.setattr(simulate, "SLOW_EXACT_GPUS", 16)  # 512 GPUs would take minutes here
    common = ["simulate", "--traffic", "uniform", "--gpus-per-node", "8", "--tokens", "256"]
    common += ["--algo", "deepep", "--json"]
    assert main([*common, "--gpus", "16"]) == 0
    out, err = capsys.readouterr()
    assert "exact event simulation of 16 GPUs" in err and "--fast" in err
    assert "--finish-window 3e-3" in err
    assert json.loads(out)["num_gpus"] == 16
    windowed = [*common, "--gpus", "16", "--finish-window", "3e-3"]
    for argv in ([*common, "--gpus", "16", "--fast"], [*common, "--gpus", "8"], windowed):
        assert main(argv) == 0
        assert "exact event simulation" not in capsys.readouterr().err
    # a run the arguments refuse gets its one line, not the note before it
    assert main([*common, "--gpus", "16", "--experts", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "top_k" in err
