"""Simulator speed on the command users run, beside the previous engine.

Times ``placement simulate --traffic uniform --gpus G --gpus-per-node 8 --tokens 4096 --hidden 7168
--top-k 8 --node-limit 4 --algo deepep --json`` (``--experts G`` past 256 GPUs, one expert per GPU),
each in its own process as a user starts it, with the kernels already compiled:

* ``exact``: the event simulation of this checkout, in its compiled event loop (the default);
* ``simpy``: the same event simulation as SimPy processes (``--event-loop simpy``), the engine the
  compiled loop replaced for uniform phases;
* ``fast``: this checkout's ``--fast`` analytical path (simulator/fast.py, stated error bound);
* ``window``: the event simulation with ``--finish-window 3e-3`` (finishes within 0.3% of the
  simulated time end in one event; stated error bound, simulator/moe.py);
* ``previous``: the same command on a recorded git revision (default: the revision before the
  simulator-speed work), extracted once into a cache folder and run with its own numba cache.

Prints per GPU count and engine: simulated dispatch and combine us (per phase, one all-to-all),
wall and CPU seconds of the whole process (CPU is the steadier figure on a shared machine), events of
the fluid network, peak resident memory (MB); ``-`` where
an engine is skipped (``--skip``) or ran past ``--timeout``.

    .venv/bin/python bench/simulator_scaling.py          # 64, 128, 256, 1024 (SimPy, previous <= 256)
    .venv/bin/python bench/simulator_scaling.py --gpus 64 --engines exact,simpy,fast
    .venv/bin/python bench/simulator_scaling.py --gpus 1024 --engines exact,window,fast --timeout 900
    .venv/bin/python bench/simulator_scaling.py --gpus 64 --engines fast --forward-layers 58 \\
        --forward-engines fast,exact
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from moe_placement.cli.commands._common import table

REPO = Path(__file__).resolve().parents[1]
# The last revision before the speed work of issue 15 (the engine the issue measured at 5.7-6.1 s of
# simulation for 64 GPUs, 58 s wall for 256).
PREVIOUS_REVISION = "baba18b"
# Top folders that install as moe_placement.<folder> (pyproject's package-dir); placement/ is the root.
PACKAGES = ("traces", "solvers", "simulator", "executor", "pipeline", "reports", "cli")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe-placement-bench"

# Runs the CLI in-process and reports its own peak memory (ru_maxrss, KB on Linux) on the last line.
_RUNNER = (
    "import json, resource, sys\n"
    "from moe_placement.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "use = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(json.dumps({'rc': rc, 'peak_kb': use.ru_maxrss, 'cpu_s': use.ru_utime + use.ru_stime}))\n"
)


# the most GPUs each engine is run at by default (the SimPy paths take minutes beyond 256)
DEEPSEEK_EXPERTS = 256
MAX_GPUS = {"exact": 1024, "simpy": 256, "previous": 256, "window": 1 << 30, "fast": 1 << 30}
# the window of the ``window`` engine: simulator.moe.COARSE_FINISH_WINDOW
WINDOW = "3e-3"


def command(gpus: int, engine: str) -> list[str]:
    """The user's command line (without the program name) for ``engine``."""
    argv = ["simulate", "--traffic", "uniform", "--gpus", str(gpus), "--gpus-per-node", "8"]
    argv += ["--tokens", "4096", "--hidden", "7168", "--top-k", "8", "--node-limit", "4"]
    argv += ["--algo", "deepep", "--json"]
    if gpus > DEEPSEEK_EXPERTS:  # one expert per GPU once DeepSeek-V3's 256 no longer cover them
        argv += ["--experts", str(gpus)]
    if engine == "fast":
        argv.append("--fast")
    if engine == "window":
        argv += ["--finish-window", WINDOW]
    if engine == "simpy":
        argv += ["--event-loop", "simpy"]
    return argv


def previous_tree(revision: str) -> Path:
    """A folder whose ``moe_placement`` package is ``revision``'s code (extracted once, then reused)."""
    root = CACHE / revision
    pkg = root / "pkg"
    if (pkg / "moe_placement").exists():
        return pkg
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as archive:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", revision, "placement", *PACKAGES],
            stdout=archive,
            check=True,
        )
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(src, filter="data")
    for name in PACKAGES:  # moe_placement.<name> lives in the sibling folder <name>/
        (src / "placement" / name).symlink_to(src / name, target_is_directory=True)
    pkg.mkdir(exist_ok=True)
    (pkg / "moe_placement").symlink_to(src / "placement", target_is_directory=True)
    return pkg


def run_once(argv: list[str], pythonpath: Path | None, timeout_s: float) -> dict[str, Any] | None:
    """One process running the CLI; None when it ran past ``timeout_s``, ``{"failed": why}`` when it
    failed."""
    env = dict(os.environ)
    if pythonpath is not None:
        # ahead of the editable install's finder (appended to sys.meta_path after the path finder)
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return None
    wall_s = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        why = proc.stderr.strip()[-300:]
        print(f"  failed: {' '.join(argv)}: {why}", file=sys.stderr)
        return {"failed": why}
    tail = json.loads(lines[-1])
    result = json.loads("\n".join(lines[:-1]))
    return {
        **result,
        "process_wall_s": wall_s,
        "process_cpu_s": tail["cpu_s"],
        "peak_mb": tail["peak_kb"] / 1024.0,
    }


def warm(pythonpath: Path | None, engine: str) -> None:
    """Compile (or load) the kernels of one code tree once, outside the timings."""
    run_once(command(16, engine), pythonpath, timeout_s=900)


def forward_ep64(layers: int, fast: bool) -> dict[str, float]:
    """A DeepSeek-V3 forward (``layers`` MoE layers) at EP64 from a load-only workload (log-normal loads),
    DeepEP, in this process (kernels compiled): simulated us, events, wall s."""
    import numpy as np

    from moe_placement.cluster import load_cluster
    from moe_placement.plan import Plan, Provenance
    from moe_placement.shapes import model_shape
    from moe_placement.simulator import simulate_moe
    from moe_placement.workload import Workload

    shape = model_shape("deepseek-v3")
    rng = np.random.default_rng(0)
    load = rng.lognormal(0.0, 0.6, (layers, shape.num_experts)) * 1000.0
    tokens = int(load.sum(axis=1).mean() / shape.top_k)
    workload = Workload(
        shape=shape.replace(num_moe_layers=layers), load=load, num_tokens=tokens, source="bench"
    )
    phy2log = np.tile(np.arange(shape.num_experts), (layers, 1))
    plan = Plan(64, 8, shape.num_experts // 64, phy2log, provenance=Provenance("round-robin"))
    cluster = load_cluster("h800-mpft").with_counts(64, 8)
    t0, c0 = time.perf_counter(), time.process_time()
    res = simulate_moe(plan, cluster, workload, algo="deepep", progress=False, fast=fast)
    return {
        "sim_us": res.total_us,
        "events": res.stats.get("events", 0),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="64,128,256,1024", help="comma-separated GPU counts")
    parser.add_argument(
        "--engines",
        default="exact,window,simpy,fast,previous",
        help="any of exact, window, simpy, fast, previous",
    )
    parser.add_argument("--previous", default=PREVIOUS_REVISION, help="git revision to compare")
    parser.add_argument(
        "--max-gpus",
        default=",".join(f"{k}={v}" for k, v in MAX_GPUS.items() if v < 1 << 30),
        help="the most GPUs each engine runs at, e.g. simpy=128,exact=256",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    parser.add_argument(
        "--forward-layers",
        type=int,
        default=0,
        help="also a DeepSeek-V3 forward of this many layers",
    )
    parser.add_argument(
        "--forward-engines",
        default="fast,exact",
        help="engines of the forward: fast and/or exact (the event simulation, SimPy)",
    )
    args = parser.parse_args()
    limits = dict(MAX_GPUS)
    for item in args.max_gpus.split(","):
        name, _, value = item.partition("=")
        if name.strip():
            limits[name.strip()] = int(value)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    trees: dict[str, Path | None] = {"exact": None, "window": None, "simpy": None, "fast": None}
    unknown = sorted(set(engines) - set(trees) - {"previous"})
    if unknown:
        parser.error(f"unknown engine(s): {', '.join(unknown)}")
    if "previous" in engines:
        trees["previous"] = previous_tree(args.previous)
    for engine in engines:
        warm(trees[engine], engine)
    rows = []
    for gpus in [int(x) for x in args.gpus.split(",")]:
        for engine in engines:
            if gpus > limits.get(engine, 0):
                rows.append([gpus, engine, "-", "-", "skipped", "-", "-", "-"])
                continue
            res = run_once(command(gpus, engine), trees[engine], args.timeout)
            if res is None or "failed" in res:
                ran = f">{args.timeout:.0f}" if res is None else "failed"
                rows.append([gpus, engine, "-", "-", ran, "-", "-", "-"])
                continue
            rows.append(
                [
                    gpus,
                    engine,
                    res["dispatch_us"],
                    res["combine_us"],
                    res["process_wall_s"],
                    res["process_cpu_s"],
                    res.get("events", "-"),
                    res["peak_mb"],
                ]
            )
            print(
                f"  {gpus} GPUs, {engine}: {res['dispatch_us']:.1f} / {res['combine_us']:.1f} us, "
                f"{res['process_wall_s']:.1f} s wall, {res['process_cpu_s']:.1f} s CPU, "
                f"{res['peak_mb']:.0f} MB",
                flush=True,
            )
    headers = ["GPUs", "engine", "dispatch us", "combine us", "wall s (process)", "cpu s", "events"]
    print(table([*headers, "peak MB"], rows))
    if args.forward_layers:
        for engine in args.forward_engines.split(","):
            f = forward_ep64(args.forward_layers, fast=engine.strip() == "fast")
            print(
                f"DeepSeek-V3 forward, {args.forward_layers} MoE layers at EP64 (deepep, {engine}): "
                f"{f['sim_us']:.1f} us simulated per forward, {f['events']} events, "
                f"{f['wall_s']:.1f} s wall, {f['cpu_s']:.1f} s CPU"
            )


if __name__ == "__main__":
    main()
