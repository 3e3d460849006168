"""Real signals sent to a real ``placement`` process: SIGINT during ``solve`` writes the best plan so far,
a second SIGINT exits at once (130), SIGTERM cleans up and exits 143, SIGTERM during ``capture`` leaves no
temporary file.

Each test starts the ``placement`` entry point (or ``python -m moe_placement.cli.main``) with its
progress lines on and signals once the command is at work: ``solve`` once it says "solving with" (and a
moment more, inside the search), ``capture`` once its temporary trace file exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "data" / "tiny_moe_trace.parquet"

# a search that would run far past the test's budget if the signal were not honoured
LONG_SOLVE = [
    "solve",
    "--trace",
    str(TRACE),
    "--gpus",
    "8",
    "--gpus-per-node",
    "4",
    "--redundant",
    "8",
    "--time-limit",
    "120",
]


def _command() -> list[str]:
    """The installed ``placement`` entry point next to this interpreter, else ``python -m``."""
    entry = Path(sys.executable).parent / "placement"
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "moe_placement.cli.main"]


class _Run:
    """A ``placement`` process with its stderr in a file, so the test can watch what it says."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        logs = cwd / "logs"
        logs.mkdir()
        self.stderr_path = logs / "stderr.txt"
        # progress lines on (placement: solving with best...): the test waits for the search to start
        env = {**os.environ, "PLACEMENT_PROGRESS": "1"}
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [*_command(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=env
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, text: str, limit_s: float = 120.0) -> None:
        """Wait until stderr says ``text`` (a loaded machine imports and reads slowly)."""
        deadline = time.monotonic() + limit_s
        while text not in self.stderr():
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, f"never said {text!r}: {self.stderr()}"
            time.sleep(0.05)

    def finish(self, timeout_s: float) -> tuple[int, str, float]:
        start = time.monotonic()
        rc = self.proc.wait(timeout=timeout_s)
        return rc, self.stderr(), time.monotonic() - start


def _solving(args: list[str], cwd: Path) -> _Run:
    """``placement solve ARGS``, returned once its search runs."""
    run = _Run(args, cwd)
    run.wait_for("solving with")
    time.sleep(1.5)  # inside the search: the baselines are scored first
    return run


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name)


def test_sigint_during_solve_writes_the_best_plan_so_far(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    run = _solving([*LONG_SOLVE, "--out", str(out)], tmp_path)
    run.proc.send_signal(signal.SIGINT)
    rc, stderr, answer_s = run.finish(timeout_s=30)
    assert rc == 0, stderr
    assert answer_s < 15, f"took {answer_s:.1f} s to stop"
    assert "stopped by the user" in stderr
    assert "Traceback" not in stderr
    plan = json.loads(out.read_text())  # whole: it parses, and it is a valid plan
    prov = plan["provenance"]
    assert prov["extra"]["stopped"] == "stopped by the user"
    assert 0.0 <= prov["gap"] <= 1.0
    assert prov["seconds"] < 60  # it stopped early, far inside the 120 s limit
    from moe_placement.plan import Plan

    Plan.load(out).validate()
    assert _leftovers(tmp_path) == []


def test_second_sigint_exits_at_once_with_130(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    run = _solving([*LONG_SOLVE, "--out", str(out)], tmp_path)
    run.proc.send_signal(signal.SIGINT)
    # the second once the first has been taken (not a fixed delay: on a loaded machine the whole graceful
    # stop could be over before it, and an idle one could coalesce two close signals into one)
    run.wait_for("stopping:", limit_s=30)
    run.proc.send_signal(signal.SIGINT)
    rc, stderr, answer_s = run.finish(timeout_s=30)
    # 130, or killed by SIGINT itself (-2, which a shell also reports as 130): when the first SIGINT
    # already let the plan be written, the second can land while Python shuts down, and Python then
    # ends by SIGINT rather than with an exit code
    assert rc in (130, -signal.SIGINT), stderr
    assert answer_s < 10, f"took {answer_s:.1f} s to exit"
    assert "Traceback" not in stderr
    assert not out.exists() or json.loads(out.read_text())  # nothing, or a whole plan
    assert _leftovers(tmp_path) == []


def test_sigterm_during_solve_cleans_up_and_exits_143(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    run = _solving([*LONG_SOLVE, "--out", str(out)], tmp_path)
    run.proc.send_signal(signal.SIGTERM)
    rc, stderr, answer_s = run.finish(timeout_s=30)
    assert rc == 143, stderr
    assert answer_s < 10, f"took {answer_s:.1f} s to exit"
    assert "terminated" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_sigterm_during_capture_leaves_no_temporary_file(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "run.parquet"
    # enough tokens that the capture is still writing when the signal comes
    run = _Run(["capture", "--out", str(out), "--tokens", "300000"], tmp_path)
    deadline = time.monotonic() + 120  # a loaded machine tokenises slowly
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # writing has begun
        assert run.proc.poll() is None, run.stderr()
        assert time.monotonic() < deadline, "capture never started writing"
        time.sleep(0.01)
    run.proc.send_signal(signal.SIGTERM)
    rc, stderr, _ = run.finish(timeout_s=30)
    assert rc == 143, stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("extra", [[], ["--solver", "greedy"]])
def test_solve_without_a_signal_is_not_stopped_by_the_user(
    extra: list[str], tmp_path: Path
) -> None:
    """Without a signal, solve under the handlers answers as before (exit 0, no stop mark)."""
    out = tmp_path / "plan.json"
    args = [*LONG_SOLVE[:-2], "--time-limit", "1", *extra, "--out", str(out)]
    rc, stderr, _ = _Run(args, tmp_path).finish(timeout_s=60)
    assert rc == 0, stderr
    # a loaded machine may reach the time limit's wall edge ("time limit reached"), never a user's stop
    stopped = json.loads(out.read_text())["provenance"]["extra"].get("stopped")
    assert stopped in (None, "time limit reached")
    assert "stopping" not in stderr


def _signal_right_after_creation(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """``module.create_new`` creates its file, then a SIGTERM lands at once (before any caller could
    learn the file's name from a return value: where mkstemp left a temporary file behind)."""
    from moe_placement import atomic
    from moe_placement.interrupt import Terminated

    create = atomic.create_new  # the real one, whichever module is patched

    def create_then_terminated(path: Path) -> bool:
        create(path)
        raise Terminated

    monkeypatch.setattr(module, "create_new", create_then_terminated)


def test_a_signal_as_the_temporary_file_appears_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from moe_placement import atomic
    from moe_placement.interrupt import Terminated
    from moe_placement.traces import writer
    from moe_placement.traces.schema import TraceMeta

    _signal_right_after_creation(monkeypatch, atomic)
    with pytest.raises(Terminated):
        atomic.write_json(tmp_path / "plan.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    _signal_right_after_creation(monkeypatch, writer)
    meta = TraceMeta("m", 1, 4, 1, hidden_size=8, expert_intermediate_size=8)
    with pytest.raises(Terminated):
        writer.TraceWriter(tmp_path / "run.parquet", meta)
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_removes_what_a_signal_left(tmp_path: Path) -> None:
    """A temporary file whose maker a signal stopped before anything could remove it (between its
    creation and the caller's ``finally``) is removed as the command ends on that signal; a result
    renamed into place is not touched."""
    from moe_placement import atomic

    path = next(atomic.temporary_names(tmp_path / "plan.json", ".tmp"))
    assert atomic.create_new(path) and path.exists()
    atomic.write_json(tmp_path / "kept.json", {"a": 1})
    atomic.remove_leftovers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]
