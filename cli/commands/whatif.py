"""``placement whatif``: sweep scenario axes (solve + simulate each), store the results, build the report.

Every figure is per model: the input's MoE layers are simulated (a sample of them, evenly spread) with
each layer's attention and shared expert, their mean stands for each of the model's MoE layers, and the
dense layers are added (:mod:`moe_placement.wholemodel`). Load-only inputs (counts over a whole serving
run) are scaled to one step of ``--tokens-per-gpu`` tokens on every GPU; the phase (prefill or decode)
and the tokens per GPU are inferred from the input when not given, and stated in the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from moe_placement.cli.commands._common import (
    Command,
    add_cluster_args,
    add_engine_arg,
    engine_line,
    parse_finite,
    print_json,
    resolve_cluster,
    table,
)
from moe_placement.errors import PlacementError
from moe_placement.metrics import MODES
from moe_placement.shapes import model_shape
from moe_placement.wholemodel import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_RESERVE_FRACTION,
    DEFAULT_TOKENS_PER_GPU_BY_PHASE,
    PHASES,
    WholeModel,
    kv_tokens_per_gpu,
    layer_costs,
    whole_model,
)


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

    p.add_argument(
        "--trace",
        default=None,
        help="what solve accepts: a per-token Parquet trace, a load-only Parquet file or a "
        "logical_count JSON (or give --model alone)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model shape (deepseek-v3, qwen3-30b-a3b, ...). With --trace: the input's model, for the "
        "whole-model figures (a load-only input's is guessed from its size). Alone: a seeded synthetic "
        "routing profile of that model; allows --sweep experts=...",
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
    add_engine_arg(p)
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
        "--phase",
        default=None,
        choices=PHASES,
        help="serving phase of the input (default: from the input: a trace's capture mode, or "
        "'prefill'/'decode' in the file name; else prefill)",
    )
    p.add_argument(
        "--tokens-per-gpu",
        type=int,
        default=None,
        help="tokens on each GPU in one step: every figure is per step of this many "
        f"(default by phase: {', '.join(f'{k} {v}' for k, v in DEFAULT_TOKENS_PER_GPU_BY_PHASE.items())})",
    )
    p.add_argument(
        "--context-tokens",
        type=int,
        default=None,
        help="context length of a sequence, for attention time and KV cache (default: from a file "
        f"name with inN[outM], else {DEFAULT_CONTEXT_TOKENS})",
    )
    p.add_argument(
        "--attention-us",
        type=float,
        default=None,
        help="measured attention time per layer per step (us) instead of the roofline model",
    )
    p.add_argument(
        "--sample-layers",
        type=int,
        default=4,
        help="MoE layers simulated per scenario, evenly spread; their mean stands for every MoE "
        "layer (0: all; default 4)",
    )
    p.add_argument(
        "--kv-tokens-per-gpu",
        type=int,
        default=None,
        help="tokens of KV cache each GPU keeps, for the memory model (default: prefill: the step's "
        "tokens; decode: tokens per GPU x context tokens)",
    )
    p.add_argument("--overlap", default="none", choices=OVERLAPS)
    p.add_argument(
        "--algo", default="deepep", choices=ALGOS, help="all-to-all algorithm for the simulator"
    )
    p.add_argument("--mode", default="standard", choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-limit",
        type=float,
        default=10.0,
        help="solver time limit per scenario, in seconds of CP-SAT's deterministic time (about "
        "seconds on an idle core; the same plan on any machine load) (default 10)",
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
    p.add_argument(
        "--target-tokens-per-s",
        type=float,
        default=None,
        help="throughput target: tokens/s of the whole model, all GPUs together",
    )
    p.add_argument(
        "--target-layer-us",
        type=float,
        default=None,
        help="latency target: us per MoE layer (attention included when modelled) per step",
    )
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


@dataclasses.dataclass(frozen=True)
class InputFacts:
    """What the input says about itself: its kind, fingerprint, shape text, model and serving phase."""

    path: Path
    kind: str  # "per-token trace", "load-only Parquet", "logical_count JSON"
    fingerprint: str
    num_experts: int
    model: str  # model shape name ("" when unknown)
    shape_text: str
    num_tokens: int
    phase: str | None  # what the input says, or None


def read_input(path: Path, model: str | None) -> InputFacts:
    """Read enough of ``path`` to plan a sweep (a load-only input is small; a trace's metadata only)."""
    from moe_placement.traces.loadjson import (
        is_load_parquet,
        is_logical_count_file,
        load_load_parquet,
        load_logical_count,
    )
    from moe_placement.traces.reader import TraceFile

    shape = model_shape(model) if model else None
    name_phase = next((ph for ph in PHASES if ph in path.name.lower()), None)
    if is_logical_count_file(path) or is_load_parquet(path):
        json_input = is_logical_count_file(path)
        workload = (load_logical_count if json_input else load_load_parquet)(path, shape)
        return InputFacts(
            path=path,
            kind="logical_count JSON" if json_input else "load-only Parquet",
            fingerprint=workload.fingerprint,
            num_experts=workload.num_experts,
            model=workload.shape.name,
            shape_text=f"{workload.num_layers} MoE layers x {workload.num_experts} experts, "
            f"top-{workload.shape.top_k}, load-only: {workload.num_tokens:,} tokens counted over the "
            "whole run",
            num_tokens=workload.num_tokens,
            phase=name_phase,
        )
    if not path.exists():
        raise PlacementError(f"trace file not found: {path}")
    trace = TraceFile(path)
    trace.validate()  # refused here in one line, not turned into 'infeasible' scenarios
    meta = trace.meta
    mode = meta.extra.get("mode") if isinstance(meta.extra, dict) else None
    return InputFacts(
        path=path,
        kind="per-token trace",
        fingerprint=trace.fingerprint(),
        num_experts=meta.num_experts,
        model=shape.name if shape else meta.model_name,
        shape_text=f"{meta.num_moe_layers} MoE layers x {meta.num_experts} experts, "
        f"top-{meta.top_k}, {trace.num_tokens:,} tokens",
        num_tokens=trace.num_tokens,
        phase=mode if mode in PHASES else name_phase,
    )


def context_from_name(name: str, phase: str) -> int | None:
    """Context tokens from a file name such as ``decode_in1000out1000``: a prefill's input length, a
    decode's input plus half its output (the mean over the generated tokens)."""
    found_in = re.search(r"in(\d+)", name)
    if not found_in:
        return None
    tokens = int(found_in.group(1))
    found_out = re.search(r"out(\d+)", name)
    if phase == "decode" and found_out:
        tokens += int(found_out.group(1)) // 2
    return tokens


def plan_sweep(args: argparse.Namespace) -> tuple[list[Any], Any, dict[str, Any]]:
    """The scenarios, the base cluster and the sweep's metadata from the command line."""
    from moe_placement.cli.commands.solve import default_solver
    from moe_placement.pipeline.engine import TIMING_ENGINE, engine_id
    from moe_placement.pipeline.scenario import AXES, Scenario, expand, parse_sweep
    from moe_placement.pipeline.synthetic import SyntheticProfile, synthetic_trace
    from moe_placement.solvers import REGISTRY

    if not args.trace and not args.model:
        raise PlacementError("give --trace (and optionally --model) or --model alone")
    for flag, value, least in (
        ("--redundant", args.redundant, 0),
        ("--tokens-per-gpu", args.tokens_per_gpu, 1),
        ("--context-tokens", args.context_tokens, 1),
        ("--sample-layers", args.sample_layers, 0),
        ("--kv-tokens-per-gpu", args.kv_tokens_per_gpu, 0),
    ):
        if value is not None and value < least:
            raise PlacementError(f"{flag} must be >= {least}")
    if args.attention_us is not None and not args.attention_us >= 0:
        raise PlacementError("--attention-us must be >= 0")
    if args.time_limit is not None and not args.time_limit > 0:
        raise PlacementError("--time-limit must be > 0")
    sweep = parse_sweep(args.sweep)
    traces: dict[int, Path] = {}
    if args.trace:
        if "experts" in sweep:
            raise PlacementError(
                "--sweep experts needs --model alone (a trace fixes the expert count)"
            )
        facts = read_input(Path(args.trace), args.model)
    else:
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
        facts = read_input(next(iter(traces.values())), None)
        facts = dataclasses.replace(facts, model=shape.name, kind="synthetic routing profile")
    phase, phase_source = _phase(args.phase, facts)
    tokens_per_gpu = args.tokens_per_gpu or DEFAULT_TOKENS_PER_GPU_BY_PHASE[phase]
    tokens_source = "given" if args.tokens_per_gpu else f"default for {phase}"
    context = args.context_tokens or context_from_name(facts.path.name, phase)
    context_source = "given" if args.context_tokens else "file name" if context else "default"
    context = context or DEFAULT_CONTEXT_TOKENS
    base = resolve_cluster(args)
    scenario = Scenario(
        trace=str(facts.path.resolve()),
        trace_fingerprint=facts.fingerprint,
        gpus=base.num_gpus,
        gpus_per_node=base.gpus_per_node,
        gpu=base.gpu.name,
        topology=base.fabric if base.fabric != "none" else "single-switch",
        nic_gbps=float(base.nic_gbits_per_s),
        tokens_per_gpu=tokens_per_gpu,
        redundant=args.redundant,
        experts=facts.num_experts,
        solver=args.solver or default_solver(),
        overlap=args.overlap,
        algo=args.algo,
        mode=args.mode,
        seed=args.seed,
        time_limit_s=args.time_limit,
        model=args.model if args.trace and args.model else "",
        phase=phase,
        sample_layers=args.sample_layers,
        dispatch=args.engine or "share",
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
        prints = {e: read_input(p, None).fingerprint for e, p in traces.items()}
        scenarios = [
            dataclasses.replace(
                s, trace=str(traces[s.experts].resolve()), trace_fingerprint=prints[s.experts]
            )
            for s in scenarios
        ]
    whole = whole_model(facts.model) if facts.model else None
    scenarios = [_with_model_times(s, base, whole, context, args.attention_us) for s in scenarios]
    reference = {a: sweep[a][0] if a in sweep else getattr(scenario, AXES[a][0]) for a in AXES}
    kv_tokens = (
        args.kv_tokens_per_gpu
        if args.kv_tokens_per_gpu is not None
        else kv_tokens_per_gpu(phase, tokens_per_gpu, context)
    )
    meta = {
        "trace": args.trace or f"synthetic profile of {args.model} ({facts.path.name})",
        "input_kind": facts.kind,
        "trace_fingerprint": scenario.trace_fingerprint,
        "trace_shape": facts.shape_text,
        "axes": sweep,
        "reference": reference,
        "base_cluster": base.to_dict(),
        "engine": TIMING_ENGINE,
        "code_version": engine_id(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": len(scenarios),
        "phase": phase,
        "phase_source": phase_source,
        "tokens_per_gpu": tokens_per_gpu,
        "tokens_per_gpu_source": tokens_source,
        "context_tokens": context,
        "context_source": context_source,
        "time_limit_s": args.time_limit,
        "sample_layers": args.sample_layers,
        "whole_model": _model_meta(
            whole, facts.model, args.attention_us, kv_tokens, args.kv_tokens_per_gpu is not None
        ),
        "scope": _scope_text(facts, phase, phase_source, tokens_per_gpu, tokens_source, whole),
    }
    return scenarios, base, meta


def _phase(given: str | None, facts: InputFacts) -> tuple[str, str]:
    """The serving phase and where it came from."""
    if given:
        return given, "given"
    if facts.phase:
        return facts.phase, "from the input"
    return "prefill", "assumed (the input does not say; --phase to set)"


def _with_model_times(
    scenario: Any, base: Any, whole: WholeModel | None, context: int, attention_us: float | None
) -> Any:
    """``scenario`` with the whole model's layer counts and per-layer times outside the routed experts
    for its own GPU type and tokens per GPU (none when the model is unknown: MoE layers only)."""
    if whole is None:
        if attention_us is None:
            return scenario
        return dataclasses.replace(scenario, attention_us=attention_us)
    try:
        cluster = scenario.cluster(base)
    except PlacementError:
        return scenario  # recorded as infeasible when the sweep runs it
    costs = layer_costs(
        whole,
        model_shape(whole.name),
        cluster,
        phase=scenario.phase,
        tokens_per_gpu=scenario.tokens_per_gpu,
        context_tokens=context,
    )
    attention = costs.attention_us if attention_us is None else attention_us
    return dataclasses.replace(
        scenario,
        moe_layers=whole.num_moe_layers,
        dense_layers=whole.num_dense_layers,
        attention_us=attention,
        shared_expert_us=costs.shared_expert_us,
        dense_layer_us=attention + costs.dense_ffn_us,
    )


def _model_meta(
    whole: WholeModel | None,
    name: str,
    attention_us: float | None,
    kv_tokens: int,
    kv_tokens_given: bool,
) -> dict[str, Any] | None:
    """The whole-model and memory-model figures a report states (None: the model is not known)."""
    if whole is None:
        return None
    shape = model_shape(whole.name)
    return {
        "name": whole.name,
        "num_layers": whole.num_layers,
        "num_moe_layers": whole.num_moe_layers,
        "num_dense_layers": whole.num_dense_layers,
        "attention": "measured (--attention-us)" if attention_us is not None else "roofline model",
        "attention_params_per_layer": whole.attention_params,
        "kv_bytes_per_token": whole.kv_bytes_per_token,
        "kv_tokens_per_gpu": kv_tokens,
        # given: every scenario keeps that many; else it follows each scenario's tokens per GPU
        "kv_tokens_given": kv_tokens_given,
        "non_expert_weight_bytes": whole.non_expert_weight_bytes(shape),
        "expert_bytes": shape.expert_weight_bytes,
        "expert_slot_bytes": shape.expert_weight_bytes * whole.num_moe_layers,
        "reserve_fraction": DEFAULT_RESERVE_FRACTION,
    }


def _scope_text(
    facts: InputFacts,
    phase: str,
    phase_source: str,
    tokens_per_gpu: int,
    tokens_source: str,
    whole: WholeModel | None,
) -> str:
    """One paragraph saying what every figure of the report is per."""
    parts = [
        f"Every figure is per step of {tokens_per_gpu:,} tokens per GPU ({tokens_source}), phase "
        f"{phase} ({phase_source})."
    ]
    if facts.kind in ("logical_count JSON", "load-only Parquet"):
        parts.append(
            f"The input is load-only: counts of {facts.num_tokens:,} tokens over a whole run, scaled "
            "to one step (bytes by the independent-choice estimate)."
        )
    if whole is not None:
        parts.append(
            f"Per model ({whole.name}): layer us is one MoE layer with its attention and shared "
            f"expert, the mean of the simulated layers; the step is {whole.num_moe_layers} MoE "
            f"layers plus {whole.num_dense_layers} dense layers (attention + dense FFN), so tokens/s "
            "and $/M tokens are for the whole model (embedding and LM head left out)."
        )
    else:
        parts.append(
            "No whole-model shape is known for this input (--model NAME sets one): tokens/s and "
            "$/M tokens count the MoE layers only (dispatch, experts, combine), an upper bound for "
            "the whole model."
        )
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from moe_placement.pipeline.results import write_results
    from moe_placement.pipeline.sweep import FolderLock, run_sweep
    from moe_placement.reports.report import ReportOptions, build_report

    out = Path(args.out)
    lock = FolderLock(out)  # one run per --out at a time (refused in one line); held until return
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
            progress=not getattr(args, "quiet", False),
        )
        write_results(out, outcome.records, meta)
        summary.update(
            scenarios_run=len(scenarios),
            computed=outcome.computed,
            cached=outcome.cached,
            backend=outcome.backend,
            engine=meta["engine"],
        )
    report = build_report(out, options)
    summary.update(
        report=str(out / "report.html"),
        summary=str(out / "summary.md"),
        scope=report.scope,
        scenarios=report.scenarios,
        smallest_meeting_target=report.smallest_meeting_target,
        cheapest_meeting_target=report.cheapest_meeting_target,
        advice=report.advice,
        redundant_that_fit=report.redundant_that_fit,
        findings=report.findings,
    )
    if args.json:
        print_json(summary)
    else:
        if not args.report_only:
            print(
                f"{summary['scenarios_run']} scenarios: {summary['computed']} computed "
                f"({summary['backend']}), {summary['cached']} from the cache; timing engine "
                f"{summary['engine']}; solver time limit {meta['time_limit_s']:g} s per scenario "
                "(CP-SAT deterministic time)"
            )
        print(report.scope)
        if not args.report_only:
            print(engine_line(args.engine or "share"))
        print(table(report.text_headers, report.text_rows))
        for line in report.text_lines:
            print(line)
        print(
            f"report: {out / 'report.html'}, summary: {out / 'summary.md'}, results: {out / 'results.parquet'}"
        )
    lock.release()
    return 0


COMMAND = Command(
    "whatif",
    "sweep cluster and placement scenarios and report throughput, time and cost",
    add_arguments,
    run,
)
