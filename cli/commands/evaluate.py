"""``placement evaluate``: metrics of a plan on a trace and a cluster."""

from __future__ import annotations

import argparse
from typing import Any

from moe_placement.cli.commands._common import (
    Command,
    StepScope,
    add_cluster_args,
    add_engine_arg,
    add_step_args,
    add_trace_args,
    engine_line,
    human_bytes,
    load_workload,
    print_json,
    resolve_cluster,
    resolve_step,
    table,
)
from moe_placement.metrics import MODES, Evaluation, evaluate
from moe_placement.plan import Plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_trace_args(p, multiple=False)
    p.add_argument("--plan", required=True, help="plan JSON")
    add_cluster_args(p)
    p.add_argument("--mode", default="standard", choices=MODES)
    add_step_args(p)
    add_engine_arg(p, "(default: the engine the plan was solved for, else the share-aware router)")
    p.add_argument("--json", action="store_true")


def evaluation_report(ev: Evaluation, plan: Plan, step: StepScope | None = None) -> dict[str, Any]:
    out = ev.to_dict()
    if step is not None:
        # Bytes and hops in ``summary`` and ``layers`` are for the input as given; times for the step.
        out["scope"] = {
            "tokens_per_gpu": step.tokens_per_gpu,
            "phase": step.phase,
            "phase_source": step.phase_source,
            "times": "per step of tokens_per_gpu tokens on every GPU",
            "bytes_and_hops": f"for the input as given ({ev.tokens} tokens); x time_scale per step",
        }
    out["plan"] = {"fingerprint": plan.fingerprint(), **plan.provenance.to_dict()}
    return out


def print_evaluation(ev: Evaluation, title: str, step: StepScope | None = None) -> None:
    """The per-layer table and the total, every figure for one step: the evaluator's bytes and hops
    are for the input as given, so they are scaled (by ``ev.scale``) to the step its times are for."""
    per = ev.scale
    rows = [
        [
            r["layer"],
            r["max_over_mean"],
            human_bytes((r["dispatch_intra_bytes"] + r["combine_intra_bytes"]) * per),
            human_bytes((r["dispatch_inter_bytes"] + r["combine_inter_bytes"]) * per),
            human_bytes(r["busiest_nic_bytes"] * per),
            round(r["hops"] * per),
            t.dispatch_us,
            t.compute_us,
            t.combine_us,
            t.layer_us,
        ]
        for r, t in zip(ev.per_layer(), ev.step_time().layers, strict=True)
    ]
    print(title)
    print(engine_line(ev.engine))
    if step is not None:
        print(step.line(ev.num_gpus, ev.tokens, "load-only" in ev.bytes_model, per))
    print(
        table(
            [
                "layer",
                "max/mean",
                "NVLink",
                "NIC",
                "busiest NIC",
                "hops",
                "disp us",
                "comp us",
                "comb us",
                "layer us",
            ],
            rows,
        )
    )
    s = ev.summary()
    print(
        f"total: mean max/mean {s['mean_max_over_mean']:.4f} (worst {s['worst_max_over_mean']:.4f}), "
        f"NVLink {human_bytes(s['intra_node_bytes'] * per)}, NIC {human_bytes(s['inter_node_bytes'] * per)}, "
        f"hops {round(s['hops'] * per)} per step, MoE time {s['moe_time_us']:.1f} us per step "
        f"({ev.mode} mode, bytes: {ev.bytes_model})"
    )


def run(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    cluster = resolve_cluster(args, plan.num_gpus, plan.gpus_per_node)
    workload = load_workload(args.trace, cluster.num_gpus, args.home, args.model)
    step = resolve_step(args, args.trace)
    ev = evaluate(
        plan,
        cluster,
        workload,
        mode=args.mode,
        tokens_per_gpu=args.tokens_per_gpu,
        engine=args.engine,
    )
    if args.json:
        print_json(evaluation_report(ev, plan, step))
    else:
        print_evaluation(
            ev,
            f"plan {args.plan} ({plan.provenance.solver}) on {cluster.name}, {cluster.num_gpus} GPUs",
            step,
        )
    return 0


COMMAND = Command(
    "evaluate",
    "evaluate a plan: load balance, deduplicated bytes, time estimate",
    add_arguments,
    run,
)
