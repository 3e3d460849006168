"""Run one what-if scenario: derive the workload, solve the placement, time it, and flatten the result.

Timing comes from the SimPy network simulator (:func:`moe_placement.simulator.simulate_moe`) as the one
timing type, :class:`moe_placement.timing.StepTime`; the engine's name and a hash of the code that turns a
scenario into numbers are recorded in every result and are part of the cache key, so results of other code
are never mixed in silently.

Load and byte metrics always come from :func:`moe_placement.metrics.evaluate` (the one metrics module), so a
number in a report means the same as in ``placement evaluate``. Per-layer times become dicts only in the
stored record (:func:`layer_rows`), the border to the results tables and the cache.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

from moe_placement.cluster import PRESETS, ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.metrics import Evaluation, evaluate
from moe_placement.pipeline.scenario import Scenario, sampled_layers
from moe_placement.plan import Plan
from moe_placement.timing import StepTime
from moe_placement.workload import Workload

# What times every scenario (the source of its StepTime); recorded in results and regress baselines.
TIMING_ENGINE = "simulator"

# Scale-out network capital cost per endpoint by topology (Insights into DeepSeek-V3, arXiv 2505.09343:
# FT2 4.39 k$, MPFT 4.39 k$, FT3 7.5 k$). A single switch and multi-rail are two-tier fat-trees at most.
ENDPOINT_USD_BY_TOPOLOGY = {
    "single-switch": 4390.0,
    "multi-rail": 4390.0,
    "multi-plane": 4390.0,
    "three-tier": 7500.0,
}

_WORKLOADS: dict[tuple[str, str, int, str], Workload] = {}


def code_version() -> str:
    """Hash of the source that turns a scenario into numbers (solvers, evaluator, simulator, this
    module), so cached results are recomputed when any of it changes. Read from disk on every call
    (a few milliseconds): a long-lived process must not keep an outdated version."""
    import moe_placement as placement
    from moe_placement import simulator, solvers, traces

    roots = [Path(solvers.__file__).parent, Path(simulator.__file__).parent, Path(__file__)]
    placement_dir = Path(placement.__file__).parent
    roots += [
        placement_dir / f
        for f in ("metrics.py", "timing.py", "cluster.py", "workload.py", "plan.py", "shapes.py")
    ]
    roots.append(Path(traces.__file__).parent / "derive.py")
    digest = hashlib.sha256()
    for root in roots:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(path.parents[1])).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def workload_for(trace: str, fingerprint: str, num_gpus: int, model: str = "") -> Workload:
    """The input's workload with per-home demand for ``num_gpus`` (memoised per process): a per-token
    Parquet trace, a load-only Parquet file or a ``logical_count`` JSON, with ``model``'s shape when
    named (a load-only input's shape is otherwise guessed from its size)."""
    key = (trace, fingerprint, num_gpus, model)
    if key not in _WORKLOADS:
        from moe_placement.shapes import model_shape
        from moe_placement.traces.derive import derive_workload
        from moe_placement.traces.loadjson import (
            is_load_parquet,
            is_logical_count_file,
            load_load_parquet,
            load_logical_count,
        )
        from moe_placement.traces.reader import TraceFile

        shape = model_shape(model) if model else None
        if len(_WORKLOADS) > 16:  # bound memory in long-lived Ray workers
            _WORKLOADS.clear()
        if is_logical_count_file(trace) or is_load_parquet(trace):
            loader = load_logical_count if is_logical_count_file(trace) else load_load_parquet
            workload = loader(trace, shape)
            if workload.fingerprint != fingerprint:
                raise PlacementError(f"trace {trace} changed while the sweep ran")
            _WORKLOADS[key] = workload
        else:
            trace_file = TraceFile(trace)
            if trace_file.fingerprint() != fingerprint:
                raise PlacementError(f"trace {trace} changed while the sweep ran")
            _WORKLOADS[key] = derive_workload(trace_file, num_gpus=num_gpus, shape=shape)
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


def solve_plan(
    workload: Workload,
    cluster: ClusterSpec,
    *,
    solver: str,
    redundant: int,
    mode: str,
    time_limit_s: float,
    seed: int,
    deterministic: bool = False,
    dispatch: str = "share",
) -> Plan:
    """The registered ``solver``'s plan for one workload on ``cluster`` (``deterministic``: CP-SAT on
    a deterministic time limit, the same plan on any machine load), solved for the replica dispatch of
    ``dispatch`` (a serving engine, or the share-aware router: :mod:`moe_placement.dispatch`); the plan
    records it, so its evaluation and simulation follow that dispatch."""
    from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver

    problem = PlacementProblem(
        workloads=(workload,),
        cluster=cluster,
        num_redundant=redundant,
        mode=mode,
        engine=dispatch,
    )
    config = SolverConfig(
        time_limit_s=time_limit_s, seed=seed, extra={"deterministic": deterministic}
    )
    return run_solver(solver, problem, config)


def simulate_step(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    mode: str,
    algo: str,
    overlap: str,
    tokens_per_gpu: int,
    layers: list[int] | None = None,
    attention_us: float = 0.0,
    shared_expert_us: float = 0.0,
) -> StepTime:
    """The simulator's per-layer times of one step of ``tokens_per_gpu`` tokens on every GPU, for
    ``layers`` (default all), with each layer's attention and shared expert when given."""
    from moe_placement.simulator import simulate_moe, warmup

    warmup.install()  # a cold kernel cache compiles in parallel workers (once, with a message)

    res = simulate_moe(
        plan,
        cluster,
        workload,
        mode=mode,
        algo=algo,
        overlap=overlap,
        tokens_per_gpu=tokens_per_gpu,
        layers=layers,
        attention_us=attention_us,
        shared_expert_us=shared_expert_us,
        progress=False,  # the sweep shows one bar over scenarios, not one per simulation
    )
    return res.step_time()


def layer_rows(step: StepTime, indices: list[int] | None = None) -> list[dict[str, float]]:
    """The stored form of a step's times: ``[{layer, dispatch_us, compute_us, combine_us,
    exposed_comm_us, layer_us}]`` (the ``layers`` table and the cache's JSON); ``indices``: the MoE
    layer index of each timed layer (default 0, 1, ...)."""
    ids = indices if indices is not None else list(range(len(step.layers)))
    return [{"layer": layer, **t.as_dict()} for layer, t in zip(ids, step.layers, strict=True)]


def engine_id() -> str:
    """Engine name and code version, as it enters the cache key: ``simulator@1a2b3c...``."""
    return f"{TIMING_ENGINE}@{code_version()}"


def run_scenario(scenario: Scenario, base: ClusterSpec) -> dict[str, Any]:
    """Solve and time one scenario. Returns a flat record: ``key`` (the cache key under the code that
    actually ran, which a Ray worker may see differently from the driver), ``code_version``, the
    scenario's fields, ``status`` (``ok`` or ``infeasible`` with ``error``), the metrics, and ``layers``
    (per-layer rows). Infeasible scenarios (say, experts + redundant not a multiple of the GPU count)
    are recorded, not raised, so one bad corner of a sweep does not lose the rest."""
    engine_now = engine_id()
    record: dict[str, Any] = {
        "key": scenario.key(base, engine_now),
        "code_version": engine_now,
        **scenario.to_dict(),
    }
    started = time.perf_counter()
    try:
        cluster = scenario.cluster(base)
        workload = workload_for(
            scenario.trace, scenario.trace_fingerprint, cluster.num_gpus, scenario.model
        )
        plan = solve_plan(
            workload,
            cluster,
            solver=scenario.solver,
            redundant=scenario.redundant,
            mode=scenario.mode,
            time_limit_s=scenario.time_limit_s,
            seed=scenario.seed,
            dispatch=scenario.dispatch,
            # a sweep's results must not depend on where it ran (serial, a Ray worker on a busy host):
            # CP-SAT on its deterministic time, so one seed gives one plan
            deterministic=True,
        )
        ev = evaluate(
            plan, cluster, workload, mode=scenario.mode, tokens_per_gpu=scenario.tokens_per_gpu
        )
        timed = sampled_layers(workload.num_layers, scenario.sample_layers)
        step = simulate_step(
            plan,
            cluster,
            workload,
            mode=scenario.mode,
            algo=scenario.algo,
            overlap=scenario.overlap,
            tokens_per_gpu=scenario.tokens_per_gpu,
            layers=timed,
            attention_us=scenario.attention_us,
            shared_expert_us=scenario.shared_expert_us,
        )
    except PlacementError as exc:
        record.update(status="infeasible", error=str(exc), layers=[])
        record["wall_s"] = time.perf_counter() - started
        return record
    record.update(status="ok", error="", engine=step.source)
    record.update(metrics(plan, cluster, workload, ev, step, scenario, base))
    record["plan_fingerprint"] = plan.fingerprint()
    record["layers"] = layer_rows(step, timed)
    record["wall_s"] = time.perf_counter() - started
    return record


def quality(plan: Plan, ev: Evaluation, step: StepTime) -> dict[str, float]:
    """Load, byte and time figures of one timed plan, the ones what-if rows and regress checks share
    (one definition each): loads and bytes from the evaluator, times from ``step``, means over layers."""
    summary = ev.summary()
    num_layers = max(len(step.layers), 1)
    return {
        "max_load": float(ev.max_load().mean()),
        "mean_load": float(ev.mean_load().mean()),
        "mean_max_over_mean": summary["mean_max_over_mean"],
        "worst_max_over_mean": summary["worst_max_over_mean"],
        "intra_node_bytes": summary["intra_node_bytes"],
        "inter_node_bytes": summary["inter_node_bytes"],
        # The evaluator's bytes are for the trace as given; a step moves ``scale`` times as many.
        "inter_node_bytes_per_step": summary["inter_node_bytes"] * ev.scale,
        "compute_us": float(step.column("compute_us").mean()),
        "dispatch_us": float(step.column("dispatch_us").mean()),
        "combine_us": float(step.column("combine_us").mean()),
        "exposed_comm_us": float(step.column("exposed_comm_us").mean()),
        "layer_us": step.moe_time_us / num_layers,
        "worst_layer_us": float(step.column("layer_us").max()),
        "step_us": step.moe_time_us,
        "solve_s": float(plan.provenance.seconds),
    }


def metrics(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    ev: Evaluation,
    step: StepTime,
    scenario: Scenario,
    base: ClusterSpec,
) -> dict[str, Any]:
    """The flat metric columns of a result row (see docs/reports.md for their definitions)."""
    figures = quality(plan, ev, step)
    # The whole model's step: the mean timed MoE layer for each of the model's MoE layers, plus its
    # dense layers (see moe_placement.wholemodel); ``step_us`` and tokens/s are per model.
    moe_layers = scenario.moe_layers or plan.num_layers
    moe_step_us = figures["layer_us"] * moe_layers
    step_us = moe_step_us + scenario.dense_layers * scenario.dense_layer_us
    figures["step_us"] = step_us
    tokens_per_step = scenario.tokens_per_gpu * cluster.num_gpus
    prov = plan.provenance
    return {
        "num_nodes": cluster.num_nodes,
        "num_layers": plan.num_layers,
        "num_experts": plan.num_experts,
        "top_k": workload.shape.top_k,
        "slots_per_gpu": plan.slots_per_gpu,
        "solve_s": figures["solve_s"],
        "solver_method": prov.method,
        "solver_gap": float("nan") if prov.gap is None else float(prov.gap),
        **{k: v for k, v in figures.items() if k != "solve_s"},
        "moe_layers": moe_layers,
        "timed_layers": len(step.layers),
        "moe_step_us": moe_step_us,
        # The evaluator's inter-node bytes of one MoE layer in one step (all input layers' mean).
        "inter_node_bytes_per_layer_step": figures["inter_node_bytes_per_step"]
        / max(plan.num_layers, 1),
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
