"""The one answer to "how long does an MoE layer take": the formulas and the result type.

Every component that times a layer returns :class:`LayerTime` (one per MoE layer) inside a
:class:`StepTime`: the evaluator (:mod:`moe_placement.metrics`), the simulator, the executor's
prediction and the what-if pipeline. The solvers' linear prices (:class:`LinearPrices`) are derived from
the same formulas here, so the figure a solver optimises is the figure the evaluator reports.

The analytic model, per MoE layer and for a step of ``tokens_per_gpu`` tokens on every GPU:

* compute: the busiest GPU's roofline expert FFN, ``max(FLOPs / (peak x efficiency), weight bytes / HBM)``;
* dispatch and combine: each phase is limited by its busiest link direction, the NVLink port of one GPU or
  one GPU's NIC share, plus one latency (the NIC's when any copy crosses nodes, else NVLink's);
* layer: dispatch + compute + combine, all exposed (no overlap in the analytic model).

Units are in the names: ``_us`` microseconds, ``bytes_`` bytes, ``gbytes_per_s`` 10^9 bytes per second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.shapes import ModelShape

TIME_KEYS = ("dispatch_us", "compute_us", "combine_us", "exposed_comm_us", "layer_us")


@dataclass(frozen=True)
class LayerTime:
    """The time of one MoE layer, in microseconds per step.

    ``compute_us`` is the busiest GPU's; ``exposed_comm_us`` the communication not hidden behind compute
    (all of it when nothing overlaps); ``layer_us`` the layer's wall time."""

    dispatch_us: float
    compute_us: float
    combine_us: float
    exposed_comm_us: float
    layer_us: float

    @classmethod
    def sequential(cls, dispatch_us: float, compute_us: float, combine_us: float) -> LayerTime:
        """Phases one after the other: every microsecond of communication is exposed."""
        comm = float(dispatch_us) + float(combine_us)
        return cls(
            float(dispatch_us), float(compute_us), float(combine_us), comm, comm + compute_us
        )

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StepTime:
    """Per-layer times of one step and the model that produced them (``evaluator``, ``simulator``, ...)."""

    layers: tuple[LayerTime, ...]
    source: str

    @classmethod
    def of(cls, layers: Iterable[LayerTime], source: str) -> StepTime:
        return cls(tuple(layers), source)

    @property
    def moe_time_us(self) -> float:
        """Sum of the layers' wall times: the MoE part of one step."""
        return float(sum(t.layer_us for t in self.layers))

    def column(self, key: str) -> np.ndarray:
        """``[layers]`` values of one field of :data:`TIME_KEYS`."""
        return np.array([getattr(t, key) for t in self.layers], dtype=np.float64)

    def totals(self) -> dict[str, float]:
        """Each field of :data:`TIME_KEYS` summed over the layers (us per step)."""
        return {key: float(self.column(key).sum()) for key in TIME_KEYS}


def busiest_direction_bytes(pair_bytes: np.ndarray) -> float:
    """The most bytes any one endpoint sends or receives, from ``pair_bytes[src, dst]``."""
    if not pair_bytes.any():
        return 0.0
    return float(max(pair_bytes.sum(axis=1).max(), pair_bytes.sum(axis=0).max()))


def phase_us(nvlink_bytes: np.ndarray, nic_bytes: np.ndarray, cluster: ClusterSpec) -> float:
    """One dispatch or combine phase from ``[gpus, gpus]`` byte matrices: the busiest GPU's NVLink or NIC
    direction at the cluster's effective bandwidth, plus one link latency."""
    t_s = max(
        busiest_direction_bytes(nvlink_bytes) / (cluster.nvlink_effective_gbytes_per_s * 1e9)
        if nvlink_bytes.any()
        else 0.0,
        busiest_direction_bytes(nic_bytes) / (cluster.nic_effective_gbytes_per_s * 1e9)
        if nic_bytes.any()
        else 0.0,
    )
    return t_s * 1e6 + phase_latency_us(cluster, bool(nic_bytes.any()), bool(nvlink_bytes.any()))


def phase_latency_us(cluster: ClusterSpec, crosses_nodes: bool, uses_nvlink: bool) -> float:
    """The one latency a phase pays: the NIC's when any copy crosses nodes, else NVLink's, else none."""
    if crosses_nodes:
        return cluster.nic_latency_us
    return cluster.nvlink_latency_us if uses_nvlink else 0.0


def peak_tflops(shape: ModelShape, cluster: ClusterSpec) -> float:
    return cluster.gpu.fp8_tflops if shape.compute_dtype == "fp8" else cluster.gpu.bf16_tflops


def compute_us(
    assignments: np.ndarray, active_experts: np.ndarray, shape: ModelShape, cluster: ClusterSpec
) -> np.ndarray:
    """Roofline expert-FFN time per GPU (us): ``assignments`` (token, expert) pairs computed and
    ``active_experts`` whose weights are read, any matching shapes (``[gpus]``, ``[layers, gpus]``)."""
    flops = np.asarray(assignments, dtype=np.float64) * shape.flops_per_token_per_expert
    t_flops = flops / (peak_tflops(shape, cluster) * 1e12 * cluster.compute_efficiency)
    t_bytes = (
        np.asarray(active_experts, dtype=np.float64)
        * shape.expert_weight_bytes
        / (cluster.gpu.hbm_gbytes_per_s * 1e9)
    )
    return np.maximum(t_flops, t_bytes) * 1e6


@dataclass(frozen=True)
class LinearPrices:
    """The analytic model above as linear prices (us) of one unit of work in one MoE layer, for search.

    ``scale`` (tokens of a step over tokens of the trace) is already folded in. The evaluator's time of a
    layer is ``max(us_per_assignment x busiest GPU's assignments, us_per_active_expert x its active
    experts)`` plus, for each phase, the busiest link's copies times its price plus one latency."""

    us_per_assignment: float  # busiest GPU: one (token, expert) assignment of compute
    us_per_nic_copy: float  # one token copy through one NIC (dispatch + combine)
    us_per_nvlink_copy: float  # one token copy through one GPU's NVLink port (dispatch + combine)
    nic_latency_us: float = 0.0
    nvlink_latency_us: float = 0.0
    us_per_active_expert: float = 0.0  # roofline floor: one expert's weights read from HBM

    @classmethod
    def of(cls, shape: ModelShape, cluster: ClusterSpec, scale: float) -> LinearPrices:
        """Prices at a step of ``scale`` times the trace's tokens, from the formulas of this module."""
        one = np.ones(1)
        per_assignment = float(compute_us(one * scale, np.zeros(1), shape, cluster)[0])
        per_expert = float(compute_us(np.zeros(1), one, shape, cluster)[0])
        copy_bytes = (
            scale
            * shape.hidden_size
            * (shape.dispatch_bytes_per_elem + shape.combine_bytes_per_elem)
        )
        nvl_gbps = max(cluster.nvlink_effective_gbytes_per_s, 1e-9)
        return cls(
            us_per_assignment=per_assignment,
            us_per_nic_copy=copy_bytes / (cluster.nic_effective_gbytes_per_s * 1e9) * 1e6,
            us_per_nvlink_copy=copy_bytes / (nvl_gbps * 1e9) * 1e6,
            nic_latency_us=cluster.nic_latency_us,
            nvlink_latency_us=cluster.nvlink_latency_us,
            us_per_active_expert=per_expert,
        )

    def latency_us(self, num_nodes: int, gpus_per_node: int) -> float:
        """Dispatch + combine latency of a layer in standard mode, as :func:`phase_us` adds it: the NIC's
        when there is more than one node (some copy crosses nodes), else NVLink's within one node."""
        if num_nodes > 1:
            return 2.0 * self.nic_latency_us
        if gpus_per_node > 1:
            return 2.0 * self.nvlink_latency_us
        return 0.0


def step_from_columns(
    dispatch_us: Iterable[float],
    compute_us_per_layer: Iterable[float],
    combine_us: Iterable[float],
    source: str,
) -> StepTime:
    """A sequential (no overlap) step from per-layer phase times."""
    return StepTime.of(
        (
            LayerTime.sequential(d, c, b)
            for d, c, b in zip(dispatch_us, compute_us_per_layer, combine_us, strict=True)
        ),
        source,
    )
