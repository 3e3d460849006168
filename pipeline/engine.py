"""Run one what-if scenario: derive the workload, solve the placement, time it, and flatten the result.

Timing comes from the SimPy network simulator (``simulator.simulate_moe``) when it is importable; until it
is, from the analytic times of :func:`moe_placement.metrics.evaluate` (busiest-link communication plus
roofline compute), with a simple overlap model. The engine used is recorded in every result and is part of
the cache key, so results of the two engines are never mixed silently.

Load and byte metrics always come from :func:`moe_placement.metrics.evaluate` (the one metrics module), so a
number in a report means the same as in ``placement evaluate``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.cluster import PRESETS, ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.metrics import Evaluation, evaluate
from moe_placement.pipeline.scenario import Scenario
from moe_placement.plan import Plan
from moe_placement.workload import Workload

# Micro-batches or chunks a layer's communication is split into for the analytic overlap model.
OVERLAP_PIECES = {"none": 1, "two-batch": 2, "chunked": 4}

# Scale-out network capital cost per endpoint by topology (Insights into DeepSeek-V3, arXiv 2505.09343:
# FT2 4.39 k$, MPFT 4.39 k$, FT3 7.5 k$). A single switch and multi-rail are two-tier fat-trees at most.
ENDPOINT_USD_BY_TOPOLOGY = {
    "single-switch": 4390.0,
    "multi-rail": 4390.0,
    "multi-plane": 4390.0,
    "three-tier": 7500.0,
}

_WORKLOADS: dict[tuple[str, str, int], Workload] = {}


def simulator_fn() -> Callable[..., Any] | None:
    """The simulator's ``simulate_moe`` if the simulator package provides it, else ``None``."""
    try:
        from moe_placement.simulator import simulate_moe
    except ImportError:
        return None
    return simulate_moe  # type: ignore[no-any-return]


def timing_engine() -> str:
    """``simulator`` when the network simulator is importable, else ``analytic``."""
    return "analytic" if simulator_fn() is None else "simulator"


def code_version() -> str:
    """Hash of the source that turns a scenario into numbers (solvers, evaluator, simulator, this
    module), so cached results are recomputed when any of it changes. Read from disk on every call
    (a few milliseconds): a long-lived process must not keep an outdated version."""
    import moe_placement as placement
    from moe_placement import solvers, traces

    roots = [Path(solvers.__file__).parent, Path(__file__)]
    placement_dir = Path(placement.__file__).parent
    roots += [
        placement_dir / f
        for f in ("metrics.py", "cluster.py", "workload.py", "plan.py", "shapes.py")
    ]
    roots.append(Path(traces.__file__).parent / "derive.py")
    if simulator_fn() is not None:
        from moe_placement import simulator

        roots.append(Path(simulator.__file__).parent)
    digest = hashlib.sha256()
    for root in roots:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(path.parents[1])).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def workload_for(trace: str, fingerprint: str, num_gpus: int) -> Workload:
    """The trace's workload with per-home demand for ``num_gpus`` (memoised per process)."""
    key = (trace, fingerprint, num_gpus)
    if key not in _WORKLOADS:
        from moe_placement.traces.derive import derive_workload
        from moe_placement.traces.reader import TraceFile

        trace_file = TraceFile(trace)
        if trace_file.fingerprint() != fingerprint:
            raise PlacementError(f"trace {trace} changed while the sweep ran")
        if len(_WORKLOADS) > 16:  # bound memory in long-lived Ray workers
            _WORKLOADS.clear()
        _WORKLOADS[key] = derive_workload(trace_file, num_gpus=num_gpus)
    return _WORKLOADS[key]


def gpu_hour_usd_for(gpu: str, base: ClusterSpec) -> float:
    """Price per GPU-hour: the base cluster's for its own GPU type, else the first preset's with that type."""
    if gpu == base.gpu.name:
        return base.gpu_hour_usd
    for spec in PRESETS.values():
        if spec.gpu.name == gpu:
            return spec.gpu_hour_usd
    return base.gpu_hour_usd


def endpoint_usd_for(topology: str, base: ClusterSpec) -> float:
    """Network cost per endpoint: the base cluster's for its own fabric, else the published figure."""
    if topology == base.fabric:
        return base.network_cost_per_endpoint_usd
    return ENDPOINT_USD_BY_TOPOLOGY.get(topology, base.network_cost_per_endpoint_usd)


def analytic_layers(ev: Evaluation, overlap: str) -> list[dict[str, float]]:
    """Per-layer times from the evaluator. Overlap splits a layer into ``n`` pieces pipelined over
    communication and compute: ``max(comm, compute) + min(comm, compute) / n`` (the pipeline's fill)."""
    pieces = OVERLAP_PIECES[overlap]
    rows = []
    for r in ev.per_layer():
        comm_us = r["dispatch_us"] + r["combine_us"]
        comp_us = r["compute_us"]
        if pieces == 1:
            layer_us = comm_us + comp_us
        else:
            layer_us = max(comm_us, comp_us) + min(comm_us, comp_us) / pieces
        rows.append(
            {
                "layer": int(r["layer"]),
                "dispatch_us": r["dispatch_us"],
                "compute_us": comp_us,
                "combine_us": r["combine_us"],
                "layer_us": layer_us,
                "exposed_comm_us": max(0.0, layer_us - comp_us),
            }
        )
    return rows


def simulate_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    ev: Evaluation,
    *,
    mode: str,
    algo: str,
    overlap: str,
    tokens_per_gpu: int,
) -> tuple[list[dict[str, float]], str]:
    """Per-layer times ``[{layer, dispatch_us, compute_us, combine_us, layer_us, exposed_comm_us}]`` and
    the engine that produced them (``ev`` is the analytic evaluation of the same plan, the fallback)."""
    simulate = simulator_fn()
    if simulate is None:
        return analytic_layers(ev, overlap), "analytic"
    res = simulate(
        plan,
        cluster,
        workload,
        mode=mode,
        algo=algo,
        overlap=overlap,
        tokens_per_gpu=tokens_per_gpu,
        progress=False,  # the sweep shows one bar over scenarios, not one per simulation
    )
    keys = ("dispatch_us", "compute_us", "combine_us", "layer_us", "exposed_comm_us")
    rows = [{"layer": int(r["layer"]), **{k: float(r[k]) for k in keys}} for r in res.per_layer]
    return rows, "simulator"


def engine_id() -> str:
    """Engine name and code version, as it enters the cache key: ``simulator@1a2b3c...``."""
    return f"{timing_engine()}@{code_version()}"


def run_scenario(scenario: Scenario, base: ClusterSpec) -> dict[str, Any]:
    """Solve and time one scenario. Returns a flat record: ``key`` (the cache key under the code that
    actually ran, which a Ray worker may see differently from the driver), ``code_version``, the
    scenario's fields, ``status`` (``ok`` or ``infeasible`` with ``error``), the metrics, and ``layers``
    (per-layer rows). Infeasible scenarios (say, experts + redundant not a multiple of the GPU count)
    are recorded, not raised, so one bad corner of a sweep does not lose the rest."""
    from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver

    engine_now = engine_id()
    record: dict[str, Any] = {
        "key": scenario.key(base, engine_now),
        "code_version": engine_now,
        **scenario.to_dict(),
    }
    started = time.perf_counter()
    try:
        cluster = scenario.cluster(base)
        workload = workload_for(scenario.trace, scenario.trace_fingerprint, cluster.num_gpus)
        problem = PlacementProblem(
            workloads=(workload,),
            cluster=cluster,
            num_redundant=scenario.redundant,
            mode=scenario.mode,
        )
        config = SolverConfig(time_limit_s=scenario.time_limit_s, seed=scenario.seed)
        plan = run_solver(scenario.solver, problem, config)
        ev = evaluate(
            plan, cluster, workload, mode=scenario.mode, tokens_per_gpu=scenario.tokens_per_gpu
        )
        layers, engine = simulate_layers(
            plan,
            cluster,
            workload,
            ev,
            mode=scenario.mode,
            algo=scenario.algo,
            overlap=scenario.overlap,
            tokens_per_gpu=scenario.tokens_per_gpu,
        )
    except PlacementError as exc:
        record.update(status="infeasible", error=str(exc), layers=[])
        record["wall_s"] = time.perf_counter() - started
        return record
    record.update(status="ok", error="", engine=engine)
    record.update(metrics(plan, cluster, workload, ev, layers, scenario, base))
    record["plan_fingerprint"] = plan.fingerprint()
    record["layers"] = layers
    record["wall_s"] = time.perf_counter() - started
    return record


def metrics(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    ev: Evaluation,
    layers: list[dict[str, float]],
    scenario: Scenario,
    base: ClusterSpec,
) -> dict[str, Any]:
    """The flat metric columns of a result row (see docs/reports.md for their definitions)."""
    summary = ev.summary()
    step_us = float(sum(r["layer_us"] for r in layers))
    num_layers = max(len(layers), 1)
    tokens_per_step = scenario.tokens_per_gpu * cluster.num_gpus
    prov = plan.provenance
    load_max = ev.gpu_load.max(axis=1)
    load_mean = ev.gpu_load.mean(axis=1)
    return {
        "num_nodes": cluster.num_nodes,
        "num_layers": plan.num_layers,
        "num_experts": plan.num_experts,
        "top_k": workload.shape.top_k,
        "slots_per_gpu": plan.slots_per_gpu,
        "solve_s": float(prov.seconds),
        "solver_method": prov.method,
        "solver_gap": float("nan") if prov.gap is None else float(prov.gap),
        "max_load": float(load_max.mean()),
        "mean_load": float(load_mean.mean()),
        "mean_max_over_mean": summary["mean_max_over_mean"],
        "worst_max_over_mean": summary["worst_max_over_mean"],
        "intra_node_bytes": summary["intra_node_bytes"],
        "inter_node_bytes": summary["inter_node_bytes"],
        # The evaluator's bytes are for the trace as given; a step moves ``scale`` times as many.
        "inter_node_bytes_per_step": summary["inter_node_bytes"] * ev.scale,
        "compute_us": float(np.mean([r["compute_us"] for r in layers])),
        "dispatch_us": float(np.mean([r["dispatch_us"] for r in layers])),
        "combine_us": float(np.mean([r["combine_us"] for r in layers])),
        "exposed_comm_us": float(np.mean([r["exposed_comm_us"] for r in layers])),
        "layer_us": step_us / num_layers,
        "worst_layer_us": float(max(r["layer_us"] for r in layers)),
        "step_us": step_us,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / (step_us * 1e-6) if step_us > 0 else math.inf,
        "fabric": cluster.fabric,
        "planes": cluster.planes,
        "nics_per_gpu": cluster.nics_per_gpu,
        # A one-node cluster needs no scale-out network: no endpoints to pay for.
        "network_endpoints": cluster.num_gpus * cluster.nics_per_gpu
        if cluster.num_nodes > 1
        else 0,
        "gpu_hour_usd": gpu_hour_usd_for(scenario.gpu, base),
        "endpoint_usd": endpoint_usd_for(scenario.topology, base),
    }
