"""MoE all-to-all collectives as flows: direct pairwise, DeepEP hierarchical, DeepEP low-latency, Tutel 2DH.

A :class:`PhasePlan` is what one dispatch or combine moves, in bytes: ``direct[src, dst]`` sent straight
(over NVLink in a node, over the NIC - with PXN when cross-rail - across nodes), and an optional relay:
``stage1[src, relay]`` then ``stage2[relay, dst]``. DeepEP relays *pipelined* (the forwarder passes data on
as chunks land); 2DH relays *store-and-forward* (the second all-to-all starts once a GPU holds all its first
stage data). :func:`run_phase` turns a plan into flows on a :class:`~moe_placement.simulator.engine.FluidNetwork`.

DeepEP's low-latency kernels (deepseek-ai/DeepEP ``csrc/kernels/internode_ll.cu``) send one message per
(token, selected expert), with no per-GPU or per-node deduplication; copies to the sender's own rank stay
in GPU memory, off the network. A phase is one fluid flow per GPU pair (the pair's messages go back to back,
so the path latency is paid once). Two generations:

* ``deepep-ll`` - the current kernels (since DeepEP PR #173, June 2025): a destination that
  ``nvshmemi_get_p2p_ptr`` reaches (a GPU of the same NVLink domain) gets the message by a warp copy over
  NVLink; every other destination by an RDMA write (IBGDA) from the sender's NIC to the receiver's NIC
  (no PXN relay, whatever the rails);
* ``deepep-ll-rdma`` - the February 2025 kernels: every message to another rank, same node included, is an
  RDMA write NIC to NIC, never NVLink (``rdma=True`` routes).

Both pay :data:`LL_PHASE_OVERHEAD_US` once per phase on top of the network time (see there).

``hybrid-ep`` is NVIDIA's Hybrid-EP in DeepEP: DeepEP's hierarchical data path, with its NVLink copies
made by a fixed number of SMs (``cluster.comm_sms``, ``--sms``), each copying at the GPU type's
``sm_copy_gbytes_per_s`` with a fixed ``sm_message_us`` per message: a per-GPU ``sm/{gpu}`` link of that
capacity on the GPU's NVLink sends (``PhasePlan.sm_coef``; see :func:`_hybrid_ep_phase`).

Byte matrices come from the evaluator (:mod:`moe_placement.metrics`): ``PairCopies`` (DeepEP deduplicated:
``nic[src, forwarder]``, ``nvlink`` = intra-node copies + the forwarder's fan-out) and the per-GPU-pair
copies of a direct all-to-all; each times bytes per copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from moe_placement.errors import PlacementError
from moe_placement.simulator.engine import FluidNetwork
from moe_placement.simulator.topology import Route, Topology

ALGOS = ("direct", "deepep", "2dh", "deepep-ll", "deepep-ll-rdma", "hybrid-ep")
# DeepEP's low-latency kernels, current (NVLink in the node, RDMA across) and February 2025 (pure RDMA)
LL_ALGOS = ("deepep-ll", "deepep-ll-rdma")
# DeepEP low-latency dispatch message: an int4 (16 bytes) of source info before the FP8 data and scales
LL_DISPATCH_HEADER_BYTES = 16.0
# What a low-latency phase costs beyond moving its bytes, once per phase (an estimate, not a fit per
# point): the kernel launch (~4 us), the per-expert count and flag writes each receiver waits for before
# it reads (one more NVLink or NIC latency, ~3 us), and the receiver's pass over every landed message
# (dispatch: copied out of its buffer into the packed expert layout; combine: the weighted top-k sum),
# ~15-17 MB of HBM traffic per GPU at 128 tokens, ~6 us at H800's 3.35 TB/s x 0.8. Stated once for
# every preset and both generations (docs/simulator.md, validation).
LL_PHASE_OVERHEAD_US = 15.0
_TOL = 1e-9


@dataclass
class PhasePlan:
    """Bytes of one phase. ``direct``/``stage1``/``stage2`` are ``[gpus, gpus]``; ``relay`` is
    ``"pipelined"`` or ``"store-and-forward"``; ``rdma``: direct bytes go NIC to NIC even within a node."""

    name: str
    direct: np.ndarray
    stage1: np.ndarray | None = None
    stage2: np.ndarray | None = None
    relay: str = "pipelined"
    rdma: bool = False
    own: np.ndarray | None = None  # [gpus] stage1 bytes a relay receives for itself (not forwarded)
    # with ``rdma``: same-node pairs copy over NVLink instead (current DeepEP low-latency kernels)
    nvlink_in_node: bool = False
    overhead_us: float = 0.0  # added to every flow's delivery: a fixed per-phase kernel cost
    # > 0: every flow between two GPUs of one node (NVLink) also crosses its sender's ``sm/{src}`` link
    # (Topology(sm_links=True)) with this coefficient - the SMs that copy it (Hybrid-EP); 0: no SM link
    sm_coef: float = 0.0

    def scaled(self, factor: float) -> PhasePlan:
        return PhasePlan(
            self.name,
            self.direct * factor,
            None if self.stage1 is None else self.stage1 * factor,
            None if self.stage2 is None else self.stage2 * factor,
            self.relay,
            self.rdma,
            None if self.own is None else self.own * factor,
            self.nvlink_in_node,
            self.overhead_us,
            self.sm_coef,
        )

    def incoming_bytes(self) -> np.ndarray:
        """Bytes each GPU must receive (final destination) for the phase to be complete there."""
        inc = self.direct.sum(axis=0).copy()
        if self.stage2 is not None:
            inc += self.stage2.sum(axis=0)
        if self.own is not None:
            inc += self.own
        return inc


def _same_node(num_gpus: int, gpn: int) -> np.ndarray:
    node = np.arange(num_gpus) // gpn
    return node[:, None] == node[None, :]


def _two_hop(pairs: np.ndarray, gpn: int, relay_on_dst_rail: bool) -> tuple[np.ndarray, np.ndarray]:
    """Split cross-node ``pairs[src, dst]`` over relay GPUs: the GPU of the source node on the destination's
    local index (dispatch) or of the destination node on the source's local index (combine)."""
    G = pairs.shape[0]
    idx = np.arange(G)
    src, dst = np.meshgrid(idx, idx, indexing="ij")
    cross = (src // gpn) != (dst // gpn)
    relay = np.where(
        relay_on_dst_rail, (src // gpn) * gpn + dst % gpn, (dst // gpn) * gpn + src % gpn
    )
    w = np.where(cross, pairs, 0.0)
    stage1 = np.bincount((src * G + relay).ravel(), weights=w.ravel(), minlength=G * G).reshape(
        G, G
    )
    stage2 = np.bincount((relay * G + dst).ravel(), weights=w.ravel(), minlength=G * G).reshape(
        G, G
    )
    return stage1, stage2


def _own_copies(pairs: np.ndarray, gpn: int) -> np.ndarray:
    """``[gpus]`` cross-node copies each GPU receives as its own forwarder: from the GPUs of other nodes
    on its local index (DeepEP's forwarder of a token for a node is that node's GPU on the sender's
    local index)."""
    G = pairs.shape[0]
    idx = np.arange(G)
    same_rail = (idx[:, None] % gpn) == (idx[None, :] % gpn)
    other_node = (idx[:, None] // gpn) != (idx[None, :] // gpn)
    return np.where(same_rail & other_node, pairs, 0.0).sum(axis=0)


def build_phase(
    algo: str,
    phase: str,
    *,
    pairs: np.ndarray,
    nic: np.ndarray,
    nvlink: np.ndarray,
    bytes_per_copy: float,
    gpus_per_node: int,
    expert_pairs: np.ndarray | None = None,
    sm_message_bytes: float = 0.0,
) -> PhasePlan:
    """Bytes of ``phase`` (``dispatch`` or ``combine``) under ``algo``.

    ``pairs[src, dst]``: per-GPU-pair copies (direct all-to-all; diagonal ignored); ``nic``/``nvlink``:
    the evaluator's DeepEP-deduplicated copies for the same phase (combine already transposed);
    ``expert_pairs[src, dst]``: (token, selected expert) copies per GPU pair, needed by ``deepep-ll``
    and ``deepep-ll-rdma`` (``bytes_per_copy`` is then one message, header included);
    ``sm_message_bytes``: for ``hybrid-ep``, an SM's fixed cost per message expressed in bytes it could
    have copied meanwhile (:func:`sm_message_bytes`).
    """
    if algo == "hybrid-ep":
        return _hybrid_ep_phase(
            phase,
            pairs=pairs,
            nic=nic,
            nvlink=nvlink,
            bytes_per_copy=bytes_per_copy,
            gpus_per_node=gpus_per_node,
            sm_message_bytes=sm_message_bytes,
        )
    if algo not in ALGOS:
        raise PlacementError(f"unknown algo {algo!r}; known: {', '.join(ALGOS)}")
    G = pairs.shape[0]
    same = _same_node(G, gpus_per_node)
    if algo in LL_ALGOS:
        if expert_pairs is None:
            raise PlacementError(f"internal: {algo} needs per (token, expert) copies")
        return PhasePlan(
            phase,
            expert_pairs * (1 - np.eye(G)) * bytes_per_copy,
            rdma=True,
            nvlink_in_node=algo == "deepep-ll",
            overhead_us=LL_PHASE_OVERHEAD_US,
        )
    off = pairs * (1 - np.eye(G))
    if algo == "direct":
        return PhasePlan(phase, off * bytes_per_copy)
    intra = np.where(same, off, 0.0)
    if algo == "deepep":
        fan = np.clip(nvlink - intra, 0.0, None)
        own = None
        if phase == "dispatch":  # NIC to the forwarder, then the forwarder's NVLink fan-out
            stage1, stage2 = nic, fan
            # copies whose forwarder is their destination end there: the forwarder waits for them too
            own = np.minimum(_own_copies(off, gpus_per_node), nic.sum(axis=0)) * bytes_per_copy
        else:  # NVLink fan-in to the forwarder (reduced there), then the NIC back home
            stage1, stage2 = fan, nic
        return PhasePlan(
            phase,
            intra * bytes_per_copy,
            stage1 * bytes_per_copy,
            stage2 * bytes_per_copy,
            "pipelined",
            own=own,
        )
    s1, s2 = _two_hop(off, gpus_per_node, relay_on_dst_rail=(phase == "dispatch"))
    return PhasePlan(
        phase, intra * bytes_per_copy, s1 * bytes_per_copy, s2 * bytes_per_copy, "store-and-forward"
    )


def sm_message_bytes(sm_copy_gbytes_per_s: float, sm_message_us: float) -> float:
    """An SM's fixed cost per message as the bytes it copies in that time (0 without an SM term)."""
    return sm_message_us * sm_copy_gbytes_per_s * 1e3


def hybrid_ep_prob_bytes(num_experts: int, num_gpus: int, gpus_per_node: int) -> float:
    """Bytes Hybrid-EP's dispatch sends with each token copy besides the token: one float routing
    probability per expert of the destination node (its ``prob_buffer`` row: experts per GPU x GPUs
    per NVLink domain)."""
    return 4.0 * (num_experts / num_gpus) * gpus_per_node


def _hybrid_ep_phase(
    phase: str,
    *,
    pairs: np.ndarray,
    nic: np.ndarray,
    nvlink: np.ndarray,
    bytes_per_copy: float,
    gpus_per_node: int,
    sm_message_bytes: float,
) -> PhasePlan:
    """Hybrid-EP (DeepEP ``hybrid_ep`` branch, NVIDIA; ``docs/Hybrid-EP_Implementation.md``): DeepEP's
    hierarchical data path - one RDMA copy per (token, destination node) to the GPU of that node on the
    sender's local index, which fans it out over NVLink once per destination GPU; same-node
    destinations straight over NVLink; combine the reverse, pre-reduced inside the node before the
    RDMA hop - with every NVLink copy made by the SMs of a persistent kernel (TMA loads and stores):
    those flows also cross their sender's SM link, ``1 + sm_message_bytes / bytes_per_copy`` bytes of
    it per byte (the per-message cost of an SM on top of its streaming rate). RDMA bytes leave from a
    registered buffer by the NIC's own DMA (the SMs only post them)."""
    plan = build_phase(
        "deepep",
        phase,
        pairs=pairs,
        nic=nic,
        nvlink=nvlink,
        bytes_per_copy=bytes_per_copy,
        gpus_per_node=gpus_per_node,
    )
    plan.sm_coef = 1.0 + sm_message_bytes / bytes_per_copy if bytes_per_copy > 0 else 1.0
    return plan


def _with_sm_link(topo: Topology, route: Route, src: int, coef: float) -> Route:
    """``route`` plus GPU ``src``'s SM link with coefficient ``coef``."""
    sm_link = topo._ids.get(f"sm/{src}")
    if sm_link is None:  # the GPU type has no SM term (sm_copy_gbytes_per_s 0): nothing binds there
        return route
    return Route(
        np.append(route.links, sm_link).astype(np.int64),
        np.append(route.coefs, coef),
        route.latency_us,
    )


@dataclass
class PhaseRun:
    """What happened in one phase: per-GPU send start and receive completion times, in us."""

    name: str
    done: list[simpy.Event]
    start_us: np.ndarray
    end_us: np.ndarray
    flows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    flow_ids: list[int] = field(default_factory=list)  # the network flows it started

    @property
    def span_us(self) -> float:
        """First GPU's start to last GPU's completion."""
        started = self.start_us[np.isfinite(self.start_us)]
        return float(self.end_us.max() - started.min()) if started.size else 0.0

    @property
    def collective_us(self) -> float:
        """The phase as one collective, as the evaluator times it: from the moment the last GPU joined
        to the last GPU's completion (GPUs that join early and finish early overlap the phase before)."""
        started = self.start_us[np.isfinite(self.start_us)]
        return float(max(self.end_us.max() - started.max(), 0.0)) if started.size else 0.0


class _PhaseDriver:
    """One phase while it plays: bytes received per GPU, and each relay's forwarding ledger.

    A relay r forwards ``stage2[r, d]`` to d as its stage-1 data lands: ``released[r, d]`` is what it
    may forward so far, ``pending[r, d]`` what is released but not yet sent, ``inflight[r, d]`` whether
    a send r -> d is under way (one at a time per pair, as a forwarder's channel works).
    """

    def __init__(
        self,
        env: simpy.Environment,
        net: FluidNetwork,
        topo: Topology,
        plan: PhasePlan,
        chunks: int,
    ) -> None:
        G = plan.direct.shape[0]
        self.env, self.net, self.topo, self.plan, self.chunks = env, net, topo, plan, chunks
        self.gpn = topo.gpn
        self.expected = plan.incoming_bytes()
        self.got = np.zeros(G)
        self.run = PhaseRun(
            plan.name, [env.event() for _ in range(G)], np.full(G, np.inf), np.zeros(G)
        )
        s1 = plan.stage1
        self.relay_in = s1.sum(axis=0) if s1 is not None else np.zeros(G)
        self.own = plan.own if plan.own is not None else np.zeros(G)
        self.arrived = np.zeros(G)
        self.released = np.zeros((G, G))
        self.pending = np.zeros((G, G))
        self.inflight = np.zeros((G, G), dtype=bool)
        self.s2 = plan.stage2 if plan.stage2 is not None else np.zeros((G, G))
        self.s2_targets = [np.flatnonzero(self.s2[r]).tolist() for r in range(G)]
        self.s2_chunk = self.s2 / max(chunks, 1)

    def deliver(self, dst: int, bytes_: float) -> None:
        """``bytes_`` reached their final destination ``dst``; fire ``done[dst]`` once all have."""
        run = self.run
        self.got[dst] += bytes_
        if not run.done[dst].triggered and self.got[dst] >= self.expected[dst] * (1 - _TOL):
            run.end_us[dst] = self.env.now
            run.done[dst].succeed()

    def send(
        self,
        src: int,
        dst: int,
        bytes_: float,
        direct_nic: bool,
        on_done: Any,
        on_sent: Any = None,
        rdma: bool = False,
    ) -> None:
        """One flow src -> dst; ``on_done(bytes_)`` when it lands, ``on_sent()`` when it has left."""
        if rdma and self.plan.nvlink_in_node and src // self.gpn == dst // self.gpn:
            rdma = False  # a peer in the NVLink domain: a warp copy over NVLink
        route = self.topo.route(src, dst, direct_nic=direct_nic, rdma=rdma)
        if self.plan.sm_coef > 0 and src != dst and src // self.gpn == dst // self.gpn:
            route = _with_sm_link(self.topo, route, src, self.plan.sm_coef)
        fid = self.net.num_flows
        sent, done = self.net.transfer(
            route.links,
            bytes_,
            coefs=route.coefs,
            latency_us=route.latency_us + self.plan.overhead_us,
        )
        if self.net.num_flows > fid:  # a GPU-local copy never enters the network
            self.run.flow_ids.append(fid)
        self.run.flows += 1
        done.callbacks.append(lambda _e: on_done(bytes_))
        if on_sent is not None:
            sent.callbacks.append(lambda _e: on_sent())

    def launch(self, r: int, d: int) -> None:
        """Relay r sends what it holds for d, unless a send r -> d is under way or too little waits."""
        amount = self.pending[r, d]
        if amount <= 0 or self.inflight[r, d]:
            return
        # the forwarder moves data on in chunks, not byte by byte: wait for a chunk's worth (or the rest)
        if amount < self.s2_chunk[r, d] * (1 - _TOL) and self.released[r, d] < self.s2[r, d] * (
            1 - _TOL
        ):
            return
        self.pending[r, d] = 0.0
        self.inflight[r, d] = True

        def sent_cb() -> None:
            self.inflight[r, d] = False
            self.launch(r, d)

        self.send(r, d, amount, True, lambda b, d=d: self.deliver(d, b), sent_cb)

    def relay_arrive(self, r: int, bytes_: float) -> None:
        """Stage-1 ``bytes_`` landed on relay r: release the matching share of its stage-2 sends
        (pipelined: as they land; store-and-forward: all at once when everything has)."""
        self.arrived[r] += bytes_
        relay_in = self.relay_in[r]
        if (
            self.own[r] > 0
        ):  # the share of the relay's own copies in what arrived (all of it in the end)
            self.deliver(r, bytes_ * self.own[r] / relay_in)
        complete = self.arrived[r] >= relay_in * (1 - _TOL)
        if self.plan.relay == "store-and-forward" and not complete:
            return
        for d in self.s2_targets[r]:
            full = self.s2[r, d]
            target = full if complete else full * min(self.arrived[r] / relay_in, 1.0)
            add = target - self.released[r, d]
            if add > 0:
                self.released[r, d] = target
                self.pending[r, d] += add
                self.launch(r, d)

    def stage1_chain(self, s: int, r: int, total: float, pieces: int) -> None:
        """Send ``total`` stage-1 bytes s -> r in ``pieces``, each once the one before has left."""
        piece = total / pieces
        left = [pieces]

        def next_piece() -> None:
            if left[0] == 0:
                return
            left[0] -= 1
            self.send(s, r, piece, True, lambda b: self.relay_arrive(r, b), next_piece)

        next_piece()

    def start(self, s: int) -> None:
        """GPU s is ready: its direct sends and its stage-1 sends to relays go out."""
        plan = self.plan
        self.run.start_us[s] = self.env.now
        for d in np.flatnonzero(plan.direct[s]).tolist():
            self.send(
                s,
                d,
                float(plan.direct[s, d]),
                False,
                lambda b, d=d: self.deliver(d, b),
                rdma=plan.rdma,
            )
        if plan.stage1 is not None:
            for r in np.flatnonzero(plan.stage1[s]).tolist():
                pieces = self.chunks if plan.relay == "pipelined" else 1
                self.stage1_chain(s, r, float(plan.stage1[s, r]), pieces)
        if plan.stage2 is not None and self.relay_in[s] <= 0:
            self.relay_arrive(
                s, 0.0
            )  # a relay with nothing coming in (cannot happen for stage2 > 0)


def run_phase(
    env: simpy.Environment,
    net: FluidNetwork,
    topo: Topology,
    plan: PhasePlan,
    ready: Sequence[simpy.Event],
    *,
    chunks: int = 8,
) -> PhaseRun:
    """Start ``plan``'s flows as each source GPU becomes ``ready``; ``done[g]`` fires when GPU g has
    received everything addressed to it. ``chunks``: pieces a pipelined relay's first stage is cut into."""
    driver = _PhaseDriver(env, net, topo, plan, chunks)
    run = driver.run
    G = plan.direct.shape[0]
    for s in range(G):
        when(ready[s], lambda s=s: driver.start(s))
    for g in range(G):
        if driver.expected[g] <= 0:
            # nothing to receive: complete as soon as the GPU itself is ready
            when(ready[g], lambda g=g: _finish_empty(run, g, env))
    return run


def when(event: simpy.Event, fn: Any) -> None:
    """Call ``fn()`` once ``event`` has fired (now, if it already has been processed)."""
    if event.processed:
        fn()
    else:
        event.callbacks.append(lambda _e: fn())


def _finish_empty(run: PhaseRun, gpu: int, env: simpy.Environment) -> None:
    if not run.done[gpu].triggered:
        run.end_us[gpu] = env.now
        run.done[gpu].succeed()
