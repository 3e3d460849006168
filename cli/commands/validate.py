"""``placement validate``: run a plan (and a baseline) on real collectives and compare with the simulator."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from moe_placement.cli.commands._common import CheckFailed, Command, print_json, table
from moe_placement.errors import PlacementError
from moe_placement.workload import HOME_POLICIES

if TYPE_CHECKING:
    from moe_placement.executor.driver import ExecConfig


def add_exec_args(p: argparse.ArgumentParser) -> None:
    """Options shared by validate and calibrate: where and how the workers run."""
    p.add_argument(
        "--workers", type=int, required=True, help="ranks (one per GPU, or CPU processes)"
    )
    p.add_argument(
        "--backend", default="gloo", choices=("gloo", "nccl"), help="gloo on CPU, nccl on GPUs"
    )
    p.add_argument(
        "--address", default=None, help="existing Ray cluster (default: start a local one)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a worker may be silent before the run is aborted (default 120)",
    )
    p.add_argument(
        "--hidden-scale",
        type=float,
        default=1.0,
        help="scale hidden and expert sizes (e.g. 0.125 on CPU)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="activation and weight dtype (default float32 on gloo, bfloat16 on nccl)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default cores/workers)"
    )
    p.add_argument("--json", action="store_true")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="per-token trace (Parquet)")
    p.add_argument("--plan", required=True, help="plan JSON to measure")
    p.add_argument(
        "--baseline-plan", default=None, help="plan JSON to compare with (e.g. contiguous)"
    )
    add_exec_args(p)
    p.add_argument(
        "--cluster",
        default=None,
        help="calibrated cluster spec for the prediction (default: calibrate on the workers first)",
    )
    p.add_argument(
        "--tokens", type=int, default=None, help="replay the first N tokens (default all)"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="repetitions per round")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved rounds of calibration and replays, pooled (1: calibrate, then replay); each "
        "round repeats the calibration and every replay, so the run's time grows with it; 2 already "
        "let a change of the host's load hit calibration, plan and baseline alike",
    )
    p.add_argument("--chunks", type=int, default=4, help="chunks of the pipelined (overlap) run")
    p.add_argument("--no-overlap", action="store_true", help="skip the pipelined run")
    p.add_argument("--home", default="token", choices=HOME_POLICIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-error",
        type=float,
        default=None,
        help="fail (exit 1) when the mean per-layer |simulated/measured - 1| exceeds this",
    )
    p.add_argument("--out", default=None, help="also write the JSON report here")
    # Test hook: make a worker really fail ('RANK:die|hang|oom[:LAYER]'); not for users.
    p.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)


def parse_fault(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    parts = text.split(":")
    try:
        fault = {
            "rank": int(parts[0]),
            "kind": parts[1],
            "layer": int(parts[2]) if len(parts) > 2 else 0,
        }
    except (IndexError, ValueError):
        raise PlacementError("--inject-fault must be RANK:die|hang|oom[:LAYER]") from None
    if fault["kind"] not in ("die", "hang", "oom"):
        raise PlacementError("--inject-fault kind must be die, hang or oom")
    return fault


def exec_config(args: argparse.Namespace, **extra: Any) -> ExecConfig:
    from moe_placement.executor.driver import ExecConfig

    return ExecConfig(
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        timeout_s=args.timeout,
        hidden_scale=args.hidden_scale,
        dtype=args.dtype,
        threads=args.threads,
        **extra,
    )


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['tokens']} tokens, {report['workers']} workers ({report['backend']}, "
        f"{', '.join(report['devices'])}), hidden {report['hidden_size']}, {report['dtype']}; "
        f"prediction with {report['cluster']}"
    )
    for what, res in report["plans"].items():
        rows = []
        for r in res["layers"]:
            m, s = r["measured"], r["simulated"]
            rows.append(
                [
                    r["layer"],
                    m["dispatch_us"],
                    m["compute_us"],
                    m["combine_us"],
                    m["layer_us"],
                    s["layer_us"],
                    f"{r['error']['layer_us']:+.1%}",
                    m.get("overlap_layer_us", "-"),
                ]
            )
        print(f"\n{what}: {res['solver']} ({res['fingerprint']}), predictor: {res['predictor']}")
        print(
            table(
                [
                    "layer",
                    "disp us",
                    "comp us",
                    "comb us",
                    "measured us",
                    "simulated us",
                    "error",
                    "overlap us",
                ],
                rows,
            )
        )
        line = (
            f"total measured {res['measured_us']:.0f} us, simulated {res['simulated_us']:.0f} us "
            f"({res['error']:+.1%}); mean |layer error| {res['mean_abs_layer_error']:.1%}; "
            f"moved rows {'match' if res['copies_match_evaluator'] else 'DIFFER FROM'} the evaluator"
        )
        if "overlap_speedup" in res:
            line += f"; overlap {res['measured_overlap_us']:.0f} us ({res['overlap_speedup']:.2f}x)"
        print(line)
    if "speedup" in report:
        sp = report["speedup"]
        print(
            f"\nspeedup over the baseline: measured {sp['measured']:.3f}x, simulated {sp['simulated']:.3f}x"
        )


def run(args: argparse.Namespace) -> int:
    from moe_placement.atomic import write_json
    from moe_placement.cli.commands._common import to_jsonable
    from moe_placement.executor.validate import run_validate

    config = exec_config(
        args,
        warmup=args.warmup,
        reps=args.reps,
        chunks=args.chunks,
        overlap=not args.no_overlap,
        max_tokens=args.tokens,
        seed=args.seed,
        home=args.home,
    )
    report = run_validate(
        args.trace,
        args.plan,
        args.baseline_plan,
        config,
        cluster=args.cluster,
        fault=parse_fault(args.inject_fault),
        rounds=args.rounds,
    )
    if args.out:
        write_json(args.out, to_jsonable(report))
    if args.json:
        print_json(report)
    else:
        print_report(report)
    bad = [w for w, r in report["plans"].items() if not r["copies_match_evaluator"]]
    if bad:
        raise CheckFailed(f"rows moved for {', '.join(bad)} differ from the evaluator's copies")
    if args.max_error is not None:
        worst = max(r["mean_abs_layer_error"] for r in report["plans"].values())
        if not worst <= args.max_error:
            raise CheckFailed(
                f"mean per-layer simulation error {worst:.1%} exceeds --max-error {args.max_error:.1%}"
            )
    return 0


COMMAND = Command(
    "validate",
    "run a plan on real collectives (Ray workers) and compare with the simulator",
    add_arguments,
    run,
)
