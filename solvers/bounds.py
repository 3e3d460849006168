"""Placement-free lower bounds on the evaluator's MoE time, per layer, that say something.

The evaluator (:mod:`moe_placement.metrics`) times a standard-EP layer as the busiest GPU's roofline
compute plus a dispatch and a combine phase, each the busiest GPU's NVLink or NIC direction at its
bandwidth plus one latency. Every term below holds for *any* plan with ``spg`` slots per GPU and
``num_redundant`` replicas, so their sum bounds every plan's time:

* **compute**: the busiest GPU computes at least the replica-aware min-max load
  (:func:`moe_placement.solvers.common.load_bound`: the mean; with replicas the hottest expert split over
  as many GPUs as the budget allows; without, the packing bounds) and reads the weights of at least
  ``ceil(active experts / G)`` experts;
* **communication** (per-token traces, standard mode): a GPU holds at most ``spg`` distinct experts, so
  of the assignments of tokens homed on GPU ``g`` at most the ``spg`` largest entries of its demand stay
  home; every other assignment travels in a (token, GPU) copy carrying at most ``min(k, spg)`` of them.
  Likewise a node holds at most ``gpn * spg`` experts, which bounds the (token, node) pairs that cross
  the NICs. DeepEP's deduplication turns each remote (token, GPU) pair into an NVLink copy or the NIC
  copy of its (token, node), so NVLink + NIC copies >= the GPU-level count and NIC copies >= the
  node-level count; the busiest direction carries at least the mean over the ``G`` GPUs. The fastest
  split of those copies over the two links gives the phase's floor; the latency is the NIC's when
  some copy must cross nodes.

Load-only inputs are timed by an expected-copies estimate and coherent mode routes tokens onward, so
there only the compute term is claimed (communication >= 0).
"""

from __future__ import annotations

import numpy as np

from moe_placement import timing
from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU
from moe_placement.solvers.common import load_bound
from moe_placement.workload import Workload


def _top_sum(values: np.ndarray, count: int) -> float:
    """The sum of the ``count`` largest entries."""
    if count >= values.size:
        return float(values.sum())
    return float(np.partition(values, values.size - count)[values.size - count :].sum())


def remote_copies_bound(
    demand: np.ndarray, top_k: int, slots_per_gpu: int, gpus_per_node: int
) -> tuple[float, float]:
    """``(GPU-level, node-level)`` lower bounds on one layer's remote dispatch copies from
    ``demand[gpus, experts]`` (assignments by home GPU): (token, other GPU) pairs and (token, other
    node) pairs any placement must send."""
    G, _ = demand.shape
    per_gpu = min(top_k, slots_per_gpu)
    gpu_level = sum(
        max(float(demand[g].sum()) - _top_sum(demand[g], slots_per_gpu), 0.0) / per_gpu
        for g in range(G)
    )
    nodes = G // gpus_per_node
    node_level = 0.0
    if nodes > 1:
        per_node_slots = gpus_per_node * slots_per_gpu
        node_demand = demand.reshape(nodes, gpus_per_node, -1).sum(axis=1)
        per_node = min(top_k, per_node_slots)
        node_level = sum(
            max(float(node_demand[n].sum()) - _top_sum(node_demand[n], per_node_slots), 0.0)
            / per_node
            for n in range(nodes)
        )
    return gpu_level, node_level


def phase_bound_us(
    gpu_copies: float, nic_copies: float, bytes_per_copy: float, cluster: ClusterSpec
) -> float:
    """The fastest a phase with at least ``gpu_copies`` remote copies, ``nic_copies`` of them over the
    NICs, can run (us): the mean per GPU on the best split over NVLink and NIC, plus one latency."""
    G = cluster.num_gpus
    nvl = cluster.nvlink_effective_gbytes_per_s * 1e9
    nic = cluster.nic_effective_gbytes_per_s * 1e9
    seconds = max(
        nic_copies * bytes_per_copy / (G * nic) if nic_copies > 0 else 0.0,
        gpu_copies * bytes_per_copy / (G * (nvl + nic)) if gpu_copies > 0 else 0.0,
    )
    if nic_copies > 0:
        latency = cluster.nic_latency_us
    elif gpu_copies > 0:
        latency = min(cluster.nvlink_latency_us, cluster.nic_latency_us)
    else:
        latency = 0.0
    return seconds * 1e6 + latency


def layer_bounds_us(
    workload: Workload,
    cluster: ClusterSpec,
    num_redundant: int,
    mode: str = "standard",
    tokens_per_gpu: int = DEFAULT_TOKENS_PER_GPU,
) -> tuple[np.ndarray, np.ndarray]:
    """``(compute, communication)`` lower bounds per layer (us per layer, per step of
    ``tokens_per_gpu`` tokens per GPU) on the evaluator's time of any plan."""
    G, gpn = cluster.num_gpus, cluster.gpus_per_node
    E = workload.num_experts
    spg = (E + num_redundant) // G
    shape = workload.shape
    scale = tokens_per_gpu * G / max(int(workload.num_tokens), 1)
    load = np.asarray(workload.load, dtype=np.float64)
    peak = np.array(
        [load_bound(load[layer], G, spg, num_redundant) for layer in range(load.shape[0])]
    )
    min_active = np.ceil((load > 0).sum(axis=1) / G)
    compute = np.maximum(
        timing.compute_us(peak * scale, np.zeros_like(min_active), shape, cluster),
        timing.compute_us(np.zeros_like(min_active), min_active, shape, cluster),
    )
    comm = np.zeros(workload.num_layers)
    if mode == "standard" and workload.per_token and workload.home_num_gpus == G:
        demand = workload.demand(G)
        d_bytes = shape.hidden_size * shape.dispatch_bytes_per_elem * scale
        c_bytes = shape.hidden_size * shape.combine_bytes_per_elem * scale
        for layer in range(workload.num_layers):
            gpu_copies, nic_copies = remote_copies_bound(demand[layer], shape.top_k, spg, gpn)
            comm[layer] = phase_bound_us(gpu_copies, nic_copies, d_bytes, cluster) + phase_bound_us(
                gpu_copies, nic_copies, c_bytes, cluster
            )
    return compute, comm


def bound_statement(workload: Workload, cluster: ClusterSpec, mode: str = "standard") -> str:
    """What :func:`layer_bounds_us` counts for this input, and why it is loose: the plan's
    ``provenance.extra["bound_covers"]``, so that a large gap reads as a weak bound, not a bad plan."""
    compute = (
        "compute: the busiest GPU's roofline time for the replica-aware min-max load (the mean, or the "
        "hottest expert over the most replicas the budget allows) and the fewest weight reads"
    )
    if mode == "coherent":
        return (
            f"{compute}; communication counted as 0 (coherent mode moves tokens on from the GPU of their "
            "previous top-1 expert, and no placement-free floor on those hops is built). Loose by the "
            "whole all-to-all time, usually most of a layer's time"
        )
    if not workload.per_token:
        return (
            f"{compute}; communication counted as 0 (a load-only input is timed by an expected-copies "
            "estimate with no proven floor). Loose by the whole all-to-all time"
        )
    if workload.home_num_gpus != cluster.num_gpus:
        return (
            f"{compute}; communication counted as 0 (the trace's home GPUs are not this cluster's). "
            "Loose by the whole all-to-all time"
        )
    return (
        f"{compute}; plus dispatch and combine floors: a GPU (node) keeps at most its slots' (its "
        "GPUs' slots') largest home demands local, every other assignment travels, spread evenly over "
        "all GPUs on the best NVLink/NIC split, plus one latency per phase. Loose because it lets every "
        "GPU keep its largest demands home for every token at once (a top-k token stays home only if all "
        "k of its experts do) and spreads the copies perfectly evenly, where the evaluator times the "
        "busiest link"
    )
