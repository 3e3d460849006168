"""``placement rebalance``: replay a time-ordered trace under a rebalancing policy (interval, moves per
rebalance, migration cost), against never rebalancing and EPLB-style periodic full re-placement."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from moe_placement.atomic import atomic_open
from moe_placement.cli.commands._common import (
    Command,
    add_cluster_args,
    human_bytes,
    print_json,
    resolve_cluster,
    table,
)
from moe_placement.errors import PlacementError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="per-token Parquet trace, in serving order")
    add_cluster_args(p)
    p.add_argument("--redundant", type=int, default=0, help="redundant slots per layer")
    p.add_argument(
        "--windows", type=int, default=8, help="token windows the trace is cut into (replay steps)"
    )
    p.add_argument("--interval", type=int, required=True, help="rebalance every this many windows")
    p.add_argument(
        "--max-moves",
        type=int,
        default=None,
        help="moved slots allowed per rebalance (default: a full re-placement)",
    )
    p.add_argument(
        "--steps-per-window",
        type=int,
        default=1000,
        help="serving steps each window stands for (sets how much serving hides a migration)",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="migration stops serving (default: it overlaps with serving)",
    )
    p.add_argument("--solver", default="best", help="solver for the initial plan and rebalances")
    p.add_argument("--time-limit", type=float, default=1.0, help="per solve, seconds")
    p.add_argument("--plots", default=None, metavar="DIR", help="write rebalance.png there")
    p.add_argument("--json", action="store_true")


def _check(args: argparse.Namespace) -> None:
    if args.windows < 2:
        raise PlacementError("--windows must be >= 2 (one to fit, one to serve)")
    if args.interval < 1:
        raise PlacementError("--interval must be >= 1")
    if args.max_moves is not None and args.max_moves < 0:
        raise PlacementError("--max-moves must be >= 0")
    if args.steps_per_window < 1:
        raise PlacementError("--steps-per-window must be >= 1")
    if args.time_limit <= 0:
        raise PlacementError("--time-limit must be > 0")


def run(args: argparse.Namespace) -> int:
    from moe_placement.pipeline.rebalance import compare_intervals, total_us, trace_windows
    from moe_placement.solvers import SolverConfig

    _check(args)
    cluster = resolve_cluster(args)
    windows = trace_windows(args.trace, args.windows, cluster.num_gpus)
    config = SolverConfig(time_limit_s=args.time_limit, extra={"deterministic": True})
    intervals: list[int | None] = [*sorted({1, 2, args.interval}), None]
    runs = compare_intervals(
        windows,
        cluster,
        args.redundant,
        intervals,
        args.max_moves,
        not args.no_overlap,
        args.solver,
        config,
        args.steps_per_window,
    )
    full = compare_intervals(
        windows,
        cluster,
        args.redundant,
        [args.interval],
        None,
        not args.no_overlap,
        args.solver,
        config,
        args.steps_per_window,
    )[args.interval]
    totals = {k: total_us(v, args.steps_per_window) for k, v in runs.items()}
    best = min(totals, key=lambda k: totals[k])
    chosen = runs[args.interval]

    def label(interval: int | None) -> str:
        return "never" if interval is None else f"every {interval}"

    if args.plots:
        from moe_placement.reports.plots import line_plot

        xs = [r.window for r in chosen]
        png = line_plot(
            {
                f"{label(args.interval)}, max moves {args.max_moves}": (
                    xs,
                    [r.moe_time_us for r in chosen],
                ),
                f"{label(args.interval)}, full re-placement": (
                    xs,
                    [r.moe_time_us for r in full],
                ),
                "never": (xs, [r.moe_time_us for r in runs[None]]),
            },
            title="MoE time per window under rebalancing",
            xlabel="window",
            ylabel="MoE time (us per step, all layers)",
        )
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        with atomic_open(Path(args.plots) / "rebalance.png", "wb") as handle:
            handle.write(base64.b64decode(png))
    if args.json:
        print_json(
            {
                "interval": args.interval,
                "max_moves": args.max_moves,
                "steps_per_window": args.steps_per_window,
                "windows": [r.__dict__ for r in chosen],
                "full_replacement": [r.__dict__ for r in full],
                "total_us": {label(k): v for k, v in totals.items()},
                "full_replacement_total_us": total_us(full, args.steps_per_window),
                "best_interval": label(best),
            }
        )
        return 0
    print(
        f"replay of {args.trace}: {len(windows)} windows of {windows[1].num_tokens} tokens, each "
        f"{args.steps_per_window} steps; rebalance {label(args.interval)} windows, max moves "
        f"{args.max_moves if args.max_moves is not None else 'all'}, migration "
        f"{'overlapped with' if not args.no_overlap else 'stopping'} serving"
    )
    rows = [
        [
            r.window,
            r.max_over_mean,
            r.moe_time_us,
            r.moved_slots,
            human_bytes(r.moved_bytes),
            r.exposed_us,
            f.moe_time_us,
            n.moe_time_us,
        ]
        for r, f, n in zip(chosen, full, runs[None], strict=True)
    ]
    print(
        table(
            [
                "window",
                "max/mean",
                "MoE us/step",
                "moved slots",
                "moved",
                "exposed us",
                "full re-place us/step",
                "never us/step",
            ],
            rows,
        )
    )
    for k, v in totals.items():
        print(f"total {label(k)}: {v / 1e6:.6g} s of MoE time + exposed migration over the replay")
    print(
        f"total every {args.interval}, full re-placement: {total_us(full, args.steps_per_window) / 1e6:.6g} s"
    )
    print(f"best interval: {label(best)}")
    return 0


COMMAND = Command(
    "rebalance",
    "replay a trace over time under a rebalancing policy; choose the interval",
    add_arguments,
    run,
)
