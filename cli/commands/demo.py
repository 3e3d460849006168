"""``placement demo``: the main job end to end on the embedded default, with no arguments.

trace (the bundled tiny-MoE trace, else a synthetic one) -> stats and plots -> solver comparison ->
the best plan -> evaluation -> engine export -> simulation -> a what-if report. Everything lands in
``--out`` (default ``demo-out/``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from moe_placement.atomic import atomic_open
from moe_placement.cli.commands._common import Command, print_json
from moe_placement.traces.data import DEFAULT_TRACE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--trace", default=None, help="trace to use instead of the embedded default")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--redundant", type=int, default=8)
    p.add_argument("--time-limit", type=float, default=10.0)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON summary; each step's JSON goes to OUT/*.json",
    )


def default_trace(out: Path) -> Path:
    """The bundled tiny-MoE capture; a synthetic trace where a source tree lacks the data file."""
    if DEFAULT_TRACE.exists():
        return DEFAULT_TRACE
    from moe_placement.traces.synth import SynthConfig, generate

    path = out / "synthetic_trace.parquet"
    generate(SynthConfig(num_layers=4, num_experts=16, top_k=2, num_tokens=8192), path, seed=0)
    return path


# The simulation as DeepEP's normal kernels overlap two micro-batches; a two-axis what-if sweep.
SIMULATE_OPTIONS = ("--algo", "deepep", "--overlap", "two-batch")
WHATIF_SWEEP = ("--sweep", "gpus=4,8", "--sweep", "solver=contiguous,best")
# What a finished demo leaves in --out, for the closing line.
OUTPUTS = ("plan.json", "sglang_map.json", "stats/*.png", "whatif/report.html")


def demo_steps(args: argparse.Namespace, trace: Path, out: Path) -> list[tuple[str, list[str]]]:
    """``(title, placement argv)`` of each step, in order; later steps read what earlier ones wrote."""
    counts = ["--gpus", str(args.gpus), "--gpus-per-node", str(args.gpus_per_node)]
    problem = [
        "--trace",
        str(trace),
        *counts,
        "--redundant",
        str(args.redundant),
        "--time-limit",
        str(args.time_limit),
    ]
    plan = str(out / "plan.json")
    return [
        ("trace statistics", ["stats", "--trace", str(trace), "--plots", str(out / "stats")]),
        ("solver comparison", ["solve", *problem, "--solver", "all"]),
        ("best plan", ["solve", *problem, "--out", plan]),
        (
            "export for SGLang",
            ["export", "--plan", plan, "--format", "sglang", "--out", str(out / "sglang_map.json")],
        ),
        (
            "network simulation",
            ["simulate", "--trace", str(trace), "--plan", plan, *counts, *SIMULATE_OPTIONS],
        ),
        (
            "what-if report",
            ["whatif", "--trace", str(trace), *WHATIF_SWEEP, "--out", str(out / "whatif")],
        ),
    ]


def run_step(title: str, argv: list[str], json_target: Path | None) -> float:
    """Run one ``placement`` step in this process (its JSON into ``json_target`` if given); seconds."""
    from moe_placement.cli.main import main

    start = time.perf_counter()
    if json_target is not None:
        with atomic_open(json_target) as handle, contextlib.redirect_stdout(handle):
            code = main([*argv, "--json"])
    else:
        print(f"\n== {title}: placement {' '.join(argv)}", flush=True)
        code = main(argv)
    if code != 0:
        raise StepFailed(code)
    return time.perf_counter() - start


class StepFailed(Exception):  # noqa: N818  (not an error of the demo's own)
    """A step failed and has printed its own one-line error; the demo exits with its code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.trace:  # a bad trace is refused before anything is written
        from moe_placement.traces.reader import TraceFile

        TraceFile(args.trace).validate()
    out.mkdir(parents=True, exist_ok=True)
    trace = Path(args.trace) if args.trace else default_trace(out)
    results: list[dict[str, object]] = []
    for title, argv in demo_steps(args, trace, out):
        target = out / f"{argv[0]}_{len(results)}.json" if args.json else None
        try:
            seconds = run_step(title, argv, target)
        except StepFailed as failed:
            return failed.code
        step: dict[str, object] = {"step": title, "argv": argv, "seconds": round(seconds, 3)}
        results.append(step if target is None else {**step, "json": str(target)})
        if not args.json:
            print(f"   ({seconds:.1f} s)")
    if args.json:
        print_json({"out": str(out), "trace": str(trace), "steps": results})
    else:
        print(f"\ndemo finished: results in {out}/ ({', '.join(OUTPUTS)})")
    return 0


COMMAND = Command(
    "demo", "run the whole pipeline end to end on the embedded default trace", add_arguments, run
)
