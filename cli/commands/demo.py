"""``placement demo``: the main job end to end on the embedded default, with no arguments.

trace (the bundled tiny-MoE trace, else a synthetic one) -> stats and plots -> solver comparison ->
the best plan -> evaluation -> engine export -> simulation and a what-if report (when those components
are installed). Everything lands in ``--out`` (default ``demo-out/``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from pathlib import Path

from moe_placement.atomic import atomic_open
from moe_placement.cli.commands._common import Command, print_json
from moe_placement.errors import PlacementError


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


def bundled_trace() -> Path | None:
    """The bundled tiny-MoE capture, if this install ships it."""
    try:
        path = Path(importlib.import_module("moe_placement.traces.data").DEFAULT_TRACE)
    except (ImportError, AttributeError):
        return None
    return path if path.exists() else None


def default_trace(out: Path) -> Path:
    bundled = bundled_trace()
    if bundled is not None:
        return bundled
    from moe_placement.traces.synth import SynthConfig, generate

    path = out / "synthetic_trace.parquet"
    generate(SynthConfig(num_layers=4, num_experts=16, top_k=2, num_tokens=8192), path, seed=0)
    return path


def run(args: argparse.Namespace) -> int:
    from moe_placement.cli.main import discover, main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commands = {c.name for c in discover()}
    trace = Path(args.trace) if args.trace else default_trace(out)
    counts = ["--gpus", str(args.gpus), "--gpus-per-node", str(args.gpus_per_node)]
    plan = out / "plan.json"
    steps: list[tuple[str, list[str]]] = [
        ("trace statistics", ["stats", "--trace", str(trace), "--plots", str(out / "stats")]),
        (
            "solver comparison",
            [
                "solve",
                "--trace",
                str(trace),
                *counts,
                "--redundant",
                str(args.redundant),
                "--solver",
                "all",
                "--time-limit",
                str(args.time_limit),
            ],
        ),
        (
            "best plan",
            [
                "solve",
                "--trace",
                str(trace),
                *counts,
                "--redundant",
                str(args.redundant),
                "--time-limit",
                str(args.time_limit),
                "--out",
                str(plan),
            ],
        ),
        (
            "export for SGLang",
            [
                "export",
                "--plan",
                str(plan),
                "--format",
                "sglang",
                "--out",
                str(out / "sglang_map.json"),
            ],
        ),
    ]
    if "simulate" in commands:
        steps.append(
            (
                "network simulation",
                [
                    "simulate",
                    "--trace",
                    str(trace),
                    "--plan",
                    str(plan),
                    *counts,
                    "--algo",
                    "deepep",
                    "--overlap",
                    "two-batch",
                ],
            )
        )
    if "whatif" in commands:
        steps.append(
            (
                "what-if report",
                [
                    "whatif",
                    "--trace",
                    str(trace),
                    "--sweep",
                    "gpus=4,8",
                    "--sweep",
                    "solver=contiguous,best",
                    "--out",
                    str(out / "whatif"),
                ],
            )
        )
    results: list[dict[str, object]] = []
    for title, argv in steps:
        start = time.perf_counter()
        if args.json:
            target = out / f"{argv[0]}_{len(results)}.json"
            with atomic_open(target) as handle, contextlib.redirect_stdout(handle):
                code = main([*argv, "--json"])
        else:
            print(f"\n== {title}: placement {' '.join(argv)}", flush=True)
            code = main(argv)
        if code != 0:
            raise PlacementError(f"demo step '{title}' failed with exit code {code}")
        seconds = time.perf_counter() - start
        results.append(
            {
                "step": title,
                "argv": argv,
                "seconds": round(seconds, 3),
                **({"json": str(target)} if args.json else {}),
            }
        )
        if not args.json:
            print(f"   ({seconds:.1f} s)")
    if args.json:
        print_json({"out": str(out), "trace": str(trace), "steps": results})
        return 0
    print(
        f"\ndemo finished: results in {out}/ (plan.json, sglang_map.json, stats/*.png"
        + (", whatif/report.html" if "whatif" in commands else "")
        + ")"
    )
    return 0


COMMAND = Command(
    "demo", "run the whole pipeline end to end on the embedded default trace", add_arguments, run
)
