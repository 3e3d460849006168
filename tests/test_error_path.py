"""One error path: outputs that cannot be written, malformed files, odd numbers, malformed metadata and
empty traces each give exit 2 and one line on stderr naming the file or option and what is wrong, and
leave nothing behind (no output, no temporary file)."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from moe_placement.atomic import atomic_open, atomic_path, write_json
from moe_placement.cli.main import _os_error_line, main
from moe_placement.errors import PlacementError
from moe_placement.traces.schema import META_KEY, TraceMeta
from moe_placement.traces.writer import TraceWriter

CLUSTER = ["--gpus", "4", "--gpus-per-node", "2"]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def files_under(folder: Path) -> list[str]:
    """Files under ``folder``, but not ``.lock`` files (whatif's flock on --out outlives its run)."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock"
    )


@pytest.fixture(scope="module")
def plan(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    argv = ["solve", "--trace", str(tiny_trace), *CLUSTER, "--solver", "greedy", "--out", str(path)]
    with contextlib.redirect_stdout(None):
        assert main(argv) == 0
    return path


def _writers(trace: Path, plan: Path) -> dict[str, tuple[list[str], str]]:
    """Command -> (argument list with OUT for the output, "file" or "folder")."""
    return {
        "solve": (
            ["solve", "--trace", str(trace), *CLUSTER, "--solver", "greedy", "--out"],
            "file",
        ),
        "synth": (["synth", "--layers", "2", "--experts", "8", "--tokens", "64", "--out"], "file"),
        "export": (["export", "--plan", str(plan), "--format", "sglang", "--out"], "file"),
        "simulate": (
            ["simulate", "--trace", str(trace), "--plan", str(plan), *CLUSTER, "--chrome-trace"],
            "file",
        ),
        "stats": (["stats", "--trace", str(trace), "--plots"], "folder"),
    }


# ---- output that cannot be written ------------------------------------------------------------------

WRITERS = ("solve", "synth", "export", "simulate", "stats")


@pytest.mark.parametrize("command", WRITERS)
def test_output_whose_parent_is_a_file(
    command: str, tiny_trace: Path, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, _ = _writers(tiny_trace, plan)[command]
    blocker = tmp_path / "blocker"
    blocker.write_text("keep")
    assert main([*argv, str(blocker / "sub" / "out.json")]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "is a file" in line
    assert files_under(tmp_path) == ["blocker"] and blocker.read_text() == "keep"


@pytest.mark.parametrize("command", WRITERS)
def test_output_in_the_place_of_a_folder_or_file(
    command: str, tiny_trace: Path, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file output onto a folder, a folder output (``stats --plots``) onto an existing file."""
    argv, kind = _writers(tiny_trace, plan)[command]
    target = tmp_path / "taken.json"
    if kind == "file":
        target.mkdir()
    else:
        target.write_text("keep")
    assert main([*argv, str(target)]) == 2
    assert str(target) in one_error_line(capsys)
    assert files_under(tmp_path) == ([] if kind == "file" else ["taken.json"])


@pytest.mark.parametrize("command", WRITERS)
def test_output_without_permission(
    command: str, tiny_trace: Path, plan: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/sys refuses new files even to root, so this needs no chmod (which root would bypass)."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys")
    argv, _ = _writers(tiny_trace, plan)[command]
    target = Path("/sys/moe-placement-test-output.json")
    assert main([*argv, str(target)]) == 2
    line = one_error_line(capsys)
    assert str(target) in line and ("ermission" in line or "not permitted" in line)
    assert not target.exists()


@contextlib.contextmanager
def file_size_limit(limit_bytes: int) -> Iterator[None]:
    """Writes past ``limit_bytes`` fail with EFBIG, as a full disk fails them with ENOSPC (SIGXFSZ
    ignored so the write returns an error instead of killing the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("command", WRITERS)
def test_output_on_a_full_disk(
    command: str, tiny_trace: Path, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, kind = _writers(tiny_trace, plan)[command]
    target = tmp_path / ("plots" if kind == "folder" else "out.json")
    with file_size_limit(200):
        code = main([*argv, str(target)])
    assert code == 2
    line = one_error_line(capsys)
    assert str(target) in line and "too large" in line
    assert files_under(tmp_path) == []


# ---- atomic writes leave nothing behind ---------------------------------------------------------------


def test_atomic_path_removes_its_temporary_file_on_any_exception(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(KeyError), atomic_open(target) as handle:
        handle.write("half")
        raise KeyError("a bug in the writer")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_names_the_target_not_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with (
        pytest.raises(PlacementError, match=r"cannot write .*out\.json: File too large"),
        file_size_limit(10),
    ):
        write_json(target, {"key": "x" * 100})
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(PlacementError, match="it is a folder"), atomic_path(folder):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_trace_writer_leaves_nothing_when_the_disk_fills(tmp_path: Path) -> None:
    meta = TraceMeta("m", 2, 8, 2, 64, 32)
    ids = np.tile(np.array([0, 1]), (2, 4000, 1))
    weights = np.full(ids.shape, 0.5, dtype=np.float32)
    n = ids.shape[1]
    with (
        pytest.raises(PlacementError, match=r"cannot write .*t\.parquet"),
        file_size_limit(4096),
        TraceWriter(tmp_path / "t.parquet", meta) as writer,
    ):
        writer.write(np.zeros(n), np.arange(n), np.zeros(n), ids, weights)
    assert list(tmp_path.iterdir()) == []


def test_stray_os_error_is_one_line_naming_its_paths() -> None:
    error = IsADirectoryError(21, "Is a directory", "/a/b")
    assert _os_error_line(error) == "/a/b: Is a directory"
    rename = OSError(18, "Invalid cross-device link", "/a", None, "/b")
    assert _os_error_line(rename) == "/a -> /b: Invalid cross-device link"


# ---- malformed files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[1, 2]", "expected a JSON object"),
        (b'"a plan"', "expected a JSON object"),
        (b"\xff\xfe\x00\x81", "not JSON"),
        (b'{"schema_version": 1, "num_gpus": 4.5}', "num_gpus must be an integer"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "simulate", "export", "solve"])
def test_malformed_plan_files(
    command: str,
    content: bytes,
    why: str,
    tiny_trace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    trace = ["--trace", str(tiny_trace), *CLUSTER]
    argv = {
        "evaluate": ["evaluate", *trace, "--plan", str(bad)],
        "simulate": ["simulate", *trace, "--plan", str(bad)],
        "export": ["export", "--plan", str(bad), "--out", str(tmp_path / "o.json")],
        "solve": ["solve", *trace, "--current", str(bad), "--out", str(tmp_path / "o.json")],
    }[command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and why in line
    assert files_under(tmp_path) == ["bad.json"]


def test_zero_layer_plan_is_refused(
    plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads(plan.read_text()), "phy2log": []}))
    assert main(["export", "--plan", str(empty), "--out", str(tmp_path / "o.json")]) == 2
    assert "non-empty list of MoE layers" in one_error_line(capsys)
    assert files_under(tmp_path) == ["empty.json"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"- 1\n- 2\n", "expected a mapping"),
        (b"text\n", "expected a mapping"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_cluster_files(
    content: bytes, why: str, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_bytes(content)
    argv = ["solve", "--trace", str(tiny_trace), "--cluster", str(bad), "--solver", "greedy"]
    assert main([*argv, "--out", str(tmp_path / "p.json")]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and why in line


@pytest.mark.parametrize(
    ("array", "why"),
    [
        (np.zeros((8, 2)) + 0.5, "must be integers"),
        (np.zeros((8, 2), dtype=bool), "must be integers"),
        (None, "not a NumPy .npy array"),  # cut short
    ],
)
def test_malformed_npy_imports(
    array: np.ndarray | None,
    why: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "routing.npy"
    np.save(bad, np.zeros((64, 2), dtype=np.int64) if array is None else array)
    if array is None:
        bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "t.parquet"
    assert main(["import", str(bad), "--format", "exflow-npy", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and why in line
    assert files_under(tmp_path) == ["routing.npy"]


# ---- odd numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--seed", "-1", "integer >= 0"),
        ("--tokens", "1.5", "expected an integer"),
        ("--hidden", "nan", "expected an integer"),
        ("--zipf", "nan", "finite"),
        ("--zipf", "inf", "finite"),
        ("--zipf", "-1", ">= 0"),
        ("--experts", "0", ">= 1"),
        ("--seed", "--", "expected one value"),
    ],
)
def test_odd_numbers_are_usage_errors(
    option: str, value: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.parquet"
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(out), f"{option}={value}"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert option in line and why in line
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
@pytest.mark.parametrize("command", ["solve", "whatif"])
def test_time_limit_must_be_finite_and_positive(
    command: str, value: str, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--trace", str(tiny_trace), *CLUSTER, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"--time-limit={value}"])
    assert exit_info.value.code == 2
    assert "--time-limit" in one_error_line(capsys)
    assert files_under(tmp_path) == []


# ---- malformed metadata and empty traces --------------------------------------------------------------


def _rewrite(source: Path, target: Path, **meta_changes: object) -> Path:
    table = pq.read_table(source)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta.update(meta_changes)
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), target)
    return target


def _zero_tokens(source: Path, target: Path) -> Path:
    table = pq.read_table(source)
    pq.write_table(table.slice(0, 0), target)
    return target


TRACE_READERS = ("stats", "solve", "evaluate", "simulate", "whatif")


def _reader_argv(command: str, trace: Path, plan: Path, out: Path) -> list[str]:
    return {
        "stats": ["stats", "--trace", str(trace)],
        "solve": [
            "solve",
            "--trace",
            str(trace),
            *CLUSTER,
            "--solver",
            "greedy",
            "--out",
            str(out),
        ],
        "evaluate": ["evaluate", "--trace", str(trace), "--plan", str(plan), *CLUSTER],
        "simulate": ["simulate", "--trace", str(trace), "--plan", str(plan), *CLUSTER],
        "whatif": ["whatif", "--trace", str(trace), *CLUSTER, "--serial", "--out", str(out)],
    }[command]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"num_experts": "sixteen"}, "num_experts must be an integer"),
        ({"schema_version": "one"}, "schema_version 'one' not supported"),
        ({"top_k": 1.5}, "top_k must be an integer"),
        ({"hidden_size": True}, "hidden_size must be an integer"),
        ({"dispatch_bytes_per_elem": float("nan")}, "finite number"),
        ({"model_name": ["x"]}, "model_name must be a string"),
    ],
)
@pytest.mark.parametrize("command", TRACE_READERS)
def test_metadata_of_the_wrong_type(
    command: str,
    change: dict[str, object],
    why: str,
    tiny_trace: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = _rewrite(tiny_trace, tmp_path / "bad.parquet", **change)
    assert main(_reader_argv(command, trace, plan, tmp_path / "out")) == 2
    assert why in one_error_line(capsys)
    assert files_under(tmp_path) == ["bad.parquet"]


@pytest.mark.parametrize("command", TRACE_READERS)
def test_zero_token_trace(
    command: str, tiny_trace: Path, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used to crash stats, and solve wrote a plan for it (exit 0)."""
    trace = _zero_tokens(tiny_trace, tmp_path / "empty.parquet")
    assert main(_reader_argv(command, trace, plan, tmp_path / "out")) == 2
    line = one_error_line(capsys)
    assert "holds no tokens" in line and str(trace) in line
    assert files_under(tmp_path) == ["empty.parquet"]


def test_whatif_refuses_a_corrupt_trace_instead_of_infeasible_scenarios(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expert ids beyond num_experts: whatif used to compute 'infeasible' scenarios and exit 0."""
    trace = _rewrite(tiny_trace, tmp_path / "bad.parquet", num_experts=8)
    out = tmp_path / "out"
    assert main(["whatif", "--trace", str(trace), *CLUSTER, "--serial", "--out", str(out)]) == 2
    assert "out of range" in one_error_line(capsys)
    assert files_under(tmp_path) == ["bad.parquet"]
