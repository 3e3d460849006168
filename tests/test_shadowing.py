"""Import names a user's folders cannot shadow (issue 12).

The project's folders install under one import root, ``moe_placement``. Before that they were top-level
packages (``reports``, ``traces``, ...), and a Ray worker, which puts its working directory on the import
path, imported a user's empty ``reports/`` folder instead: ``placement whatif`` crashed with a traceback.
Here ``placement whatif`` (through Ray) and ``placement validate`` (two gloo workers) run from a working
directory that holds, for every package and old import name, a folder with an empty ``__init__.py`` and
an empty folder (a namespace package); both kinds are also put on ``PYTHONPATH``, so that the driver,
which does not import from its working directory, sees them as well.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_placement.cli.main import main

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
# Import name -> the repository folder it must come from (pyproject's package-dir).
PACKAGES = {
    "moe_placement": "placement",
    "moe_placement.traces": "traces",
    "moe_placement.solvers": "solvers",
    "moe_placement.simulator": "simulator",
    "moe_placement.executor": "executor",
    "moe_placement.pipeline": "pipeline",
    "moe_placement.reports": "reports",
    "moe_placement.cli": "cli",
}
SHADOW_NAMES = tuple(PACKAGES.values())  # the folders, which were also the old import names
PLACEMENT = Path(sys.executable).with_name("placement")


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A working directory full of look-alike packages, a tiny trace and a plan for 2 GPUs."""
    root = tmp_path_factory.mktemp("shadow")
    cwd, empty = root / "work", root / "work" / "empty"
    for name in SHADOW_NAMES:
        (cwd / name).mkdir(parents=True)
        (cwd / name / "__init__.py").write_text("")
        (empty / name).mkdir(parents=True)
    trace, plan = root / "t.parquet", root / "plan.json"
    synth = ["synth", "--out", str(trace), "--layers", "2", "--experts", "8", "--top-k", "2"]
    assert main([*synth, "--tokens", "512", "--seed", "3", "--hidden", "128"]) == 0
    solve = ["solve", "--trace", str(trace), "--gpus", "2", "--gpus-per-node", "2"]
    assert main([*solve, "--solver", "greedy", "--out", str(plan), "--json"]) == 0
    return {"cwd": cwd, "empty": empty, "trace": trace, "plan": plan, "root": root}


def run_in(shadowed: dict[str, Path], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the shadowed working directory, with both kinds of look-alikes on the path."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a local Ray, started by the command itself
    paths = [str(shadowed["cwd"]), str(shadowed["empty"]), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.run(
        argv, cwd=shadowed["cwd"], env=env, capture_output=True, text=True, timeout=300
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_packages_resolve_into_the_repository() -> None:
    for name, folder in PACKAGES.items():
        module = importlib.import_module(name)
        assert module.__file__ is not None, name
        assert Path(module.__file__).resolve().parent == (REPO / folder).resolve(), name


def test_look_alikes_shadow_the_bare_names_but_not_moe_placement(
    shadowed: dict[str, Path],
) -> None:
    """The set-up really shadows: ``import reports`` finds the user's folder; ours stay ours."""
    probe = (
        "import importlib, sys\n"
        f"for bare, name in {list(zip(SHADOW_NAMES, PACKAGES, strict=True))!r}:\n"
        "    print(bare, importlib.import_module(bare).__file__)\n"
        "    print(name, importlib.import_module(name).__file__)\n"
    )
    result = run_in(shadowed, sys.executable, "-c", probe)
    assert_clean(result)
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    cwd = shadowed["cwd"].resolve()
    for bare, name in zip(SHADOW_NAMES, PACKAGES, strict=True):
        assert Path(found[bare]).resolve() == cwd / bare / "__init__.py", bare
        assert Path(found[name]).resolve().parent == (REPO / PACKAGES[name]).resolve(), name


@pytest.mark.skipif(not PLACEMENT.exists(), reason="the placement entry point is not installed")
def test_whatif_through_ray_from_a_shadowed_directory(shadowed: dict[str, Path]) -> None:
    out = shadowed["root"] / "whatif"
    sweep = ["--sweep", "gpus=2,4", "--solver", "greedy", "--no-reference-solvers"]
    small = ["--gpus-per-node", "2", "--tokens-per-gpu", "256", "--time-limit", "2"]
    result = run_in(
        shadowed,
        str(PLACEMENT),
        "whatif",
        "--trace",
        str(shadowed["trace"]),
        *sweep,
        *small,
        "--num-cpus",
        "2",
        "--out",
        str(out),
    )
    assert_clean(result)
    assert "2 computed (ray)" in result.stdout + result.stderr
    assert (out / "report.html").stat().st_size > 0


@pytest.mark.skipif(not PLACEMENT.exists(), reason="the placement entry point is not installed")
def test_validate_with_gloo_workers_from_a_shadowed_directory(shadowed: dict[str, Path]) -> None:
    pytest.importorskip("torch")
    out = shadowed["root"] / "validate.json"
    plan = ["--trace", str(shadowed["trace"]), "--plan", str(shadowed["plan"])]
    short = ["--reps", "1", "--rounds", "1", "--warmup", "0", "--no-overlap"]
    result = run_in(
        shadowed,
        str(PLACEMENT),
        "validate",
        *plan,
        "--workers",
        "2",
        *short,
        "--json",
        "--out",
        str(out),
    )
    assert_clean(result)
    assert out.stat().st_size > 0
