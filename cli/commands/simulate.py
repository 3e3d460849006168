"""``placement simulate``: play a plan on a trace (or uniform traffic) through the network simulator."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from moe_placement.cli.commands._common import (
    Command,
    add_cluster_args,
    add_engine_arg,
    add_step_args,
    engine_line,
    human_bytes,
    load_workload,
    positive_int,
    print_json,
    resolve_cluster,
    resolve_step,
    table,
)
from moe_placement.cluster import ClusterSpec
from moe_placement.dispatch import plan_engine
from moe_placement.errors import PlacementError
from moe_placement.metrics import MODES
from moe_placement.plan import Plan
from moe_placement.simulator.collectives import ALGOS
from moe_placement.simulator.decompose import TERM_KEYS
from moe_placement.workload import HOME_POLICIES

# From this many GPUs a uniform run says up front that the exact simulation takes minutes (measured,
# docs/simulator.md, Speed: the work per event grows with the classes sharing each NIC).
SLOW_EXACT_GPUS = 512


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", default=None, help="trace Parquet file or logical_count JSON (with --plan)"
    )
    p.add_argument("--plan", default=None, help="plan JSON (with --trace)")
    p.add_argument(
        "--traffic",
        default=None,
        choices=["uniform"],
        help="microbenchmark traffic instead of a trace",
    )
    p.add_argument(
        "--model", default=None, help="model shape for load-only JSON (deepseek-v3, ...)"
    )
    p.add_argument(
        "--home", default="token", choices=HOME_POLICIES, help="how tokens map to home GPUs"
    )
    add_cluster_args(p)
    p.add_argument("--algo", default="deepep", choices=list(ALGOS))
    p.add_argument(
        "--sms",
        type=positive_int,
        default=None,
        help="hybrid-ep: SMs its kernels get per GPU (default: the cluster's comm_sms, 16)",
    )
    p.add_argument("--overlap", default="none", choices=["none", "two-batch", "chunked"])
    p.add_argument("--mode", default="standard", choices=MODES)
    add_step_args(p)
    add_engine_arg(p, "(default: the engine the plan was solved for, else the share-aware router)")
    p.add_argument(
        "--layers", default=None, help="comma-separated MoE layers to simulate (default all)"
    )
    p.add_argument("--attention-us", type=float, default=0.0)
    p.add_argument("--shared-expert-us", type=float, default=0.0)
    p.add_argument("--routing", default="spray", choices=["spray", "ecmp"])
    p.add_argument(
        "--no-pxn", action="store_true", help="send cross-rail traffic through the fabric"
    )
    p.add_argument("--tokens", type=int, default=4096, help="uniform: tokens per GPU")
    p.add_argument("--hidden", type=int, default=7168, help="uniform: hidden size")
    p.add_argument("--top-k", type=int, default=8, help="uniform: experts per token")
    p.add_argument("--experts", type=int, default=256, help="uniform: routed experts")
    p.add_argument("--node-limit", type=int, default=None, help="uniform: nodes a token may reach")
    p.add_argument(
        "--dispatch-bytes", type=float, default=1.0 + 4.0 / 128.0, help="uniform: bytes/element"
    )
    p.add_argument("--combine-bytes", type=float, default=2.0, help="uniform: bytes/element")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fast",
        action="store_true",
        help="analytical estimate from each phase's busiest link instead of the event simulation "
        "(uniform traffic: within 12%% of it; a plan without overlap: within 20%%; docs/simulator.md)",
    )
    p.add_argument(
        "--finish-window",
        type=float,
        default=None,
        metavar="SHARE",
        help="flows that finish within this share of the simulated time end in one event: fewer "
        "events (uniform traffic at 3e-3: within 1.5%% of the exact simulation, 5.7x faster at 512 "
        "GPUs; layers without --overlap too; at most 0.01; docs/simulator.md). Default: exact",
    )
    p.add_argument(
        "--event-loop",
        choices=("compiled", "simpy"),
        default=None,
        help="play the phases in the compiled event loop (default for uniform traffic and for "
        "layers without --overlap) or as SimPy processes (the reference: the same events, several "
        "times slower; the overlapped modes always)",
    )
    p.add_argument(
        "--chrome-trace", default=None, metavar="FILE", help="write a Chrome/Perfetto trace"
    )
    p.add_argument(
        "--chakra",
        default=None,
        metavar="PREFIX",
        help="also write Chakra execution traces PREFIX.<rank>.et (needs mlc-chakra)",
    )
    p.add_argument("--json", action="store_true")


def _with_sms(cluster: ClusterSpec, args: argparse.Namespace) -> ClusterSpec:
    """The cluster with ``--sms`` SMs for the communication kernels, when given."""
    if args.sms is None:
        return cluster
    return dataclasses.replace(cluster, comm_sms=args.sms)


def _uniform(args: argparse.Namespace) -> int:
    from moe_placement.simulator import simulate_uniform
    from moe_placement.simulator.moe import check_finish_window, check_uniform_args

    if args.trace or args.plan:
        raise PlacementError("--traffic uniform takes no --trace/--plan")
    if args.chrome_trace or args.chakra:
        raise PlacementError("--chrome-trace and --chakra need a --trace/--plan simulation")
    cluster = _with_sms(resolve_cluster(args), args)
    # the arguments checked first: a refused run gets its one line, not this note before it
    check_uniform_args(
        args.algo,
        cluster.num_gpus,
        args.tokens,
        args.hidden,
        args.top_k,
        args.experts,
        args.node_limit,
    )
    check_finish_window(args.finish_window, args.fast, args.event_loop or "compiled")
    if not args.fast and args.finish_window is None and cluster.num_gpus >= SLOW_EXACT_GPUS:
        print(
            f"note: the exact event simulation of {cluster.num_gpus} GPUs is long (DeepEP, 4096 "
            "tokens: ~2-3 min at 512 GPUs, over half an hour at 1024 on 2 CPUs); "
            "--finish-window 3e-3 gives it within 1.5% in about a minute, --fast within 12% in seconds",
            file=sys.stderr,
        )
    res = simulate_uniform(
        cluster,
        tokens=args.tokens,
        hidden=args.hidden,
        top_k=args.top_k,
        node_limit=args.node_limit,
        dispatch_bytes=args.dispatch_bytes,
        combine_bytes=args.combine_bytes,
        algo=args.algo,
        seed=args.seed,
        num_experts=args.experts,
        routing=args.routing,
        pxn=not args.no_pxn,
        fast=args.fast,
        event_loop=args.event_loop or "compiled",
        finish_window=args.finish_window,
        progress=True,  # a bar per phase on a terminal (stderr), nothing otherwise
    )
    if args.json:
        print_json(res)
        return 0
    rows: list[list[Any]] = []
    for phase in ("dispatch", "combine"):
        rdma = res[f"{phase}_rdma_gbytes_per_s"]
        rows.append(
            [
                phase,
                res[f"{phase}_us"],
                res[f"{phase}_nvl_gbytes_per_s"],
                "-" if rdma is None else rdma,
                res[phase]["lower_bound_us"],
            ]
        )
    print(
        f"uniform traffic, {res['num_gpus']} GPUs ({res['gpus_per_node']} per node) on {cluster.name}, "
        f"algo {args.algo}, {args.tokens} tokens/GPU, top-{args.top_k} of {res['num_experts']}"
    )
    print(
        table(["phase", "time us", "NVL GB/s (DeepEP count)", "RDMA GB/s", "lower bound us"], rows)
    )
    if args.fast:
        print(
            f"fast analytical estimate (busiest link + latency, within 12% of the event simulation), "
            f"wall {res['wall_s']:.2f} s"
        )
    else:
        window = ""
        if args.finish_window is not None:
            window = f", finishes batched within {args.finish_window:g} of the simulated time"
        print(f"events {res['events']}, flows {res['flows']}{window}, wall {res['wall_s']:.2f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    from moe_placement.simulator import warmup

    warmup.install()  # a cold kernel cache compiles in parallel workers (once, with a message)
    if args.traffic == "uniform":
        return _uniform(args)
    if not args.trace or not args.plan:
        raise PlacementError("give --trace and --plan, or --traffic uniform")
    if args.finish_window is not None and args.overlap != "none":
        raise PlacementError("--finish-window plays layers without overlap: drop --overlap")
    if args.fast and (args.chrome_trace or args.chakra):
        raise PlacementError("--fast plays no flows: drop it for --chrome-trace or --chakra")
    if args.event_loop == "compiled" and args.overlap != "none":
        raise PlacementError("--event-loop compiled plays layers without overlap; use simpy")
    from moe_placement.simulator import simulate_moe

    plan = Plan.load(args.plan)
    if args.engine:  # the simulated traffic follows this engine's replica dispatch
        plan = dataclasses.replace(
            plan, provenance=dataclasses.replace(plan.provenance, engine=args.engine)
        )
    cluster = _with_sms(resolve_cluster(args, plan.num_gpus, plan.gpus_per_node), args)
    workload = load_workload(args.trace, cluster.num_gpus, args.home, args.model)
    step_scope = resolve_step(args, args.trace)
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise PlacementError(
                f"--layers must be comma-separated integers, got {args.layers!r}"
            ) from None
        if not layers:
            raise PlacementError(f"--layers names no layer: {args.layers!r}")
    res = simulate_moe(
        plan,
        cluster,
        workload,
        mode=args.mode,
        algo=args.algo,
        overlap=args.overlap,
        tokens_per_gpu=args.tokens_per_gpu,
        layers=layers,
        attention_us=args.attention_us,
        shared_expert_us=args.shared_expert_us,
        seed=args.seed,
        routing=args.routing,
        pxn=not args.no_pxn,
        fast=args.fast,
        event_loop=args.event_loop,
        finish_window=args.finish_window,
    )
    if args.chrome_trace:
        res.write_chrome_trace(args.chrome_trace)
    if args.chakra:
        from moe_placement.simulator.chakra_export import export_chakra

        export_chakra(
            plan,
            cluster,
            workload,
            args.chakra,
            algo=args.algo,
            mode=args.mode,
            tokens_per_gpu=args.tokens_per_gpu,
            layers=layers,
        )
    if args.json:
        print_json({**res.to_dict(), "engine": plan_engine(plan)})
        return 0
    step = res.step_time()
    rows = [
        [
            r["layer"],
            t.dispatch_us,
            t.compute_us,
            t.combine_us,
            t.layer_us,
            t.exposed_comm_us,
            r["comm_lower_bound_us"],
            r.get("evaluator_us", "-"),
            _main_difference(r),
        ]
        for r, t in zip(res.per_layer, step.layers, strict=True)
    ]
    print(
        f"plan {args.plan} on {cluster.name} ({cluster.num_gpus} GPUs), algo {args.algo}, overlap {args.overlap}"
    )
    print(engine_line(plan_engine(plan)))
    headers = ["layer", "disp us", "comp us", "comb us", "layer us", "exposed us", "comm LB us"]
    print(
        step_scope.line(
            cluster.num_gpus,
            workload.num_tokens,
            not workload.per_token,
            args.tokens_per_gpu * cluster.num_gpus / max(workload.num_tokens, 1),
        )
    )
    print(table([*headers, "evaluator us", "largest added us"], rows))
    if args.overlap != "none":
        print(
            "phases overlap (micro-batches or chunks run concurrently): each phase column is its own "
            "span, so they add up to more than the layer time"
        )
    s = res.summary()
    print(
        f"total {s['total_us']:.1f} us; NVLink {human_bytes(s['nvlink_bytes_sent'])}, "
        f"NIC {human_bytes(s['nic_bytes_sent'])}; events {s['events']}, wall {s['wall_s']:.2f} s"
    )
    print(
        "bytes: sent on the links in this step, as evaluate and solve show them per step; algo "
        "deepep sends a token once per destination node over the NIC (as the evaluator counts), "
        "direct once per destination GPU, so its NIC bytes are higher"
    )
    return 0


def _main_difference(row: dict[str, Any]) -> str:
    """The named term (:mod:`moe_placement.simulator.decompose`) that adds most time over the
    evaluator's, e.g. ``pipeline +11.9``; the JSON output holds every term, the negative ones (time
    hidden by GPUs moving on as their data lands) included."""
    keys = [k for k in TERM_KEYS if k != "evaluator_us"] + ["attention_us"]
    terms = {k: float(row[k]) for k in keys if k in row}
    if not terms or max(terms.values()) <= 1e-9:
        return "-" if not terms else "none"
    name, value = max(terms.items(), key=lambda kv: kv[1])
    return f"{name.removesuffix('_us')} {value:+.3g}"


COMMAND = Command(
    "simulate", "simulate a plan (or uniform traffic) on a network topology", add_arguments, run
)
