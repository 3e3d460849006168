"""Real signals sent to a real ``placement`` process: SIGINT during ``solve`` writes the best plan so far,
a second SIGINT exits at once (130), SIGTERM cleans up and exits 143, SIGTERM during ``capture`` leaves no
temporary file.

Each test starts the ``placement`` entry point (or ``python -m moe_placement.cli.main``) and waits until the command is at work before it
signals: the process catches SIGTERM (``/proc/PID/status`` SigCgt) once ``main`` runs the command, and
then a short settling time lets ``solve`` read the tiny trace and enter its search.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "data" / "tiny_moe_trace.parquet"

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

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


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*_command(), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _wait_at_work(proc: subprocess.Popen[str], settle_s: float, limit_s: float = 60.0) -> None:
    """Wait until ``main`` runs the command (it then catches SIGTERM), then ``settle_s`` more."""
    deadline = time.monotonic() + limit_s
    while not _catches_sigterm(proc.pid):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    time.sleep(settle_s)


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str, float]:
    start = time.monotonic()
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err, time.monotonic() - start


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name)


def test_sigint_during_solve_writes_the_best_plan_so_far(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = _start([*LONG_SOLVE, "--out", str(out)], tmp_path)
    _wait_at_work(proc, settle_s=3.0)
    proc.send_signal(signal.SIGINT)
    rc, _, stderr, answer_s = _finish(proc, timeout_s=30)
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
    proc = _start([*LONG_SOLVE, "--out", str(out)], tmp_path)
    _wait_at_work(proc, settle_s=3.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc, _, stderr, answer_s = _finish(proc, timeout_s=30)
    assert rc == 130, stderr
    assert answer_s < 10, f"took {answer_s:.1f} s to exit"
    assert "Traceback" not in stderr
    assert not out.exists() or json.loads(out.read_text())  # nothing, or a whole plan
    assert _leftovers(tmp_path) == []


def test_sigterm_during_solve_cleans_up_and_exits_143(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = _start([*LONG_SOLVE, "--out", str(out)], tmp_path)
    _wait_at_work(proc, settle_s=3.0)
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr, answer_s = _finish(proc, timeout_s=30)
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
    proc = _start(["capture", "--out", str(out), "--tokens", "300000"], tmp_path)
    _wait_at_work(proc, settle_s=0.0)
    deadline = time.monotonic() + 120  # a loaded machine tokenises slowly
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # writing has begun
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "capture never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr, _ = _finish(proc, timeout_s=30)
    assert rc == 143, stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("extra", [[], ["--solver", "greedy"]])
def test_solve_without_a_signal_is_not_marked_stopped(extra: list[str], tmp_path: Path) -> None:
    """Without a signal, solve under the handlers answers as before (exit 0, no stop mark)."""
    out = tmp_path / "plan.json"
    args = [*LONG_SOLVE[:-2], "--time-limit", "1", *extra, "--out", str(out)]
    proc = _start(args, tmp_path)
    rc, _, stderr, _ = _finish(proc, timeout_s=60)
    assert rc == 0, stderr
    assert "stopped" not in json.loads(out.read_text())["provenance"]["extra"]
