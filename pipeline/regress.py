"""The measuring half of ``placement regress``: solve (or load) a plan for a trace, evaluate and simulate it,
and return the figures a baseline stores. Comparing them with the baseline is
:mod:`moe_placement.reports.regress`'s work, on these stored numbers only.

The figures are those of a what-if row (:func:`moe_placement.pipeline.engine.quality`), so ``max_load``
or ``layer_us`` in a baseline means the same as in a what-if report:

* ``max_load``: the busiest GPU's (token, expert) assignments, mean over layers;
* ``max_over_mean``: max/mean GPU load, mean over layers;
* ``inter_node_bytes``: deduplicated inter-node bytes, dispatch + combine, for the trace as given;
* ``layer_us``: the simulated MoE layer time (us), mean over layers;
* ``solve_s``: the solver's wall time (s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import evaluate
from moe_placement.pipeline.engine import quality, simulate_step, solve_plan, workload_for
from moe_placement.plan import Plan

# Baseline metric name -> the what-if figure it stores.
FIGURES = {
    "max_load": "max_load",
    "max_over_mean": "mean_max_over_mean",
    "inter_node_bytes": "inter_node_bytes",
    "layer_us": "layer_us",
    "solve_s": "solve_s",
}


@dataclass(frozen=True)
class TraceMeasurement:
    """One trace's figures (baseline metric -> value), its content fingerprint and the timing engine."""

    metrics: dict[str, float]
    fingerprint: str
    engine: str


def measure(
    trace: str,
    cluster: ClusterSpec,
    config: dict[str, Any],
    plan_path: str | None = None,
) -> TraceMeasurement:
    """Solve (or load ``plan_path``) and measure one trace under ``config`` (the regress options:
    ``solver``, ``redundant``, ``mode``, ``tokens_per_gpu``, ``overlap``, ``algo``, ``seed``,
    ``time_limit_s``)."""
    from moe_placement.traces.reader import TraceFile

    fingerprint = TraceFile(trace).fingerprint()
    workload = workload_for(str(Path(trace).resolve()), fingerprint, cluster.num_gpus)
    mode, tokens_per_gpu = str(config["mode"]), int(config["tokens_per_gpu"])
    if plan_path is not None:
        plan = Plan.load(plan_path)
    else:
        plan = solve_plan(
            workload,
            cluster,
            solver=str(config["solver"]),
            redundant=int(config["redundant"]),
            mode=mode,
            time_limit_s=float(config["time_limit_s"]),
            seed=int(config["seed"]),
            deterministic=bool(config.get("deterministic", False)),
        )
    ev = evaluate(plan, cluster, workload, mode=mode, tokens_per_gpu=tokens_per_gpu)
    step = simulate_step(
        plan,
        cluster,
        workload,
        mode=mode,
        algo=str(config["algo"]),
        overlap=str(config["overlap"]),
        tokens_per_gpu=tokens_per_gpu,
    )
    figures = quality(plan, ev, step)
    metrics = {name: figures[key] for name, key in FIGURES.items()}
    return TraceMeasurement(metrics, fingerprint, step.source)
