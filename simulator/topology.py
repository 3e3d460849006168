"""Topology: GPUs, the NVSwitch scale-up domain, PCIe, NICs, leaf / spine (/ core) switches and planes.

Builders follow :class:`moe_placement.cluster.ClusterSpec.fabric`: ``none`` (one node), ``single-switch``,
``multi-rail`` (rail-optimised two-tier fat-tree, one fabric: NIC i of every node on rail i's leaves, all
leaves share the spines), ``multi-plane`` (DeepSeek MPFT: NIC i of every node on plane i, each plane its own
two-tier fat-tree; nothing crosses planes in the fabric) and ``three-tier`` (rail-optimised leaves, pods of
``radix/2`` leaves with aggregation switches, a core tier).

The physical graph is a :class:`networkx.DiGraph` (``Topology.graph``) whose edges carry ``gbytes_per_s``
and ``latency_us``. Routing is by rule (the graph is regular), with:

* ``spray`` (adaptive routing / packet spraying): a flow is split evenly over the equal-cost uplinks. Even
  spraying over S parallel links is exactly a single pooled link of S times the capacity, so the engine
  sees one *trunk* link per leaf and direction (that keeps flows short: 4-8 links, not 70);
* ``ecmp``: per-flow hashing picks one spine (or aggregation + core) path; flows can collide;
* PXN: cross-rail traffic is first moved over NVLink to the GPU of the source node on the destination's
  rail, then sent rail-local (NCCL PXN; MPFT always does this since planes do not connect);
* RDMA-only routes (``route(..., rdma=True)``, DeepEP's low-latency kernels over IBGDA): every GPU-to-GPU
  copy, same node included, leaves through the sender's own NIC and lands through the receiver's own NIC,
  never over NVLink. A one-node cluster then needs its NICs (``rdma_nics=True``; the NICs of one node meet
  at their leaves). On ``multi-plane`` an RDMA write to another plane is carried between the two planes'
  leaves as on ``multi-rail`` (DeepEP's low-latency test ran pure RDMA between every pair of ranks on H800
  + CX7, so its fabric reached every NIC from every NIC; the NICs at both ends, not the spine, bound it).

Capacities are per direction, effective (nominal x the preset's efficiency), in bytes per microsecond
(1 GB/s = 1e3 bytes/us).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.errors import PlacementError

if TYPE_CHECKING:
    import networkx as nx

ROUTINGS = ("spray", "ecmp")


@dataclass
class Route:
    """A path: link ids, their coefficients (share of the flow on each) and end-to-end latency."""

    links: np.ndarray
    coefs: np.ndarray
    latency_us: float


@dataclass
class Topology:
    """Links of one cluster, with rule-based routing. ``cap_bytes_per_us[link]``, ``link_names[link]``."""

    cluster: ClusterSpec
    routing: str = "spray"
    pxn: bool = True
    seed: int = 0
    rdma_nics: bool = False  # build NIC links even for one node (RDMA-only kernels)
    # one ``sm/{gpu}`` link per GPU: what its communication kernel's SMs copy (cluster.comm_sms x the GPU
    # type's sm_copy_gbytes_per_s; Hybrid-EP's NVLink sends take it, see collectives.PhasePlan.sm_coef)
    sm_links: bool = False
    link_names: list[str] = field(default_factory=list)
    link_kinds: list[str] = field(default_factory=list)
    caps: list[float] = field(default_factory=list)
    _ids: dict[str, int] = field(default_factory=dict)
    _routes: dict[tuple[int, int], Route] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.cluster
        if self.routing not in ROUTINGS:
            raise PlacementError(f"unknown routing {self.routing!r}; known: {', '.join(ROUTINGS)}")
        if self.rdma_nics and (c.fabric == "none" or c.nics_per_gpu < 1):
            raise PlacementError(
                f"cluster {c.name} has no NIC fabric (fabric {c.fabric!r}): RDMA-only kernels need one"
            )
        if c.fabric == "multi-plane":
            self.pxn = (
                True  # planes do not connect: cross-plane traffic must be relayed inside the node
            )
        self.gpn = c.gpus_per_node
        self.npg = max(1, c.nics_per_gpu)
        self.rails = self.gpn * self.npg
        self.half = c.switch_radix // 2
        self.blocks = -(-c.num_nodes // self.half)  # leaves per rail
        # a leaf has as many uplinks as NICs below it (1:1, full bisection, no more spines than needed)
        self.uplinks = min(self.half, c.num_nodes)
        self.nvl_bw = c.nvlink_effective_gbytes_per_s * 1e3
        self.port_bw = c.nic_gbits_per_s / 8.0 * c.nic_efficiency * 1e3
        self.pcie_bw = c.pcie_gbytes_per_s * 1e3
        self.sm_bw = c.comm_sms * c.gpu.sm_copy_gbytes_per_s * 1e3
        for g in range(c.num_gpus):
            if self.sm_links and self.sm_bw > 0:
                self._add(f"sm/{g}", "sm", self.sm_bw)
            if self.gpn > 1:
                self._add(f"nvl-tx/{g}", "nvlink", self.nvl_bw)
                self._add(f"nvl-rx/{g}", "nvlink", self.nvl_bw)
            if c.num_nodes > 1 or self.rdma_nics:
                self._add(f"pcie-up/{g}", "pcie", self.pcie_bw)
                self._add(f"pcie-down/{g}", "pcie", self.pcie_bw)
                for k in range(self.npg):
                    self._add(f"nic-tx/{g}.{k}", "nic", self.port_bw)
                    self._add(f"nic-rx/{g}.{k}", "nic", self.port_bw)

    # -- links --------------------------------------------------------------------------------------
    def _add(self, name: str, kind: str, cap_bytes_per_us: float) -> int:
        if name in self._ids:
            return self._ids[name]
        self._ids[name] = len(self.caps)
        self.link_names.append(name)
        self.link_kinds.append(kind)
        self.caps.append(cap_bytes_per_us)
        return self._ids[name]

    @property
    def num_links(self) -> int:
        return len(self.caps)

    def capacity(self) -> np.ndarray:
        return np.asarray(self.caps, dtype=np.float64)

    def binding(self) -> np.ndarray:
        """Per link: can it ever be the bottleneck? A GPU's PCIe link carries only what its NICs carry and
        a sprayed trunk only what the NICs below it carry, so each is non-binding when its capacity is at
        least theirs (the engine then skips it in the rate computation, exactly)."""
        out = np.ones(self.num_links, dtype=bool)
        nics_below = self.uplinks
        for i, name in enumerate(self.link_names):
            kind = name.split("/")[0]
            if kind.startswith("pcie"):
                out[i] = self.caps[i] < self.npg * self.port_bw
            elif kind in ("leaf-up", "leaf-down"):
                out[i] = self.caps[i] < nics_below * self.port_bw
            elif kind in ("pod-up", "pod-down"):
                out[i] = self.caps[i] < self.half * nics_below * self.port_bw
        return out

    # -- routing ------------------------------------------------------------------------------------
    def _leaf(self, node: int, rail: int) -> tuple[int, int]:
        return rail, node // self.half

    def _fabric(
        self, src: int, dst: int, k: int, *, cross_plane: bool = False
    ) -> tuple[list[int], int]:
        """Switch-tier links between NIC k of ``src`` and NIC k of ``dst`` (rails from local indices).
        ``cross_plane``: an RDMA-only route may join two planes of a multi-plane fabric (module docstring)."""
        c = self.cluster
        ns, nd = src // self.gpn, dst // self.gpn
        rs, rd = (src % self.gpn) * self.npg + k, (dst % self.gpn) * self.npg + k
        if c.fabric == "single-switch":
            return [], 0
        ls, ld = self._leaf(ns, rs), self._leaf(nd, rd)
        if ls == ld:
            return [], 0
        if c.fabric == "multi-plane" and rs != rd and not cross_plane:
            raise PlacementError(
                "internal: cross-plane traffic must be relayed inside the node (PXN)"
            )
        trunk = self.uplinks * self.port_bw
        if c.fabric in ("multi-rail", "multi-plane"):
            tier = f"p{rs}" if c.fabric == "multi-plane" and rs == rd else "all"
            if self.routing == "spray":
                up = self._add(f"leaf-up/{ls[0]}.{ls[1]}", "fabric", trunk)
                down = self._add(f"leaf-down/{ld[0]}.{ld[1]}", "fabric", trunk)
                return [up, down], 2
            spine = self._hash(src, dst, k) % self.uplinks
            up = self._add(f"spine-up/{ls[0]}.{ls[1]}-{tier}.{spine}", "fabric", self.port_bw)
            down = self._add(f"spine-down/{tier}.{spine}-{ld[0]}.{ld[1]}", "fabric", self.port_bw)
            return [up, down], 2
        # three-tier: leaves numbered rail-major; pods of `half` leaves
        li_s, li_d = ls[0] * self.blocks + ls[1], ld[0] * self.blocks + ld[1]
        pod_s, pod_d = li_s // self.half, li_d // self.half
        if self.routing == "spray":
            links = [self._add(f"leaf-up/{li_s}", "fabric", trunk)]
            hops = 2
            if pod_s != pod_d:
                pod_trunk = self.half * self.uplinks * self.port_bw
                links += [
                    self._add(f"pod-up/{pod_s}", "fabric", pod_trunk),
                    self._add(f"pod-down/{pod_d}", "fabric", pod_trunk),
                ]
                hops = 4
            links.append(self._add(f"leaf-down/{li_d}", "fabric", trunk))
            return links, hops
        h = self._hash(src, dst, k)
        agg = h % self.uplinks
        links = [self._add(f"agg-up/{li_s}.{agg}", "fabric", self.port_bw)]
        hops = 2
        if pod_s != pod_d:
            core = (h // self.half) % self.half
            links += [
                self._add(f"core-up/{pod_s}.{agg}.{core}", "fabric", self.port_bw),
                self._add(f"core-down/{agg}.{core}.{pod_d}", "fabric", self.port_bw),
            ]
            hops = 4
        links.append(self._add(f"agg-down/{agg}.{li_d}", "fabric", self.port_bw))
        return links, hops

    def _hash(self, src: int, dst: int, k: int) -> int:
        return zlib.crc32(f"{self.seed}:{src}:{dst}:{k}".encode())

    def _nic_path(
        self, src: int, dst: int, *, cross_plane: bool = False
    ) -> tuple[list[int], list[float], int]:
        links: list[int] = [self._ids[f"pcie-up/{src}"]]
        coefs: list[float] = [1.0]
        hops = 0
        share = 1.0 / self.npg  # a GPU's traffic is spread over its NICs
        for k in range(self.npg):
            fab, hops = self._fabric(src, dst, k, cross_plane=cross_plane)
            part = [self._ids[f"nic-tx/{src}.{k}"], *fab, self._ids[f"nic-rx/{dst}.{k}"]]
            links += part
            coefs += [share] * len(part)
        links.append(self._ids[f"pcie-down/{dst}"])
        coefs.append(1.0)
        return links, coefs, hops

    def route(self, src: int, dst: int, *, direct_nic: bool = False, rdma: bool = False) -> Route:
        """The path of traffic from GPU ``src`` to GPU ``dst``.

        ``direct_nic``: the caller already put the data on the destination's rail (DeepEP, 2DH), so the
        cross-node part is a rail-local NIC path; otherwise cross-rail traffic takes PXN when enabled.
        ``rdma``: sender's NIC to receiver's NIC whatever the nodes (DeepEP low-latency, IBGDA).
        """
        if rdma:
            return self._rdma_route(src, dst)
        key = (src, dst) if not direct_nic else (src, -1 - dst)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        c = self.cluster
        if src == dst:
            route = Route(np.zeros(0, dtype=np.int64), np.zeros(0), 0.0)
        elif src // self.gpn == dst // self.gpn:
            route = Route(
                np.array([self._ids[f"nvl-tx/{src}"], self._ids[f"nvl-rx/{dst}"]]),
                np.ones(2),
                c.nvlink_latency_us,
            )
        else:
            links: list[int] = []
            coefs: list[float] = []
            latency = c.nic_latency_us
            sender = src
            if src % self.gpn != dst % self.gpn and self.pxn and not direct_nic:
                sender = (src // self.gpn) * self.gpn + dst % self.gpn
                links += [self._ids[f"nvl-tx/{src}"], self._ids[f"nvl-rx/{sender}"]]
                coefs += [1.0, 1.0]
                latency += c.nvlink_latency_us
            nic_links, nic_coefs, hops = self._nic_path(sender, dst)
            links += nic_links
            coefs += nic_coefs
            latency += hops * c.switch_latency_us
            route = Route(np.asarray(links, dtype=np.int64), np.asarray(coefs), latency)
        self._routes[key] = route
        return route

    def _rdma_route(self, src: int, dst: int) -> Route:
        key = (src, -(1 << 30) - dst)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        c = self.cluster
        if src == dst:  # DeepEP copies to its own rank in GPU memory, not over the NIC
            route = Route(np.zeros(0, dtype=np.int64), np.zeros(0), 0.0)
        else:
            if f"nic-tx/{src}.0" not in self._ids:
                raise PlacementError(
                    "internal: RDMA-only routes on one node need Topology(..., rdma_nics=True)"
                )
            links, coefs, hops = self._nic_path(src, dst, cross_plane=True)
            route = Route(
                np.asarray(links, dtype=np.int64),
                np.asarray(coefs),
                c.nic_latency_us + hops * c.switch_latency_us,
            )
        self._routes[key] = route
        return route

    # -- the physical graph -------------------------------------------------------------------------
    @property
    def graph(self) -> nx.DiGraph:  # networkx loads here: a simulation needs no graph
        """GPUs, NVSwitches, PCIe switches, NICs and switches with per-direction link attributes."""
        c = self.cluster
        import networkx as nx

        g = nx.DiGraph(name=c.name, fabric=c.fabric)
        nvl = c.nvlink_effective_gbytes_per_s
        port = c.nic_gbits_per_s / 8.0 * c.nic_efficiency

        def both(a: object, b: object, bw: float, lat: float) -> None:
            g.add_edge(a, b, gbytes_per_s=bw, latency_us=lat)
            g.add_edge(b, a, gbytes_per_s=bw, latency_us=lat)

        for node in range(c.num_nodes):
            g.add_node(("nvswitch", node), kind="nvswitch")
            for local in range(self.gpn):
                gpu = node * self.gpn + local
                g.add_node(("gpu", gpu), kind="gpu")
                if self.gpn > 1:
                    both(("gpu", gpu), ("nvswitch", node), nvl, c.nvlink_latency_us / 2)
                if c.num_nodes > 1 or self.rdma_nics:
                    both(("gpu", gpu), ("pcie", gpu), c.pcie_gbytes_per_s, 0.0)
                    for k in range(self.npg):
                        nic = ("nic", gpu, k)
                        both(("pcie", gpu), nic, c.pcie_gbytes_per_s, 0.0)
                        rail = local * self.npg + k
                        if c.fabric == "single-switch":
                            both(nic, ("switch", 0), port, c.nic_latency_us / 2)
                        else:
                            both(nic, ("leaf", rail, node // self.half), port, c.nic_latency_us / 2)
        if c.fabric in ("multi-rail", "multi-plane") and (c.num_nodes > 1 or self.rdma_nics):
            for rail in range(self.rails):
                for block in range(self.blocks):
                    for s in range(self.uplinks):
                        tier = f"p{rail}" if c.fabric == "multi-plane" else "all"
                        both(("leaf", rail, block), ("spine", tier, s), port, c.switch_latency_us)
        if c.fabric == "three-tier" and (c.num_nodes > 1 or self.rdma_nics):
            for rail in range(self.rails):
                for block in range(self.blocks):
                    li = rail * self.blocks + block
                    pod = li // self.half
                    for a in range(self.uplinks):
                        both(("leaf", rail, block), ("agg", pod, a), port, c.switch_latency_us)
            pods = -(-(self.rails * self.blocks) // self.half)
            for pod in range(pods):
                for a in range(self.half):
                    for s in range(self.half):
                        both(("agg", pod, a), ("core", a, s), port, c.switch_latency_us)
        return g
