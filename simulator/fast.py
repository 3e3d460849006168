"""The fast analytical path: a phase's time from its busiest link, without playing flows.

Every GPU sends at once, so a phase cannot end before its busiest link has carried its bytes at full
capacity, plus the latency of the paths; DeepEP's pipelined relay adds the last chunk's second hop. This
module computes exactly the bytes the event simulation puts on each link that can bind (NVLink out / in
per GPU, NIC out / in per GPU over all its NICs, PCIe when narrower than the NICs), from the same
:class:`~moe_placement.simulator.collectives.PhasePlan`, and estimates

    phase_us = max_link(bytes / capacity) + path latency (+ relay stage latency + one chunk's second hop)
               + the plan's fixed overhead

Stated error against the exact event simulation (``tests/test_simulator_fast.py`` checks it on uniform
traffic, 16-64 GPUs, every algorithm, both presets it names): within :data:`FAST_ERROR_BOUND` of the
exact phase time. What it leaves out is what the exact run adds on top of the busiest link: fair-share
contention that keeps a link below capacity for a while (a receiver fed by several senders that finish
unevenly) and the drain of the relay pipeline beyond one chunk. Fabric links are taken as never binding,
which holds for the spraying fabrics of the presets (each trunk as wide as the NICs under it); ECMP
collisions are not modelled, so ``routing="ecmp"`` is refused here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.simulator.collectives import PhasePlan
from moe_placement.simulator.topology import Topology

# Stated bound on the relative error of the fast path against the exact event simulation (worst seen
# on the checked grid: 9.9%, a DeepEP combine on h800-mpft at 32 GPUs).
FAST_ERROR_BOUND = 0.12


@dataclass
class LinkLoads:
    """Bytes per GPU on each link kind that can bind, ``[gpus]`` each, and their capacities in bytes/us."""

    nvl_tx: np.ndarray
    nvl_rx: np.ndarray
    nic_tx: np.ndarray
    nic_rx: np.ndarray
    nvl_cap: float
    nic_cap: float
    pcie_cap: float
    # bytes on each GPU's SM link (hybrid-ep: sm_coef x its NVLink sends) and that link's capacity
    sm_tx: np.ndarray | None = None
    sm_cap: float = 0.0

    def busiest_us(self) -> float:
        """Time the busiest link needs at full capacity (PCIe carries a GPU's NIC bytes)."""
        times = [0.0]
        if self.sm_cap > 0 and self.sm_tx is not None:
            times.append(float(self.sm_tx.max()) / self.sm_cap)
        if self.nvl_cap > 0:
            times.append(float(max(self.nvl_tx.max(), self.nvl_rx.max())) / self.nvl_cap)
        nic_cap = min(self.nic_cap, self.pcie_cap) if self.pcie_cap > 0 else self.nic_cap
        if nic_cap > 0:
            times.append(float(max(self.nic_tx.max(), self.nic_rx.max())) / nic_cap)
        return max(times)

    def __add__(self, other: LinkLoads) -> LinkLoads:
        return LinkLoads(
            self.nvl_tx + other.nvl_tx,
            self.nvl_rx + other.nvl_rx,
            self.nic_tx + other.nic_tx,
            self.nic_rx + other.nic_rx,
            self.nvl_cap,
            self.nic_cap,
            self.pcie_cap,
            _sum_optional(self.sm_tx, other.sm_tx),
            max(self.sm_cap, other.sm_cap),
        )


def _sum_optional(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    return a if b is None else a + b


class FastModel:
    """Link loads and latencies of phase plans on one cluster, as :class:`Topology` routes them."""

    def __init__(
        self,
        cluster: ClusterSpec,
        *,
        routing: str = "spray",
        pxn: bool = True,
        rdma_nics: bool = False,
    ) -> None:
        if routing != "spray":
            raise PlacementError("the fast path models spraying fabrics only; drop --fast for ECMP")
        self.cluster = cluster
        self.topo = Topology(cluster, routing=routing, pxn=pxn, rdma_nics=rdma_nics)
        self.G = cluster.num_gpus
        self.gpn = cluster.gpus_per_node
        idx = np.arange(self.G)
        self.node = idx // self.gpn
        self.local = idx % self.gpn
        self.nvl_cap = self.topo.nvl_bw if self.gpn > 1 else 0.0
        self.nic_cap = self.topo.npg * self.topo.port_bw
        self.pcie_cap = self.topo.pcie_bw if self.topo.pcie_bw < self.nic_cap else 0.0
        # hybrid-ep's SM link (comm_sms x the GPU type's per-SM copy rate), as Topology(sm_links=True)
        self.sm_cap = cluster.comm_sms * cluster.gpu.sm_copy_gbytes_per_s * 1e3

    def _zero(self) -> LinkLoads:
        z = np.zeros(self.G)
        return LinkLoads(z, z.copy(), z.copy(), z.copy(), self.nvl_cap, self.nic_cap, self.pcie_cap)

    def _over_nic(self, loads: LinkLoads, m: np.ndarray) -> None:
        loads.nic_tx += m.sum(axis=1)
        loads.nic_rx += m.sum(axis=0)

    def _over_nvl(self, loads: LinkLoads, m: np.ndarray) -> None:
        loads.nvl_tx += m.sum(axis=1)
        loads.nvl_rx += m.sum(axis=0)

    def direct_loads(self, plan: PhasePlan) -> LinkLoads:
        """Loads of ``plan.direct`` routed as the engine routes them (NVLink in a node; NIC across,
        with PXN for cross-rail pairs; NIC to NIC for RDMA kernels)."""
        loads = self._zero()
        m = plan.direct * (1 - np.eye(self.G))
        same = self.node[:, None] == self.node[None, :]
        if plan.sm_coef > 0:  # hybrid-ep: direct bytes stay in the node (NVLink), copied by SMs
            self._over_nvl(loads, np.where(same, m, 0.0))
            self._over_nic(loads, np.where(same, 0.0, m))
            return self._with_sm(loads, plan.sm_coef)
        if plan.rdma and not plan.nvlink_in_node:
            self._over_nic(loads, m)
            return loads
        self._over_nvl(loads, np.where(same, m, 0.0))
        cross = np.where(same, 0.0, m)
        if plan.rdma or not self.topo.pxn:
            self._over_nic(loads, cross)
            return loads
        rail_differs = self.local[:, None] != self.local[None, :]
        hop = np.where(rail_differs, cross, 0.0)  # first over NVLink to the GPU on the dst's rail
        relay = self.node[:, None] * self.gpn + self.local[None, :]  # [src, dst] -> relay GPU
        loads.nvl_tx += hop.sum(axis=1)
        loads.nvl_rx += np.bincount(relay.ravel(), weights=hop.ravel(), minlength=self.G)
        sender_bytes = np.bincount(relay.ravel(), weights=cross.ravel(), minlength=self.G)
        loads.nic_tx += sender_bytes
        loads.nic_rx += cross.sum(axis=0)
        return loads

    def stage_loads(self, m: np.ndarray, sm_coef: float = 0.0) -> LinkLoads:
        """Loads of a relay stage (``direct_nic``: NVLink in a node, rail-local NIC across);
        ``sm_coef`` > 0: its NVLink sends also load the sender's SM link (hybrid-ep)."""
        loads = self._zero()
        same = self.node[:, None] == self.node[None, :]
        m = m * (1 - np.eye(self.G))
        self._over_nvl(loads, np.where(same, m, 0.0))
        self._over_nic(loads, np.where(same, 0.0, m))
        return self._with_sm(loads, sm_coef) if sm_coef > 0 else loads

    def _with_sm(self, loads: LinkLoads, sm_coef: float) -> LinkLoads:
        """``loads`` whose NVLink sends (all of them intra-node here) also cross the SM link."""
        if self.sm_cap > 0:
            loads.sm_tx = loads.nvl_tx * sm_coef
            loads.sm_cap = self.sm_cap
        return loads

    def _latency(self, m: np.ndarray, *, plan: PhasePlan | None = None) -> float:
        """Longest path latency among the pairs that carry bytes (routes of GPU 0 and the last GPU,
        standing for all: the presets are symmetric). ``plan``: routed as its direct bytes (RDMA rules
        included); otherwise as a relay stage (``direct_nic``)."""
        worst = 0.0
        for s in {0, self.G - 1}:
            for d in np.flatnonzero(m[s]).tolist():
                if d == s:
                    continue
                if plan is None:
                    route = self.topo.route(s, d, direct_nic=True)
                else:
                    cross = self.node[s] != self.node[d]
                    rdma = plan.rdma and (cross or not plan.nvlink_in_node)
                    route = self.topo.route(s, d, rdma=rdma)
                worst = max(worst, route.latency_us)
        return worst

    def plan_loads(self, plan: PhasePlan) -> LinkLoads:
        """All the bytes ``plan`` puts on the binding links (direct and both relay stages)."""
        loads = self.direct_loads(plan)
        for stage in (plan.stage1, plan.stage2):
            if stage is not None:
                loads = loads + self.stage_loads(stage, plan.sm_coef)
        return loads

    def phase_us(self, plan: PhasePlan, relay_chunks: int = 8) -> tuple[float, float]:
        """(estimated phase time, the busiest link's bytes at full capacity), both in us; the second is
        the event simulation's ``lower_bound_us`` for the same plan."""
        direct = self.direct_loads(plan)
        lat = self._latency(plan.direct, plan=plan)
        if plan.stage1 is None or plan.stage2 is None:
            bound = direct.busiest_us()
            return bound + lat + plan.overhead_us, bound
        s1 = self.stage_loads(plan.stage1, plan.sm_coef)
        s2 = self.stage_loads(plan.stage2, plan.sm_coef)
        lat1, lat2 = self._latency(plan.stage1), self._latency(plan.stage2)
        if plan.relay == "store-and-forward":
            first = (direct + s1).busiest_us()
            bound = (direct + s1 + s2).busiest_us()
            return first + max(lat, lat1) + s2.busiest_us() + lat2 + plan.overhead_us, bound
        bound = (direct + s1 + s2).busiest_us()
        # pipelined: the stage that is not the bottleneck adds one chunk (the first chunk before the
        # bottleneck stage can start, or the last one after it is done)
        tail = min(s1.busiest_us(), s2.busiest_us()) / max(relay_chunks, 1)
        return bound + max(lat, lat1 + lat2) + tail + plan.overhead_us, bound
