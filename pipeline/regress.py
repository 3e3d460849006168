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

A baseline is keyed by the trace's routing fingerprint (:func:`routing_fingerprint`), a hash of what the
tokens chose, not of the file's name or bytes: a renamed or re-encoded trace is checked against its
baseline, and a baseline recorded on another trace is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import evaluate
from moe_placement.pipeline.engine import quality, simulate_step, solve_plan, workload_for
from moe_placement.plan import Plan

ROUTING_FINGERPRINT_VERSION = "routing-v1"


def routing_fingerprint(trace: str | Path) -> str:
    """Hash of a per-token trace's routing content (16 hex digits): the shape (MoE layers, experts,
    top-k), every token's identity (step, sequence, position: they decide its home GPU) and its chosen
    experts per layer, token by token. Independent of the path, of the file's encoding (compression, row
    groups, writer version) and of the model name or gate weights, none of which change a plan or any
    regress metric. One streaming pass over the file."""
    import numpy as np

    from moe_placement.traces.reader import TraceFile

    trace_file = TraceFile(trace)
    meta = trace_file.meta
    tokens, experts = hashlib.sha256(), hashlib.sha256()
    for chunk in trace_file.iter_chunks():
        identity = np.stack([chunk.step, chunk.seq_id, chunk.pos], axis=1).astype("<i8")
        tokens.update(identity.tobytes())
        # token-major ([tokens, layers, k]), so that how the file groups its rows does not matter
        experts.update(
            np.ascontiguousarray(chunk.expert_ids.transpose(1, 0, 2)).astype("<i8").tobytes()
        )
    digest = hashlib.sha256(ROUTING_FINGERPRINT_VERSION.encode())
    digest.update(f"{meta.num_moe_layers},{meta.num_experts},{meta.top_k}".encode())
    digest.update(tokens.digest())
    digest.update(experts.digest())
    return digest.hexdigest()[:16]


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
    """One trace's figures (baseline metric -> value), its routing fingerprint
    (:func:`routing_fingerprint`) and the timing engine."""

    metrics: dict[str, float]
    fingerprint: str
    engine: str


def measure(
    trace: str,
    cluster: ClusterSpec,
    config: dict[str, Any],
    plan_path: str | None = None,
    fingerprint: str | None = None,
) -> TraceMeasurement:
    """Solve (or load ``plan_path``) and measure one trace under ``config`` (the regress options:
    ``solver``, ``redundant``, ``mode``, ``tokens_per_gpu``, ``overlap``, ``algo``, ``seed``,
    ``time_limit_s``, ``deterministic``, ``serving_engine``: whose replica dispatch, default the
    share-aware router); ``fingerprint``: its routing fingerprint when the caller has it already."""
    from moe_placement.traces.reader import TraceFile

    file_fingerprint = TraceFile(trace).fingerprint()  # the workload cache's key
    workload = workload_for(str(Path(trace).resolve()), file_fingerprint, cluster.num_gpus)
    mode, tokens_per_gpu = str(config["mode"]), int(config["tokens_per_gpu"])
    dispatch = str(config.get("serving_engine", "share"))
    if plan_path is not None:
        plan = Plan.load(plan_path)
        if dispatch != "share":  # measured under that engine's dispatch, whatever it was solved for
            plan = replace(plan, provenance=replace(plan.provenance, engine=dispatch))
    else:
        plan = solve_plan(
            workload,
            cluster,
            solver=str(config["solver"]),
            redundant=int(config["redundant"]),
            mode=mode,
            time_limit_s=float(config["time_limit_s"]),
            seed=int(config["seed"]),
            deterministic=bool(config.get("deterministic", True)),
            dispatch=dispatch,
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
    return TraceMeasurement(metrics, fingerprint or routing_fingerprint(trace), step.source)
