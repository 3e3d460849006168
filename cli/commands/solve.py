"""``placement solve``: choose a placement for a trace and a cluster, print its metrics, write the plan."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from moe_placement import interrupt, progress
from moe_placement.cli.commands._common import (
    Command,
    add_cluster_args,
    add_engine_arg,
    add_step_args,
    add_trace_args,
    default_traces,
    engine_line,
    load_workload,
    parse_finite,
    print_json,
    resolve_cluster,
    resolve_step,
    table,
)
from moe_placement.cli.commands.evaluate import evaluation_report, print_evaluation
from moe_placement.errors import PlacementError
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU, MODES, evaluate, evaluate_many
from moe_placement.plan import Plan

if TYPE_CHECKING:
    from moe_placement.solvers import PlacementProblem, SolverConfig


def default_solver() -> str:
    """The solver that solve, whatif and regress run when none is named."""
    return "best"


def stored_plan(plan: Plan, deterministic: bool) -> Plan:
    """The plan as written to its file. A deterministic run stores no wall time (it varies run to run
    and would make two files of the same plan differ); the time is printed instead."""
    if not deterministic:
        return plan
    prov = plan.provenance
    extra = {**prov.extra, "seconds": "not stored: deterministic run (see --wall-clock)"}
    return dataclasses.replace(plan, provenance=dataclasses.replace(prov, seconds=0.0, extra=extra))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_problem_arguments(p)
    p.add_argument(
        "--solver",
        default=None,
        help="solver: {solvers}; or 'all' to compare every solver (default: best)",
    )
    p.add_argument("--out", default="plan.json", help="where to write the plan (default plan.json)")


def add_problem_arguments(p: argparse.ArgumentParser) -> None:
    """Everything but the solver choice and the output: shared with ``placement compare``."""
    add_trace_args(p, multiple=True, bundled_default=True)
    add_cluster_args(p)
    p.add_argument(
        "--redundant", type=int, default=0, help="redundant slots for replicas (per layer)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds for the solve once the trace is read: search, bounds, baselines and their "
        "comparison; then the plan is scored once more and written (default 10; with --solver "
        "all, per solver). Deterministic runs (the default) count CP-SAT's deterministic seconds "
        "and stop in any case at 10x the limit in wall time",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="standard", choices=MODES)
    p.add_argument("--current", default=None, help="current plan JSON (incremental re-placement)")
    p.add_argument(
        "--max-moves", type=int, default=None, help="at most this many moved expert slots"
    )
    p.add_argument(
        "--weights", default=None, help="comma-separated weight per --trace (robust placement)"
    )
    p.add_argument("--robust", default="weighted", choices=("weighted", "worst"))
    p.add_argument(
        "--robust-windows",
        type=int,
        default=4,
        help="solver robust: time windows of the trace taken as scenarios of the traffic to come",
    )
    p.add_argument(
        "--redundant-total",
        type=int,
        default=None,
        help="model-wide budget of redundant slots, spread over layers by marginal benefit "
        "(replaces --redundant; the plan is padded to equal slots per layer)",
    )
    p.add_argument(
        "--memory-gib",
        type=float,
        default=None,
        help="GiB per GPU for expert weights over all layers: sets --redundant-total from it",
    )
    add_step_args(p)
    add_engine_arg(p)
    p.add_argument(
        "--balance-weight",
        type=float,
        default=1.0,
        help="weight of compute balance in the objective",
    )
    p.add_argument(
        "--traffic-weight", type=float, default=1.0, help="weight of link traffic in the objective"
    )
    p.add_argument(
        "--free-memory-gib",
        type=float,
        default=None,
        help="free GPU memory for expert weights; too little -> infeasible (exit 2)",
    )
    p.add_argument(
        "--node-limit",
        type=int,
        default=None,
        help="DeepSeek-style node-limited routing: each token reaches at most this many nodes",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="CP-SAT worker threads with --wall-clock (a deterministic run uses one)",
    )
    timing = p.add_mutually_exclusive_group()
    timing.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=True,
        help="the default: one CP-SAT worker on a deterministic time limit (--time-limit in CP-SAT's "
        "deterministic units, about seconds): the same input and flags give a byte-identical plan",
    )
    timing.add_argument(
        "--wall-clock",
        dest="deterministic",
        action="store_false",
        help="CP-SAT on --time-limit wall seconds with --workers threads: uses the machine fully, "
        "but the plan varies with machine load",
    )
    p.add_argument("--json", action="store_true")


def build_problem(args: argparse.Namespace) -> Any:
    from moe_placement.solvers import PlacementProblem

    args.trace = default_traces(args, args.command)
    cluster = fitting_cluster(args)
    args.step_scope = resolve_step(args, args.trace[0])
    workloads = tuple(load_workload(t, cluster.num_gpus, args.home, args.model) for t in args.trace)
    weights: tuple[float, ...] = ()
    if args.weights:
        weights = tuple(parse_finite(w, "--weights") for w in args.weights.split(","))
        if any(w < 0 for w in weights):
            raise PlacementError(f"--weights must be >= 0, got {args.weights!r}")
    current = Plan.load(args.current) if args.current else None
    problem = PlacementProblem(
        workloads=workloads,
        cluster=cluster,
        num_redundant=args.redundant,
        mode=args.mode,
        weights=weights,
        current=current,
        max_moves=args.max_moves,
        engine=args.engine or "share",
    )
    return problem


def fitting_cluster(args: argparse.Namespace) -> Any:
    """The cluster of ``--cluster``/``--gpus``/``--gpus-per-node``. Without ``--gpus``, a preset with
    more GPUs than the trace has expert slots (experts + redundant; the default h100-multirail has 64,
    the bundled trace 16 experts) is cut to the most GPUs the slots fill evenly, said on stderr."""
    cluster = resolve_cluster(args)
    slots = _num_experts(args.trace[0], args) + max(args.redundant, 0)
    if args.gpus is not None or slots >= cluster.num_gpus:
        return cluster
    per_node = cluster.gpus_per_node
    fits = [
        g
        for g in range(min(slots, cluster.num_gpus), 0, -1)
        if slots % g == 0 and (g % per_node == 0 or g < per_node)
    ]
    gpus = fits[0]
    # said once the whole command line is known to be good (see say_notices): a bad input keeps its
    # one-line answer
    args.notices = [
        *getattr(args, "notices", []),
        f"placement {args.command}: no --gpus given: {gpus} GPUs, as the trace's {slots} expert "
        f"slots ({slots - args.redundant} experts + {args.redundant} redundant) cannot fill "
        f"{cluster.name}'s {cluster.num_gpus}",
    ]
    return cluster.with_counts(gpus, min(per_node, gpus))


def say_notices(args: argparse.Namespace) -> None:
    """Write the notices gathered while the inputs were read, once nothing more can be refused."""
    for notice in getattr(args, "notices", []):
        sys.stderr.write(notice + "\n")
    args.notices = []


def _num_experts(trace: str, args: argparse.Namespace) -> int:
    """The trace's expert count: from a per-token trace's metadata, else from its loads."""
    from moe_placement.traces.reader import TraceFile

    try:
        return TraceFile(trace).meta.num_experts
    except PlacementError:  # load-only input (logical_count JSON or load Parquet), or unreadable
        return load_workload(trace, None, args.home, args.model).num_experts


def solver_config(args: argparse.Namespace) -> Any:
    from moe_placement.solvers import SolverConfig

    kwargs: dict[str, Any] = {
        "seed": args.seed,
        "robust": args.robust,
        "balance_weight": args.balance_weight,
        "traffic_weight": args.traffic_weight,
        "free_memory_gib": args.free_memory_gib,
        "workers": args.workers,
        "node_limit": args.node_limit,
        "extra": {
            "deterministic": bool(args.deterministic),
            "windows": getattr(args, "robust_windows", 4),
        },
    }
    if args.balance_weight < 0 or args.traffic_weight < 0:
        raise PlacementError("--balance-weight and --traffic-weight must be >= 0")
    if args.workers < 1:
        raise PlacementError("--workers must be >= 1")
    if args.time_limit is not None:
        kwargs["time_limit_s"] = args.time_limit
    return SolverConfig(**kwargs)


# A deterministic run's limit is in CP-SAT's deterministic units, about seconds on an idle machine; on a
# loaded one the same search takes longer in wall time (measured: 10x at a load of 17 on 2 cores). The
# command still answers in bounded time: at this many times the limit in wall time the search stops
# (the plan is then marked "time limit reached" and may differ from an unhurried run's). The factor is
# set to the slowdown measured under load so that identity holds on a busy machine; a user who needs a
# tight wall-clock bound asks for --wall-clock.
DETERMINISTIC_WALL_FACTOR = 10.0


def _solve_one(
    args: argparse.Namespace, problem: PlacementProblem, config: SolverConfig, name: str
) -> tuple[Plan, str, dict[str, Any] | None]:
    """One solver's plan, within a replica budget when one is asked for (then its note and report)."""
    from moe_placement.solvers import run_solver

    if args.redundant_total is None and args.memory_gib is None:
        # stopped by SIGINT or by its time limit: the best plan so far, marked in provenance
        with progress.step(f"solving with {name}"):
            return run_solver(name, problem, config), "", None
    from moe_placement.solvers.budget import (
        budget_report,
        describe,
        solve_with_budget,
        total_from_args,
    )

    total = total_from_args(problem, args.redundant_total, args.memory_gib)
    with progress.step(f"solving a budget of {total} redundant slots with {name}"):
        result = solve_with_budget(problem, config, name, total)
    return result.plan, describe(result), budget_report(result)


def wall_edge_s(time_limit_s: float, deterministic: bool) -> float | None:
    """The solve command's wall-clock edge for a deterministic run (a wall-clock run has its own,
    :func:`moe_placement.solvers.base.hard_limit_s`)."""
    return time_limit_s * DETERMINISTIC_WALL_FACTOR if deterministic else None


def marked_stopped(plan: Plan, reason: str) -> Plan:
    prov = plan.provenance
    extra = {**prov.extra, "stopped": reason}
    return dataclasses.replace(plan, provenance=dataclasses.replace(prov, extra=extra))


def run(args: argparse.Namespace) -> int:
    """SIGINT while solving ends the search: the best plan so far is written whole, marked "stopped by
    the user" in provenance (with its gap), exit 0; a second SIGINT exits at once (130); SIGTERM cleans
    up and exits 143 (:mod:`moe_placement.interrupt`)."""
    with interrupt.graceful_stop(
        "placement solve: stopping: the best plan so far will be written (Ctrl-C again to quit)"
    ):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from moe_placement.solvers import REGISTRY

    problem = build_problem(args)
    if interrupt.requested():  # stopped while reading the trace: nothing to write
        raise KeyboardInterrupt
    config = solver_config(args)
    say_notices(args)
    cluster = problem.cluster
    name = args.solver or default_solver()
    if name == "all":
        if args.redundant_total is not None or args.memory_gib is not None:
            raise PlacementError(
                "--solver all compares with --redundant; a budget needs one solver"
            )
        return compare_solvers(args, problem, config, sorted(REGISTRY))
    # the edge ends with its block whatever happens in it: one left armed after an error would stop
    # a later solve of the same process (in-process runs: what-if, tests) when it fired
    with interrupt.deadline(wall_edge_s(config.time_limit_s, args.deterministic)) as edge:
        plan, budget_note, budget_json = _solve_one(args, problem, config, name)
    if edge.reached and "stopped" not in plan.provenance.extra:  # the wall edge stopped the search
        plan = marked_stopped(plan, interrupt.TIME_LIMIT_REACHED)
    stopped = interrupt.requested()
    stored_plan(plan, args.deterministic).save(args.out)
    if stopped:
        sys.stderr.write(
            f"placement solve: {stopped}: wrote the best plan found so far "
            f"(gap {plan.provenance.gap or 0:.3%} to the bound)\n"
        )
    ev = evaluate(
        plan, cluster, problem.workload, mode=args.mode, tokens_per_gpu=args.tokens_per_gpu
    )
    if args.json:
        report = evaluation_report(ev, plan, args.step_scope)
        report["out"] = args.out
        if budget_json is not None:
            report["budget"] = budget_json
        print_json(report)
    else:
        prov = plan.provenance
        bound = ""
        if prov.bound is not None:
            bound = f", MoE time {prov.objective:.6g} us, bound {prov.bound:.6g} us, gap {prov.gap or 0:.3%}"
        search = prov.extra.get("search_objective")
        if search is not None:
            bound += (
                f" (search model {search:.6g} us, its gap {prov.extra.get('search_gap', 0):.3%})"
            )
        if bound and args.tokens_per_gpu != DEFAULT_TOKENS_PER_GPU:
            # The solvers score every plan at their fixed step; the table below is at the asked one.
            bound += (
                f" [these at the solvers' step of {DEFAULT_TOKENS_PER_GPU} tokens per GPU; at "
                f"{args.tokens_per_gpu}: MoE time {ev.summary()['moe_time_us']:.6g} us]"
            )
        print_evaluation(
            ev,
            f"solver {name} ({prov.method}) in {prov.seconds:.2f} s{bound}; "
            f"{cluster.num_gpus} GPUs x {plan.slots_per_gpu} slots on {cluster.name}",
            args.step_scope,
        )
        covers = prov.extra.get("bound_covers")
        if prov.gap is not None and prov.gap > LOOSE_GAP and covers:
            # a large gap is most often a weak bound, not a bad plan: say what the bound counts
            print(f"bound (gap {prov.gap:.1%} over {LOOSE_GAP:.0%}): {covers}")
        if args.node_limit is not None:
            print(node_limit_note(args.node_limit, cluster.num_nodes, problem.workload.per_token))
        if budget_note:
            print(budget_note)
        print(f"plan written to {args.out}")
    return 0


LOOSE_GAP = 0.15  # above this gap solve says what the bound counts and why it is loose


def node_limit_note(node_limit: int, num_nodes: int, per_token: bool) -> str:
    """What ``--node-limit`` changed in the figures above, and what it did not."""
    if node_limit >= num_nodes:
        return (
            f"--node-limit {node_limit}: no effect ({num_nodes} nodes, so every token already reaches "
            "at most that many)"
        )
    routes = (
        "the trace's recorded routes (its router already chose them)"
        if per_token
        else "an independent-choice estimate that does not cap a token's nodes"
    )
    return (
        f"--node-limit {node_limit}: the solver's search model caps each token at {node_limit} of "
        f"{num_nodes} nodes (the search-model figure and its gap above); the evaluator's table and "
        f"bound score {routes}"
    )


def compare_solvers(args: argparse.Namespace, problem: Any, config: Any, names: list[str]) -> int:
    """Run each solver in ``names`` on one problem; print one table side by side (or JSON)."""
    from moe_placement.solvers import run_solver

    cluster = problem.cluster
    plans = []
    for i, solver in enumerate(names, 1):
        with progress.step(f"solving with {solver} ({i} of {len(names)})"):
            plans.append(run_solver(solver, problem, config))
    # every plan in one pass over the trace (a per-token trace may be large)
    evaluations = evaluate_many(
        plans,
        cluster,
        problem.workload,
        mode=args.mode,
        tokens_per_gpu=args.tokens_per_gpu,
        engine=problem.engine,
    )
    if "best" in names:
        plans, evaluations = best_never_worse(args, problem, config, names, plans, evaluations)
    rows, results = [], []
    for solver, plan, ev in zip(names, plans, evaluations, strict=True):
        s = ev.summary()
        prov = plan.provenance
        rows.append(
            [
                solver,
                s["mean_max_over_mean"],
                s["worst_max_over_mean"],
                s["inter_node_bytes"],
                s["hops"],
                s["moe_time_us"],
                prov.extra.get("search_objective", "-"),
                prov.seconds,
                "-" if prov.gap is None else f"{prov.gap:.1%}",  # in % as solve prints it
                prov.method,
            ]
        )
        results.append({"solver": solver, "summary": s, "provenance": prov.to_dict()})
    if args.json:
        print_json(
            {
                "cluster": cluster.name,
                "num_gpus": cluster.num_gpus,
                "engine": problem.engine,
                "solvers": results,
            }
        )
    else:
        print(engine_line(problem.engine))
        print(
            table(
                [
                    "solver",
                    "mean max/mean",
                    "worst",
                    "NIC bytes",
                    "hops",
                    "MoE us",
                    "search model us",
                    "solve s",
                    "gap",
                    "method",
                ],
                rows,
            )
        )
    return 0


def best_never_worse(
    args: argparse.Namespace,
    problem: Any,
    config: Any,
    names: list[str],
    plans: list[Plan],
    evaluations: list[Any],
) -> tuple[list[Plan], list[Any]]:
    """``best`` is never worse, by the evaluator, than a plan it is compared with: a layer another
    solver's plan times faster is taken from it (:func:`moe_placement.solvers.guarantee.never_worse`)."""
    from moe_placement.solvers.guarantee import never_worse

    i = names.index("best")
    others = [
        (name, plan, ev.layer_us())
        for name, plan, ev in zip(names, plans, evaluations, strict=True)
        if name != "best"
    ]
    merged = never_worse(problem, config, plans[i], evaluations[i].layer_us(), others)
    if merged is plans[i]:
        return plans, evaluations
    [ev] = evaluate_many(
        [merged],
        problem.cluster,
        problem.workload,
        mode=args.mode,
        tokens_per_gpu=args.tokens_per_gpu,
        engine=problem.engine,
    )
    plans, evaluations = list(plans), list(evaluations)
    plans[i], evaluations[i] = merged, ev
    return plans, evaluations


COMMAND = Command(
    "solve", "choose an expert placement for a trace and a cluster", add_arguments, run
)
