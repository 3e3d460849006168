"""``placement whatif``: sweep scenario axes (solve + simulate each), store the results, build the report."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from moe_placement.cli.commands._common import (
    Command,
    add_cluster_args,
    parse_finite,
    print_json,
    resolve_cluster,
)
from moe_placement.errors import PlacementError
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU, MODES


def _prices(text: str | None, what: str) -> dict[str, float]:
    """``"H100=2.5,B200=5"`` -> ``{"H100": 2.5, "B200": 5.0}``."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        out[name.strip()] = parse_finite(value, f"{what} {item!r} (NAME=USD,...)")
        if out[name.strip()] < 0:
            raise PlacementError(f"{what}: prices must be >= 0")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moe_placement.pipeline.scenario import ALGOS, AXES, OVERLAPS

    p.add_argument("--trace", default=None, help="trace Parquet file (or --model)")
    p.add_argument(
        "--model",
        default=None,
        help="model shape (deepseek-v3, qwen3-30b-a3b, ...) with a seeded synthetic routing profile "
        "instead of a trace; allows --sweep experts=...",
    )
    p.add_argument("--synth-layers", type=int, default=4, help="synthetic profile: MoE layers")
    p.add_argument("--synth-tokens", type=int, default=4096, help="synthetic profile: tokens")
    p.add_argument(
        "--synth-zipf", type=float, default=0.8, help="synthetic profile: popularity skew"
    )
    p.add_argument(
        "--synth-affinity", type=float, default=0.6, help="synthetic profile: P(top-1 follows)"
    )
    add_cluster_args(p)
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="AXIS=V1,V2,...",
        help=f"sweep an axis (repeatable); axes: {', '.join(AXES)}",
    )
    p.add_argument("--solver", default=None, help="solver when not swept (default: best)")
    p.add_argument("--redundant", type=int, default=0, help="redundant slots when not swept")
    p.add_argument(
        "--tokens-per-gpu", type=int, default=DEFAULT_TOKENS_PER_GPU, help="tokens per GPU per step"
    )
    p.add_argument("--overlap", default="none", choices=OVERLAPS)
    p.add_argument(
        "--algo", default="deepep", choices=ALGOS, help="all-to-all algorithm for the simulator"
    )
    p.add_argument("--mode", default="standard", choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-limit", type=float, default=10.0, help="solver time limit per scenario (s)"
    )
    p.add_argument(
        "--no-reference-solvers",
        action="store_true",
        help="do not add contiguous and eplb to the solver axis for comparison",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: a local Ray, 2 CPUs)"
    )
    p.add_argument("--serial", action="store_true", help="run scenarios one by one, without Ray")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs for a local Ray")
    p.add_argument("--out", required=True, help="output folder (results, cache, report)")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the report from stored results"
    )
    p.add_argument("--target-tokens-per-s", type=float, default=None)
    p.add_argument("--target-layer-us", type=float, default=None)
    p.add_argument("--gpu-hour-usd", default=None, help="price overrides, e.g. H100=2.5,B200=5")
    p.add_argument(
        "--endpoint-usd",
        default=None,
        help="network cost per endpoint overrides, e.g. three-tier=7500",
    )
    p.add_argument(
        "--amortisation-years", type=float, default=3.0, help="network amortisation period"
    )
    p.add_argument("--json", action="store_true")


def plan_sweep(args: argparse.Namespace) -> tuple[list[Any], Any, dict[str, Any]]:
    """The scenarios, the base cluster and the sweep's metadata from the command line."""
    from moe_placement.cli.commands.solve import default_solver
    from moe_placement.pipeline.engine import TIMING_ENGINE, engine_id
    from moe_placement.pipeline.scenario import AXES, Scenario, expand, parse_sweep
    from moe_placement.pipeline.synthetic import SyntheticProfile, synthetic_trace
    from moe_placement.shapes import model_shape
    from moe_placement.solvers import REGISTRY
    from moe_placement.traces.reader import TraceFile

    if bool(args.trace) == bool(args.model):
        raise PlacementError(
            "give --trace or --model (a synthetic routing profile), not both or neither"
        )
    if args.redundant < 0 or args.tokens_per_gpu < 1:
        raise PlacementError("--redundant must be >= 0 and --tokens-per-gpu >= 1")
    sweep = parse_sweep(args.sweep)
    traces: dict[int, Path] = {}
    if args.model:
        shape = model_shape(args.model)
        profile = SyntheticProfile(
            layers=args.synth_layers,
            tokens=args.synth_tokens,
            zipf_s=args.synth_zipf,
            affinity=args.synth_affinity,
            seed=args.seed,
        )
        for experts in sweep.get("experts", [shape.num_experts]):
            traces[experts] = synthetic_trace(shape, experts, profile, Path(args.out) / "traces")
        trace_path = next(iter(traces.values()))
    else:
        if "experts" in sweep:
            raise PlacementError("--sweep experts needs --model (a trace fixes the expert count)")
        trace_path = Path(args.trace)
    trace = TraceFile(trace_path)
    base = resolve_cluster(args)
    scenario = Scenario(
        trace=str(trace_path.resolve()),
        trace_fingerprint=trace.fingerprint(),
        gpus=base.num_gpus,
        gpus_per_node=base.gpus_per_node,
        gpu=base.gpu.name,
        topology=base.fabric if base.fabric != "none" else "single-switch",
        nic_gbps=float(base.nic_gbits_per_s),
        tokens_per_gpu=args.tokens_per_gpu,
        redundant=args.redundant,
        experts=trace.meta.num_experts,
        solver=args.solver or default_solver(),
        overlap=args.overlap,
        algo=args.algo,
        mode=args.mode,
        seed=args.seed,
        time_limit_s=args.time_limit,
    )
    if scenario.solver not in REGISTRY:
        raise PlacementError(
            f"unknown solver {scenario.solver!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    if not args.no_reference_solvers:
        solvers = sweep.get("solver", [scenario.solver])
        sweep["solver"] = solvers + [
            s for s in ("contiguous", "eplb") if s in REGISTRY and s not in solvers
        ]
    scenarios = expand(scenario, sweep)
    if traces:  # each expert count runs on its own synthetic trace
        prints = {e: TraceFile(p).fingerprint() for e, p in traces.items()}
        scenarios = [
            dataclasses.replace(
                s, trace=str(traces[s.experts].resolve()), trace_fingerprint=prints[s.experts]
            )
            for s in scenarios
        ]
    reference = {a: sweep[a][0] if a in sweep else getattr(scenario, AXES[a][0]) for a in AXES}
    meta = {
        "trace": args.trace or f"synthetic profile of {args.model} ({trace.meta.source})",
        "trace_fingerprint": scenario.trace_fingerprint,
        "trace_shape": f"{trace.meta.num_moe_layers} MoE layers x {trace.meta.num_experts} experts, "
        f"top-{trace.meta.top_k}, {trace.num_tokens} tokens",
        "axes": sweep,
        "reference": reference,
        "base_cluster": base.to_dict(),
        "engine": TIMING_ENGINE,
        "code_version": engine_id(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": len(scenarios),
    }
    return scenarios, base, meta


def run(args: argparse.Namespace) -> int:
    from moe_placement.pipeline.results import write_results
    from moe_placement.pipeline.sweep import run_sweep
    from moe_placement.reports.report import ReportOptions, build_report

    out = Path(args.out)
    options = ReportOptions(
        target_tokens_per_s=args.target_tokens_per_s,
        target_layer_us=args.target_layer_us,
        gpu_hour_usd=_prices(args.gpu_hour_usd, "--gpu-hour-usd"),
        endpoint_usd=_prices(args.endpoint_usd, "--endpoint-usd"),
        amortisation_years=args.amortisation_years,
    )
    if options.amortisation_years <= 0:
        raise PlacementError("--amortisation-years must be > 0")
    summary: dict[str, Any] = {"out": str(out)}
    if not args.report_only:
        scenarios, base, meta = plan_sweep(args)
        outcome = run_sweep(
            scenarios,
            base,
            out / "cache",
            address=args.address,
            serial=args.serial,
            num_cpus=args.num_cpus,
        )
        write_results(out, outcome.records, meta)
        summary.update(
            scenarios=len(scenarios),
            computed=outcome.computed,
            cached=outcome.cached,
            backend=outcome.backend,
            engine=meta["engine"],
        )
    report = build_report(out, options)
    summary.update(
        report=str(out / "report.html"), summary=str(out / "summary.md"), findings=report.findings
    )
    if args.json:
        print_json(summary)
    else:
        if not args.report_only:
            print(
                f"{summary['scenarios']} scenarios: {summary['computed']} computed ({summary['backend']}), "
                f"{summary['cached']} from the cache; timing engine {summary['engine']}"
            )
        print(
            f"report: {out / 'report.html'}, summary: {out / 'summary.md'}, results: {out / 'results.parquet'}"
        )
    return 0


COMMAND = Command(
    "whatif",
    "sweep cluster and placement scenarios and report throughput, time and cost",
    add_arguments,
    run,
)
