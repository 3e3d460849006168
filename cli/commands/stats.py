"""``placement stats``: what a trace looks like: load skew, co-activation, inter-layer affinity, local
routing consistency, per-domain expert preference, drift (within the trace and against ``--compare``)."""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command, load_workload, print_json, table
from moe_placement.errors import PlacementError
from moe_placement.workload import HOME_POLICIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace Parquet file or logical_count JSON")
    p.add_argument("--model", default=None, help="model shape for load-only JSON")
    p.add_argument("--home", default="token", choices=HOME_POLICIES)
    p.add_argument("--compare", default=None, help="a second trace: report drift between the two")
    p.add_argument("--window", type=int, default=16, help="tokens per window for local consistency")
    p.add_argument(
        "--cache-experts",
        type=int,
        default=None,
        help="experts a window may keep for window coverage (default 2 x top-k)",
    )
    p.add_argument("--plots", default=None, help="folder for PNG plots")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from moe_placement.traces.analytics import trace_stats

    if args.window < 1 or (args.cache_experts is not None and args.cache_experts < 1):
        raise PlacementError("--window and --cache-experts must be >= 1")
    workload = load_workload(args.trace, None, args.home, args.model)
    other = load_workload(args.compare, None, args.home, args.model) if args.compare else None
    stats = trace_stats(workload, other, window=args.window, cache_experts=args.cache_experts)
    if args.plots:
        from moe_placement.traces.analytics import plot_stats

        stats["plots"] = plot_stats(workload, stats, args.plots)
    if args.json:
        print_json(stats)
        return 0
    print(
        f"{workload.source}: {stats['model']}, {stats['tokens']} tokens, {stats['layers']} MoE layers, "
        f"{stats['experts']} experts, top-{stats['top_k']} ({'per-token' if workload.per_token else 'load-only'})"
    )
    headers = ["layer", "max/mean", "CV"]
    per_token = workload.per_token
    if per_token:
        headers += [
            "coact",
            "NMI next",
            "top succ",
            "window cov",
            "(shuffled)",
            "repeat",
            "(shuffled)",
        ]
        if "mean_domain_nmi" in stats:
            headers.append("domain NMI")
    rows = []
    for row in stats["per_layer"]:
        r = [row["layer"], row["max_over_mean"], row["cv"]]
        if per_token:
            r += [
                row["coactivation_strength"],
                row.get("nmi_next", "-"),
                row.get("top_successor_share", "-"),
                row["window_coverage"],
                row["window_coverage_shuffled"],
                row["repeat_share"],
                row["repeat_share_shuffled"],
            ]
            if "mean_domain_nmi" in stats:
                r.append(row["domain_nmi"])
        rows.append(r)
    print(table(headers, rows))
    for key in (
        "mean_max_over_mean",
        "mean_nmi",
        "mean_top_successor_share",
        "mean_window_coverage",
        "mean_window_coverage_shuffled",
        "mean_repeat_share",
        "mean_repeat_share_shuffled",
        "mean_drift_js_halves",
        "mean_domain_nmi",
        "drift_js",
        "drift_js_transitions",
    ):
        if key in stats and stats[key] is not None:
            print(f"{key}: {stats[key]:.4f}")
    if "drift_note" in stats:
        print(f"drift: {stats['drift_note']}")
    if "domains" in stats:
        print("domains: " + ", ".join(f"{k} ({v} tokens)" for k, v in stats["domains"].items()))
    for path in stats.get("plots", []):
        print(f"plot: {path}")
    return 0


COMMAND = Command(
    "stats",
    "trace statistics: skew, co-activation, affinity, local consistency, domains, drift",
    add_arguments,
    run,
)
