"""Why a simulated layer differs from the evaluator's: named, measured terms that sum to the gap.

The evaluator (:mod:`moe_placement.metrics`) times a layer as ``dispatch + compute + combine``, each phase
its busiest link's bytes over its bandwidth plus one latency. The simulator plays the same bytes on the
network, so per phase run ``r`` (a dispatch or combine of one micro-batch) its span ``S_r`` (first GPU's
start to last GPU's completion) splits exactly around the phase's busiest link ``l*``, busy from its first
byte ``t_first`` to its last byte ``t_last``::

    S_r = head (start -> t_first) + busy (t_first -> t_last) + tail (t_last -> completion)
    busy = bound (bytes of l* / its capacity) + congestion (l* ran below capacity)
    head + tail = latency of the flow that carried l*'s last byte + pipeline (the rest)

and the layer is ``attention + sum_r S_r + compute + overlap`` (``overlap``: the residual). Against the
evaluator, per layer (all in us)::

    layer_us = evaluator_us + routing_us + latency_us + pipeline_us + congestion_us
               + compute_model_us + attention_us + overlap_us

* ``routing_us``: the simulator's busiest-link bounds minus the evaluator's (routes put more bytes on one
  link than the evaluator's NVLink-port / NIC model: no deduplication in ``direct``, PXN relays over
  NVLink, RDMA-only NICs in ``deepep-ll``); usually >= 0;
* ``latency_us``: the path latency after the busiest links' last bytes minus the evaluator's one latency
  per phase (switch hops, the NVLink hop of a relay, micro-batches each paying one); negative when that
  path is quicker than the evaluator's latency (an NVLink-only phase the evaluator charges a NIC latency);
* ``pipeline_us`` >= 0: the rest of each phase outside its busiest link's busy period: relay stages
  feeding it (a DeepEP NIC chunk before its NVLink fan-out, 2DH's store-and-forward), forwarding after
  it, and other links still draining;
* ``congestion_us`` >= 0: max-min fair sharing left the busiest link below capacity during its busy
  period (its flows were held back by other links, or waited for data);
* ``compute_model_us`` >= 0: the simulator's busiest GPU compute minus the evaluator's (the SMs given to
  communication when it overlaps compute, the shared expert);
* ``overlap_us``: the layer minus attention, phase spans and compute: <= 0 with ``overlap="none"`` (GPUs
  move on as their own data lands, so phases of different GPUs overlap), more negative when micro-batches
  hide communication behind compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.simulator.collectives import PhaseRun
from moe_placement.simulator.engine import FluidNetwork
from moe_placement.timing import phase_latency_us

TERM_KEYS = (
    "evaluator_us",
    "routing_us",
    "latency_us",
    "pipeline_us",
    "congestion_us",
    "compute_model_us",
    "overlap_us",
)


@dataclass(frozen=True)
class PhaseShape:
    """One phase run split around its busiest link (us): ``span = head + busy + tail``."""

    span_us: float
    bound_us: float  # busiest link's bytes / capacity
    busy_us: float  # its first byte to its last byte
    last_latency_us: float  # latency of the flow that carried its last byte

    @property
    def outside_us(self) -> float:
        """head + tail: the span outside the busiest link's busy period."""
        return self.span_us - self.busy_us


def phase_shape(run: PhaseRun, net: FluidNetwork) -> PhaseShape:
    """Measure ``run`` from the network's flow records (call once its flows have all finished)."""
    span = run.span_us
    if not run.flow_ids:
        return PhaseShape(span, 0.0, 0.0, 0.0)
    ids = np.asarray(run.flow_ids, dtype=np.int64)
    link_bytes = np.zeros(net.num_links)
    for f in ids.tolist():
        links, coefs = net.path(f)
        np.add.at(link_bytes, links, coefs * net.size_bytes[f])
    times = link_bytes / net.cap
    busiest = int(np.argmax(times))
    on = np.array([busiest in net.path(f)[0] for f in ids.tolist()])
    t_first = float(net.start_us[ids[on]].min())
    ends = net.end_us[ids[on]]
    last = int(ids[on][np.argmax(ends)])
    busy = float(ends.max()) - t_first
    return PhaseShape(span, float(times[busiest]), busy, float(net.latency_us[last]))


def layer_terms(
    layer_us: float,
    phases: Sequence[PhaseShape],
    *,
    ev: Any,
    layer: int,
    cluster: ClusterSpec,
    compute_us: float,
    attention_us: float,
) -> dict[str, float]:
    """The named terms of one simulated layer against the evaluator's ``ev`` (module docstring).

    ``compute_us``: the simulator's busiest GPU compute of the layer; ``attention_us``: the attention
    time inside the layer; ``phases``: every dispatch and combine run of the layer."""
    eval_bound = eval_latency = 0.0
    for copies, phase_time in (
        (ev.dispatch[layer], ev.dispatch_us[layer]),
        (ev.combine[layer], ev.combine_us[layer]),
    ):
        lat = phase_latency_us(cluster, bool(copies.nic.any()), bool(copies.nvlink.any()))
        eval_latency += lat
        eval_bound += float(phase_time) - lat
    eval_compute = float(ev.compute_us[layer].max())
    evaluator = eval_bound + eval_latency + eval_compute
    latency = sum(p.last_latency_us for p in phases)
    return {
        "evaluator_us": evaluator,
        "routing_us": sum(p.bound_us for p in phases) - eval_bound,
        "latency_us": latency - eval_latency,
        "pipeline_us": sum(p.outside_us for p in phases) - latency,
        "congestion_us": sum(p.busy_us - p.bound_us for p in phases),
        "compute_model_us": compute_us - eval_compute,
        "overlap_us": layer_us - attention_us - sum(p.span_us for p in phases) - compute_us,
    }
