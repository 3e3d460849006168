"""The prediction side of validation: the per-layer times of a replay as the one timing type,
:class:`moe_placement.timing.StepTime`, from the simulator or, for CPU ranks sharing a host, the host model.

The executor sits above the simulator in the import order (core <- simulator <- executor), so it imports
it directly; nothing below imports the executor.
"""

from __future__ import annotations

from moe_placement.cluster import ClusterSpec
from moe_placement.executor.hostmodel import HostModel
from moe_placement.metrics import Evaluation, evaluate
from moe_placement.plan import Plan
from moe_placement.simulator import simulate_moe
from moe_placement.timing import LayerTime, StepTime
from moe_placement.workload import Workload

HOST_SOURCE = "host model (CPU ranks sharing cores)"


def predict_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    overlap: str = "none",
    chunks: int = 4,
    tokens_per_gpu: float | None = None,
    host: HostModel | None = None,
) -> StepTime:
    """Per-layer times of exactly the replayed tokens (``tokens_per_gpu`` None: the workload's own tokens,
    no rescaling); ``source`` names the model that said so.

    The simulator runs its ``deepep`` algorithm: the replay forwards across nodes exactly as DeepEP does
    (on one node it is the same as ``direct``). ``overlap="chunked"`` predicts the pipelined run.

    With a calibrated ``host`` model (CPU ranks sharing cores) the times come from it instead: the
    simulator's GPUs each own their device, which overpredicts imbalanced plans on a shared host."""
    if host is not None:
        return predict_host_layers(plan, cluster, workload, host, overlap=overlap, chunks=chunks)
    tpg: float = (
        tokens_per_gpu if tokens_per_gpu is not None else workload.num_tokens / plan.num_gpus
    )
    if float(tpg).is_integer():
        tpg = int(tpg)
    res = simulate_moe(
        plan,
        cluster,
        workload,
        mode="standard",
        algo="deepep",
        overlap=overlap,
        tokens_per_gpu=tpg,  # type: ignore[arg-type]
        chunks=chunks,
        progress=False,
    )
    return res.step_time()


def predict_host_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    host: HostModel,
    *,
    overlap: str = "none",
    chunks: int = 4,
) -> StepTime:
    """Per-layer times of exactly the replayed tokens from the host model: per-rank active experts and
    FLOPs (the evaluator's loads), per-rank bytes sent + received (the evaluator's deduplicated copies).

    ``overlap="chunked"``: each of ``chunks`` pieces pays the fixed costs again and nothing is hidden
    (:meth:`HostModel.layer_time`): an upper bound the measured pipelined time approaches when the cores
    are busy."""
    ev = evaluate(plan, cluster, workload, mode="standard", tokens_per_gpu=None)
    pieces = chunks if overlap == "chunked" else 1
    return StepTime.of(
        (_host_layer(plan, workload, ev, host, layer, pieces) for layer in range(plan.num_layers)),
        HOST_SOURCE,
    )


def _host_layer(
    plan: Plan, workload: Workload, ev: Evaluation, host: HostModel, layer: int, pieces: int
) -> LayerTime:
    """One layer's host-model time from the evaluator's per-rank loads and copies."""
    G, spg = plan.num_gpus, plan.slots_per_gpu
    stages = 2 if plan.num_gpus > plan.gpus_per_node else 1
    slot_load = workload.load[layer][plan.phy2log[layer]]
    active = (slot_load > 0).reshape(G, spg).sum(axis=1).astype(float)
    flops = ev.gpu_load[layer] * workload.shape.flops_per_token_per_expert
    d, c = ev.dispatch[layer], ev.combine[layer]
    d_pairs, c_pairs = d.nvlink + d.nic, c.nvlink + c.nic
    d_bytes = (d_pairs.sum(axis=0) + d_pairs.sum(axis=1)) * ev.dispatch_bytes_per_copy
    c_bytes = (c_pairs.sum(axis=0) + c_pairs.sum(axis=1)) * ev.combine_bytes_per_copy
    return host.layer_time(active, flops, d_bytes, c_bytes, stages=stages, pieces=pieces)
