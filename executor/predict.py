"""The prediction side of validation: the simulator's per-layer times for a run (the evaluator's
analytic times while the simulator package is not importable).

The executor sits above the simulator in the import order (core <- simulator <- executor), so it may
import it; nothing below imports the executor.
"""

from __future__ import annotations

import contextlib
from typing import Any

from moe_placement.cluster import ClusterSpec
from moe_placement.executor.hostmodel import HostModel
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan
from moe_placement.workload import Workload

TIME_KEYS = ("dispatch_us", "compute_us", "combine_us", "layer_us")


def _times(row: Any) -> dict[str, float]:
    """A per-layer row's predicted phase and layer times."""
    return {k: float(row[k]) for k in TIME_KEYS}


def simulator_available() -> bool:
    try:
        from moe_placement.simulator import simulate_moe  # noqa: F401
    except ImportError:
        return False
    return True


def predict_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    overlap: str = "none",
    chunks: int = 4,
    tokens_per_gpu: float | None = None,
    host: HostModel | None = None,
) -> tuple[list[dict[str, float]], str]:
    """Per-layer ``dispatch_us``, ``compute_us``, ``combine_us``, ``layer_us`` for exactly the replayed
    tokens (``tokens_per_gpu`` None: the workload's own tokens, no rescaling) and which model said so.

    The simulator runs its ``deepep`` algorithm: the replay forwards across nodes exactly as DeepEP does
    (on one node it is the same as ``direct``). ``overlap="chunked"`` predicts the pipelined run; the
    evaluator fallback has no overlap model and returns None there.

    With a calibrated ``host`` model (CPU ranks sharing cores) the times come from it instead: the
    simulator's GPUs each own their device, which overpredicts imbalanced plans on a shared host."""
    if host is not None:
        return predict_host_layers(plan, cluster, workload, host, overlap=overlap, chunks=chunks)
    tpg: float = (
        tokens_per_gpu if tokens_per_gpu is not None else workload.num_tokens / plan.num_gpus
    )
    if float(tpg).is_integer():
        tpg = int(tpg)
    simulate_moe: Any = None
    with contextlib.suppress(ImportError):
        from moe_placement.simulator import simulate_moe
    if simulate_moe is not None:
        res: Any = simulate_moe(
            plan,
            cluster,
            workload,
            mode="standard",
            algo="deepep",
            overlap=overlap,
            tokens_per_gpu=tpg,
            chunks=chunks,
            progress=False,
        )  # type: ignore[arg-type]
        return [_times(row) for row in res.per_layer], "simulator"
    if overlap != "none":
        return [], "evaluator (no overlap model)"
    ev = evaluate(
        plan,
        cluster,
        workload,
        mode="standard",
        tokens_per_gpu=None if tokens_per_gpu is None else int(tokens_per_gpu),
    )
    return [_times(row) for row in ev.per_layer()], "evaluator (simulator not importable)"


def predict_host_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    host: HostModel,
    *,
    overlap: str = "none",
    chunks: int = 4,
) -> tuple[list[dict[str, float]], str]:
    """Per-layer times of exactly the replayed tokens from the host model: per-rank active experts and
    FLOPs (the evaluator's loads), per-rank bytes sent + received (the evaluator's deduplicated copies).

    ``overlap="chunked"``: every chunk pays the fixed costs and the per-expert cost again, and nothing is
    hidden (on a saturated host the asynchronous copies take the same cores as the GEMMs): an upper
    bound the measured pipelined time approaches when the cores are busy."""
    ev = evaluate(plan, cluster, workload, mode="standard", tokens_per_gpu=None)
    G, spg = plan.num_gpus, plan.slots_per_gpu
    stages = 2 if plan.num_gpus > plan.gpus_per_node else 1
    flops_per_row = workload.shape.flops_per_token_per_expert
    rows: list[dict[str, float]] = []
    for layer in range(plan.num_layers):
        slot_load = workload.load[layer][plan.phy2log[layer]]
        active = (slot_load > 0).reshape(G, spg).sum(axis=1).astype(float)
        flops = ev.gpu_load[layer] * flops_per_row
        d, c = ev.dispatch[layer], ev.combine[layer]
        d_pairs, c_pairs = d.nvlink + d.nic, c.nvlink + c.nic
        d_bytes = (d_pairs.sum(axis=0) + d_pairs.sum(axis=1)) * ev.dispatch_bytes_per_copy
        c_bytes = (c_pairs.sum(axis=0) + c_pairs.sum(axis=1)) * ev.combine_bytes_per_copy
        n = chunks if overlap == "chunked" else 1
        # Chunks split rows and bytes evenly; the makespan is homogeneous in the work, so n chunks of
        # 1/n of the bytes cost the whole transfer once plus n latencies.
        dispatch = host.comm_us(d_bytes, stages) + (n - 1) * stages * host.comm_latency_us
        combine = host.comm_us(c_bytes, stages) + (n - 1) * stages * host.comm_latency_us
        compute = n * host.compute_us(active, flops / n)
        rows.append(
            {
                "dispatch_us": float(dispatch),
                "compute_us": float(compute),
                "combine_us": float(combine),
                "layer_us": float(dispatch + compute + combine),
            }
        )
    return rows, "host model (CPU ranks sharing cores)"
