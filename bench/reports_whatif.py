"""Benchmark of ``placement whatif``: the same sweep serially, on a local Ray, and re-run from the cache.

Run: ``.venv/bin/python bench/reports_whatif.py`` (short: a 4-layer, 16-expert synthetic trace, 2-8 GPUs)
or ``--full`` (64 experts, 8 layers, 8-32 GPUs). Prints one table row per run: wall seconds, scenarios
computed, seconds per computed scenario, and whether the results matched the serial run.

``--dsv3 FILE`` runs the capacity question on a DeepSeek-V3 ``logical_count`` JSON (the shared loads in
``../shared/data/dsv3-expert-loads/``): 32/64/128 GPUs x 0/32/64 redundant experts, solver ``best`` plus
the reference layouts, and prints whatif's own table (per model, per step) with its wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from moe_placement.cli.main import main
from moe_placement.pipeline.results import load_results
from moe_placement.pipeline.sweep import ray_available
from moe_placement.traces.synth import SynthConfig, generate

TIMING_COLUMNS = ["solve_s", "wall_s"]


def _run(argv: list[str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main([*argv, "--json"])
    if code != 0:
        sys.exit(f"placement {' '.join(argv)} exited {code}")
    return time.perf_counter() - start, json.loads(out.getvalue())


def bench(full: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trace = root / "trace.parquet"
        if full:
            config = SynthConfig(num_layers=8, num_experts=64, top_k=4, num_tokens=16384)
            sweep = ["gpus=8,16,32", "nic_gbps=200,400", "overlap=none,two-batch"]
            per_node = "8"
        else:
            config = SynthConfig(num_layers=4, num_experts=16, top_k=2, num_tokens=4096)
            sweep = ["gpus=2,4,8", "nic_gbps=200,400", "overlap=none,two-batch"]
            per_node = "4"
        generate(config, trace, seed=0)
        common = [
            "whatif",
            "--trace",
            str(trace),
            "--gpus-per-node",
            per_node,
            "--solver",
            "greedy",
        ]
        for item in sweep:
            common += ["--sweep", item]
        rows = []
        serial_out = root / "serial"
        wall, info = _run([*common, "--serial", "--out", str(serial_out)])
        rows.append(
            [
                "serial",
                info["scenarios_run"],
                info["computed"],
                wall,
                wall / max(info["computed"], 1),
                "-",
            ]
        )
        wall, info = _run([*common, "--serial", "--out", str(serial_out)])
        rows.append(
            ["serial, cached", info["scenarios_run"], info["computed"], wall, float("nan"), "-"]
        )
        if ray_available():
            ray_out = root / "ray"
            wall, info = _run([*common, "--out", str(ray_out)])
            a, _, _ = load_results(serial_out)
            b, _, _ = load_results(ray_out)
            same = a.drop(columns=TIMING_COLUMNS).equals(b.drop(columns=TIMING_COLUMNS))
            rows.append(
                [
                    "ray (2 CPUs)",
                    info["scenarios_run"],
                    info["computed"],
                    wall,
                    wall / max(info["computed"], 1),
                    "yes" if same else "NO",
                ]
            )
        print(
            f"trace: {config.num_layers} layers x {config.num_experts} experts, top-{config.top_k}, "
            f"{config.num_tokens} tokens; sweep {' '.join(sweep)} (+ contiguous, eplb); engine {info['engine']}"
        )
        frame = pd.DataFrame(
            rows,
            columns=["run", "scenarios", "computed", "wall s", "s per scenario", "same as serial"],
        )
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def bench_dsv3(path: str, target_tokens_per_s: float) -> None:
    """The closing note's grid on real DeepSeek-V3 loads, with its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "whatif",
            "--trace",
            path,
            "--gpus-per-node",
            "8",
            "--sweep",
            "gpus=32,64,128",
            "--sweep",
            "redundant=0,32,64",
            "--target-tokens-per-s",
            f"{target_tokens_per_s:g}",
            "--out",
            str(Path(tmp) / "out"),
        ]
        start = time.perf_counter()
        code = main(argv)
        print(f"wall {time.perf_counter() - start:.0f} s (exit {code})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the larger sweep")
    parser.add_argument(
        "--dsv3", default=None, metavar="FILE", help="a DeepSeek-V3 logical_count JSON"
    )
    parser.add_argument(
        "--target-tokens-per-s", type=float, default=1e5, help="with --dsv3: the throughput target"
    )
    args = parser.parse_args()
    if args.dsv3:
        bench_dsv3(args.dsv3, args.target_tokens_per_s)
    else:
        bench(args.full)
