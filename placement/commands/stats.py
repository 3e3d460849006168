"""``placement stats``: what a trace looks like (load skew, co-activation, inter-layer affinity)."""

from __future__ import annotations

import argparse

from placement.commands._common import Command, load_workload, print_json, table
from placement.workload import HOME_POLICIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace Parquet file or logical_count JSON")
    p.add_argument("--model", default=None, help="model shape for load-only JSON")
    p.add_argument("--home", default="token", choices=HOME_POLICIES)
    p.add_argument("--compare", default=None, help="a second trace: report drift between the two")
    p.add_argument("--plots", default=None, help="folder for PNG plots")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from traces.analytics import trace_stats

    workload = load_workload(args.trace, None, args.home, args.model)
    other = load_workload(args.compare, None, args.home, args.model) if args.compare else None
    stats = trace_stats(workload, other)
    if args.plots:
        from traces.analytics import plot_stats

        stats["plots"] = plot_stats(workload, stats, args.plots)
    if args.json:
        print_json(stats)
        return 0
    print(
        f"{workload.source}: {stats['model']} , {stats['tokens']} tokens, {stats['layers']} MoE layers, "
        f"{stats['experts']} experts, top-{stats['top_k']} ({'per-token' if workload.per_token else 'load-only'})"
    )
    headers = ["layer", "max/mean", "CV"]
    per_token = workload.per_token
    if per_token:
        headers += ["coact top-pair share", "NMI to next", "top successor share"]
    rows = []
    for row in stats["per_layer"]:
        r = [row["layer"], row["max_over_mean"], row["cv"]]
        if per_token:
            r += [
                row["coactivation_strength"],
                row.get("nmi_next", "-"),
                row.get("top_successor_share", "-"),
            ]
        rows.append(r)
    print(table(headers, rows))
    for key in ("mean_max_over_mean", "mean_nmi", "mean_top_successor_share", "drift_js"):
        if key in stats and stats[key] is not None:
            print(f"{key}: {stats[key]:.4f}")
    return 0


COMMAND = Command(
    "stats",
    "trace statistics: skew, co-activation, inter-layer affinity, drift",
    add_arguments,
    run,
)
