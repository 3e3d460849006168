"""``placement regress``: baseline round trip, a deliberately worse solver fails naming the metric, JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_placement.cli.main import main
from moe_placement.reports.regress import METRICS, compare, default_tolerances

BASELINES = Path(__file__).resolve().parents[1] / "reports" / "baselines"


def _regress(trace: Path, baseline: Path, *extra: str) -> list[str]:
    return [
        "regress",
        "--trace",
        str(trace),
        "--baseline",
        str(baseline),
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        *extra,
    ]


@pytest.fixture(scope="module")
def baseline(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("regress") / "baseline.json"
    assert main([*_regress(tiny_trace, path, "--solver", "greedy", "--update-baseline")]) == 0
    return path


def test_baseline_file(baseline: Path, tiny_trace: Path) -> None:
    data = json.loads(baseline.read_text())
    assert data["schema_version"] == 1
    assert data["config"]["solver"] == "greedy" and data["config"]["gpus"] == 4
    metrics = data["traces"][tiny_trace.name]["metrics"]
    assert set(metrics) == set(METRICS)
    assert set(data["tolerances"]) == set(METRICS)


def test_same_config_passes_with_junit(
    baseline: Path, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "junit.xml"
    # options not given come from the baseline's stored config (solver greedy)
    assert (
        main(
            [
                "regress",
                "--trace",
                str(tiny_trace),
                "--baseline",
                str(baseline),
                "--junit",
                str(junit),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "FAIL" not in out and "pass" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == str(len(METRICS)) and suite.get("failures") == "0"


def test_deliberately_worse_solver_fails_naming_the_metric(
    baseline: Path, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # round-robin ignores load entirely: its busiest GPU is far above greedy LPT's
    junit = tmp_path / "junit.xml"
    code = main([*_regress(tiny_trace, baseline, "--solver", "round-robin", "--junit", str(junit))])
    captured = capsys.readouterr()
    assert code == 1
    assert "check failed" in captured.err and "max_over_mean regressed" in captured.err
    assert "FAIL" in captured.out and "solver round-robin (baseline greedy)" in captured.out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures", "0")) >= 1
    failed = {
        case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None
    }
    assert "max_over_mean" in failed
    # the baseline is untouched by a failing run
    assert json.loads(baseline.read_text())["config"]["solver"] == "greedy"


def test_tighter_tolerance_and_update(baseline: Path, tiny_trace: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b.json"
    copy.write_bytes(baseline.read_bytes())
    worse = [*_regress(tiny_trace, copy, "--solver", "random", "--seed", "3")]
    if main(worse) == 1:
        # accepting the new numbers makes the same run pass
        assert main([*worse, "--update-baseline"]) == 0
        assert main(worse) == 0
    # a tolerance override is validated and stored
    assert main([*worse, "--tolerance", "layer_us=0.5", "--update-baseline"]) == 0
    assert json.loads(copy.read_text())["tolerances"]["layer_us"] == {"rel": 0.5, "abs": 0.0}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--tolerance", "speed=1"], "unknown metric"),
        (["--tolerance", "layer_us=fast"], "METRIC=REL"),
        (["--solver", "magic"], "unknown solver"),
    ],
)
def test_bad_input_exits_2(
    baseline: Path,
    tiny_trace: Path,
    extra: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*_regress(tiny_trace, baseline, *extra)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_missing_baseline_exits_2(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_regress(tiny_trace, tmp_path / "none.json")) == 2
    assert "--update-baseline" in capsys.readouterr().err


def test_committed_baselines_parse() -> None:
    for path in BASELINES.glob("*.json"):
        data = json.loads(path.read_text())
        assert data["schema_version"] == 1 and data["traces"], path


values = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False)


@given(
    base=values,
    factor=st.floats(min_value=0.0, max_value=3.0),
    metric=st.sampled_from(sorted(METRICS)),
)
def test_compare_fails_exactly_above_the_limit(base: float, factor: float, metric: str) -> None:
    tol = default_tolerances()
    current = base * factor
    [check] = compare(
        "t", {metric: current}, {"metrics": {metric: base}}, tol, engine_changed=False
    )
    limit = base * (1 + tol[metric]["rel"]) + tol[metric]["abs"]
    assert check.limit == pytest.approx(limit)
    assert (check.status == "fail") == (current > limit)
    if check.status == "fail":
        assert metric in check.message


def test_engine_change_skips_layer_time() -> None:
    checks = compare(
        "t",
        {"layer_us": 99.0, "max_load": 1.0},
        {"metrics": {"layer_us": 1.0, "max_load": 1.0}},
        default_tolerances(),
        engine_changed=True,
    )
    assert [c.status for c in checks] == ["skipped", "pass"]


def test_deterministic_is_stored_and_reproduces_the_cpsat_plan(
    tiny_trace: Path, tmp_path: Path
) -> None:
    """``--deterministic`` is kept in the baseline's config, and a CP-SAT plan measured again under it
    gives the very same figures (a wall-clock limit would vary with machine load)."""
    base = tmp_path / "det.json"
    argv = ["regress", "--trace", str(tiny_trace), "--baseline", str(base), "--solver", "cpsat"]
    argv += ["--gpus", "8", "--gpus-per-node", "4", "--redundant", "8", "--time-limit", "0.5"]
    assert main([*argv, "--deterministic", "--update-baseline"]) == 0
    stored = json.loads(base.read_text())
    assert stored["config"]["deterministic"] is True
    assert main([*argv, "--tolerance", "max_load=0", "--tolerance", "inter_node_bytes=0"]) == 0
