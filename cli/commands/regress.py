"""``placement regress``: compare placement quality on traces with a stored baseline (exit 1 on regression)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from moe_placement.cli.commands._common import (
    CheckFailed,
    Command,
    add_engine_arg,
    engine_line,
    parse_finite,
    print_json,
    table,
)
from moe_placement.errors import PlacementError
from moe_placement.metrics import MODES

# Options that default to the baseline's stored config (then to reports.regress.DEFAULT_CONFIG).
_CONFIG_OPTIONS = (
    "cluster",
    "gpus",
    "gpus_per_node",
    "solver",
    "redundant",
    "mode",
    "tokens_per_gpu",
    "overlap",
    "algo",
    "seed",
    "time_limit_s",
    "deterministic",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moe_placement.pipeline.scenario import ALGOS, OVERLAPS
    from moe_placement.reports.regress import DEFAULT_CONFIG

    p.add_argument(
        "--trace",
        action="append",
        required=True,
        metavar="PATH",
        help="per-token trace Parquet (repeatable); checked against the baseline entry with the same "
        "routing fingerprint, whatever the file's name",
    )
    p.add_argument("--baseline", required=True, help="baseline JSON file")
    p.add_argument(
        "--update-baseline", action="store_true", help="write the current metrics as the baseline"
    )
    p.add_argument("--junit", default=None, metavar="FILE", help="also write JUnit XML here")
    p.add_argument(
        "--plan", default=None, help="measure this plan instead of solving (one --trace)"
    )
    # every option below defaults to the baseline's stored value, then to the one named here
    defaults = DEFAULT_CONFIG
    p.add_argument(
        "--cluster",
        default=None,
        help="preset ({clusters}) or file (default: the baseline's, else h100-multirail)",
    )
    p.add_argument(
        "--gpus", type=int, default=None, help=f"default: the baseline's, else {defaults['gpus']}"
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help=f"default: the baseline's, else {defaults['gpus_per_node']}",
    )
    p.add_argument("--solver", default=None, help="{solvers} (default: the baseline's, else best)")
    p.add_argument(
        "--redundant",
        type=int,
        default=None,
        help=f"redundant slots per layer (default: the baseline's, else {defaults['redundant']})",
    )
    p.add_argument(
        "--mode", default=None, choices=MODES, help="default: the baseline's, else standard"
    )
    p.add_argument(
        "--tokens-per-gpu",
        type=int,
        default=None,
        help="tokens per GPU in one step (default: the baseline's, else "
        f"{defaults['tokens_per_gpu']})",
    )
    p.add_argument(
        "--overlap", default=None, choices=OVERLAPS, help="default: the baseline's, else none"
    )
    p.add_argument(
        "--algo", default=None, choices=ALGOS, help="default: the baseline's, else deepep"
    )
    p.add_argument("--seed", type=int, default=None, help="default: the baseline's, else 0")
    p.add_argument(
        "--time-limit",
        dest="time_limit_s",
        type=float,
        default=None,
        help="solver time limit, s (deterministic units unless the baseline was recorded on the "
        f"wall clock; default: the baseline's, else {defaults['time_limit_s']:g})",
    )
    timing = p.add_mutually_exclusive_group()
    timing.add_argument(
        "--deterministic",
        action="store_const",
        const=True,
        default=None,
        help="CP-SAT on a deterministic time limit: the same plan on any machine load (stored; "
        "default: the baseline's, else deterministic)",
    )
    timing.add_argument(
        "--wall-clock",
        dest="deterministic",
        action="store_const",
        const=False,
        help="CP-SAT on --time-limit wall seconds: the plan varies with machine load (stored)",
    )
    p.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=REL[+ABS]",
        help="override a tolerance, e.g. layer_us=0.1 or solve_s=2+5 (stored on update)",
    )
    add_engine_arg(p, "(default: the baseline's, else the share-aware router; stored in it)")
    p.add_argument("--json", action="store_true")


def _tolerances(items: list[str], stored: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    from moe_placement.reports.regress import METRICS, default_tolerances

    tol = default_tolerances()
    for metric, value in (stored or {}).items():
        if metric in tol and isinstance(value, dict):
            tol[metric] = {
                "rel": parse_finite(value.get("rel", 0.0), f"baseline tolerance {metric}.rel"),
                "abs": parse_finite(value.get("abs", 0.0), f"baseline tolerance {metric}.abs"),
            }
    for item in items:
        metric, _, value = item.partition("=")
        if metric not in METRICS:
            raise PlacementError(
                f"--tolerance: unknown metric {metric!r}; known: {', '.join(METRICS)}"
            )
        rel, _, abs_ = value.partition("+")
        what = f"--tolerance {item!r} (METRIC=REL or METRIC=REL+ABS)"
        tol[metric] = {"rel": parse_finite(rel, what), "abs": parse_finite(abs_ or "0", what)}
        if tol[metric]["rel"] < 0 or tol[metric]["abs"] < 0:
            raise PlacementError(f"--tolerance {item!r}: tolerances must be >= 0")
    return tol


def run(args: argparse.Namespace) -> int:
    from moe_placement.cli.commands.solve import default_solver
    from moe_placement.cluster import load_cluster
    from moe_placement.pipeline.regress import measure, routing_fingerprint
    from moe_placement.reports.regress import (
        DEFAULT_CONFIG,
        LEGACY_CONFIG,
        compare,
        load_baseline,
        match_entry,
        no_entry_reason,
        write_baseline,
        write_junit,
    )
    from moe_placement.traces.reader import TraceFile

    started = time.perf_counter()
    baseline = load_baseline(args.baseline)
    if baseline is None and not args.update_baseline:
        raise PlacementError(
            f"baseline {args.baseline} does not exist; create it with --update-baseline"
        )
    if args.plan is not None and len(args.trace) != 1:
        raise PlacementError("--plan measures one trace: give exactly one --trace")
    stored_config = (baseline or {}).get("config", {})
    config: dict[str, Any] = {}
    # an option an existing baseline does not store was measured under its old default
    fallback = {**DEFAULT_CONFIG, **(LEGACY_CONFIG if baseline is not None else {})}
    for key in _CONFIG_OPTIONS:
        given = getattr(args, key)
        config[key] = given if given is not None else stored_config.get(key, fallback[key])
    config["solver"] = config["solver"] or default_solver()
    # whose replica dispatch the plans are solved for and measured under (a baseline without it was
    # measured under the share-aware router)
    config["serving_engine"] = args.engine or stored_config.get("serving_engine", "share")
    notes = [
        f"config differs from the baseline: {k} {config[k]} (baseline {stored_config.get(k, 'share')})"
        for k in (*_CONFIG_OPTIONS, "serving_engine")
        if (k in stored_config or k == "serving_engine")
        and stored_config.get(k, "share") != config[k]
    ]
    per_node = min(int(config["gpus_per_node"]), int(config["gpus"]))
    cluster = load_cluster(config["cluster"]).with_counts(int(config["gpus"]), per_node)
    tolerances = _tolerances(args.tolerance, (baseline or {}).get("tolerances"))
    engine_before = (baseline or {}).get("engine")
    # Each trace finds its entry by routing fingerprint, before anything is solved: a baseline of
    # another trace is bad input (exit 2), and a renamed trace is checked against its own entry.
    stored_traces = dict((baseline or {}).get("traces", {}))
    entries: dict[str, dict[str, Any] | None] = {}
    fingerprints: dict[str, str] = {}
    for trace in args.trace:
        name = Path(trace).name
        fingerprints[trace] = routing_fingerprint(trace)
        match = match_entry(
            stored_traces, name, fingerprints[trace], TraceFile(trace).fingerprint()
        )
        if match is None and not args.update_baseline:
            raise PlacementError(
                no_entry_reason(args.baseline, stored_traces, name, fingerprints[trace])
            )
        entries[trace] = None if match is None else match.entry
        if match is not None and match.key != name:
            notes.append(f"{name}: checked against the baseline's {match.key} (same routing)")
            if args.update_baseline:  # the trace was renamed: its entry moves to the new name
                stored_traces.pop(match.key)
        if match is not None and match.how == "file fingerprint":
            notes.append(
                f"{name}: the baseline stores a file hash; --update-baseline stores the routing "
                "fingerprint"
            )
    checks = []
    measured: dict[str, tuple[str, str, dict[str, float]]] = {}
    engine = ""
    for trace in args.trace:
        name = Path(trace).name
        got = measure(trace, cluster, config, args.plan, fingerprint=fingerprints[trace])
        engine = got.engine
        measured[name] = (trace, got.fingerprint, got.metrics)
        checks += compare(
            name,
            got.metrics,
            entries[trace],
            tolerances,
            engine_changed=engine_before is not None and engine_before != engine,
        )
    seconds = time.perf_counter() - started
    if args.junit:
        write_junit(args.junit, checks, seconds)
    failed = [c for c in checks if c.status == "fail"]
    if args.update_baseline:
        previous = None if baseline is None else {**baseline, "traces": stored_traces}
        write_baseline(args.baseline, previous, config, engine, tolerances, measured)
    if args.json:
        print_json(
            {
                "config": config,
                "engine": engine,
                "notes": notes,
                "updated": args.update_baseline,
                "checks": [{**c.__dict__, "change": c.change} for c in checks],
            }
        )
    else:
        rows = [
            [
                c.trace,
                c.metric,
                "-" if c.baseline is None else c.baseline,
                c.current,
                "-" if c.change is None else f"{c.change * 100:+.2f}%",
                "-" if c.limit is None else c.limit,
                c.status.upper() if c.status == "fail" else c.status,
            ]
            for c in checks
        ]
        print(engine_line(config["serving_engine"]))
        print(table(["trace", "metric", "baseline", "current", "change", "limit", "status"], rows))
        for note in notes:
            print(f"note: {note}")
        if args.update_baseline:
            print(f"baseline written to {args.baseline}")
    if failed and not args.update_baseline:
        raise CheckFailed(
            f"{len(failed)} regression(s): " + "; ".join(f"{c.trace}: {c.message}" for c in failed)
        )
    return 0


COMMAND = Command(
    "regress", "check placement quality against a stored baseline (for CI)", add_arguments, run
)
