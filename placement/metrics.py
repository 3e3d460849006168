"""The one metrics module: what a plan does to load, bytes and time, used by every other component.

For a workload (trace or load-only), a plan, a cluster and an execution mode it computes, per MoE layer:

* per-GPU load: (token, expert) assignments each GPU computes, and max/mean;
* dispatch and combine token copies per GPU pair with DeepEP-style deduplication: a token is sent once
  per destination GPU; across nodes once per destination node, over the NIC to the GPU with the sender's
  local index (the forwarder), then fanned out over NVLink; combine is the reverse, reduced at the
  forwarder;
* intra- versus inter-node bytes, the busiest NIC's bytes;
* an analytic layer time: roofline expert compute plus bottleneck-link communication.

Execution modes: ``standard`` (dispatch from the token's home GPU, combine back to it) and ``coherent``
(ExFlow: the token starts at its home GPU and continues on the GPU of its top-1 expert; dispatch goes from
where the token is, combine to its top-1 expert's GPU, where it stays).

Replica choice (the same everywhere, :class:`ReplicaRouter`) follows a *dispatch rule*
(:mod:`moe_placement.dispatch`): by default the project's share-aware router, under which a token takes the
*nearest* replica of its expert (on its own GPU, then its own node) while that replica has capacity left
under its planned share of the expert's tokens, otherwise the replicas with the *most capacity left*; no
serving engine implements that router today. ``engine="sglang" | "vllm" | "trtllm"`` applies that engine's
own rule instead. Either way the rule gives shares per (home GPU, expert) over the replicas, and each token
draws its replica from them by a deterministic hash of its identity; load-only inputs use the shares as
expectations. ``engine=None`` means the engine the plan was solved for (its provenance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe_placement import timing
from moe_placement.cluster import ClusterSpec
from moe_placement.dispatch import (
    SHARE,
    check_engine,
    dispatch_shares,
    engine_table,
    plan_engine,
)
from moe_placement.dispatch import (
    replica_split as replica_split,  # re-exported: the share-aware router lives in dispatch
)
from moe_placement.errors import PlacementError
from moe_placement.plan import Plan
from moe_placement.workload import Workload, home_gpus

MODES = ("standard", "coherent")
DEFAULT_TOKENS_PER_GPU = 4096


def _token_uniform(seq_id: np.ndarray, pos: np.ndarray, layer: int, expert: int) -> np.ndarray:
    """A deterministic uniform [0, 1) number per (token, layer, expert): splitmix64 of the token's identity."""
    with np.errstate(over="ignore"):
        x = (
            np.asarray(seq_id).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.asarray(pos).astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
            + np.uint64(layer * 65537 + expert + 1) * np.uint64(0x94D049BB133111EB)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class ReplicaRouter:
    """The replica each token uses, the same everywhere (evaluator, simulator, executor).

    Policy: per (home GPU, expert), the token stream is split over the expert's replicas by the dispatch
    rule of ``engine`` (:func:`moe_placement.dispatch.dispatch_shares`; default the share-aware router:
    nearest replica while it has capacity under its planned share, then the replicas with the most
    capacity left); each token picks its replica from that split by a deterministic hash of its identity
    (sequence, position), so realised loads follow the rule's shares.
    """

    def __init__(self, plan: Plan, demand: np.ndarray, engine: str = SHARE) -> None:
        self.plan = plan
        self.engine = check_engine(engine)
        log2phy = plan.log2phy()
        cnt = plan.logcnt()
        self.primary = log2phy[:, :, 0]
        self.replicated: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        table = engine_table(plan, self.engine)
        for layer in range(plan.num_layers):
            per_layer: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            replicated = np.flatnonzero(cnt[layer] > 1)
            if replicated.size:
                D = dispatch_shares(plan, layer, self.engine, demand[layer], table)
                for expert in map(int, replicated):
                    slots = log2phy[layer, expert, : cnt[layer, expert]]
                    per_layer[expert] = (slots, np.cumsum(D[:, slots], axis=1))
            self.replicated.append(per_layer)
        self.dealt: dict[tuple[int, int], np.ndarray] = {}  # TensorRT-LLM: entries dealt per rank

    def _round_robin(self, layer: int, expert: int, src: np.ndarray, replicas: int) -> np.ndarray:
        """Replica index of each entry (in order) under a per-rank round-robin from the rank's index."""
        G = self.plan.num_gpus
        dealt = self.dealt.setdefault((layer, expert), np.zeros(G, dtype=np.int64))
        order = np.argsort(src, kind="stable")
        sorted_src = src[order]
        first = np.searchsorted(sorted_src, sorted_src, side="left")
        occurrence = np.empty(src.size, dtype=np.int64)
        occurrence[order] = np.arange(src.size) - first + dealt[sorted_src]
        dealt += np.bincount(src, minlength=G)
        return (src + occurrence) % replicas

    def slots(
        self, layer: int, src: np.ndarray, ids: np.ndarray, seq_id: np.ndarray, pos: np.ndarray
    ) -> np.ndarray:
        """Slot of each chosen expert, ``[n, k]``, for tokens at GPUs ``src[n]`` choosing ``ids[n, k]``."""
        out = self.primary[layer][ids]
        k = ids.shape[1]
        for expert, (slots, cum) in self.replicated[layer].items():
            rows, cols = np.nonzero(ids == expert)
            if rows.size == 0:
                continue
            if self.engine == "vllm":
                # vLLM's own rule: replica = (flat position of the (token, k) entry in the rank's batch)
                # modulo the replica count; the token's place in its batch is unknown, so it is drawn
                # (one draw per token, the same in every layer); its column in the top-k is the trace's
                batch_index = (_token_uniform(seq_id[rows], pos[rows], 0, -1) * (1 << 30)).astype(
                    np.int64
                )
                out[rows, cols] = slots[(batch_index * k + cols) % slots.size]
                continue
            if self.engine == "trtllm":
                # TensorRT-LLM's own rule: each rank deals an expert's entries round-robin over its
                # replicas, starting at its EP rank (one running count per rank, in the trace's order)
                out[rows, cols] = slots[self._round_robin(layer, expert, src[rows], slots.size)]
                continue
            u = _token_uniform(seq_id[rows], pos[rows], layer, expert)
            pick = (u[:, None] >= cum[src[rows]]).sum(axis=1)
            out[rows, cols] = slots[np.minimum(pick, slots.size - 1)]
        return out


@dataclass
class PairCopies:
    """Token copies between GPU pairs for one phase: ``nvlink[src, dst]``, ``nic[src, dst]``, ``[gpus, gpus]``."""

    nvlink: np.ndarray
    nic: np.ndarray
    local: float = 0.0

    def __iadd__(self, other: PairCopies) -> PairCopies:
        self.nvlink += other.nvlink
        self.nic += other.nic
        self.local += other.local
        return self

    def transposed(self) -> PairCopies:
        return PairCopies(self.nvlink.T.copy(), self.nic.T.copy(), self.local)


def dedup_copies(src: np.ndarray, dst: np.ndarray, num_gpus: int, gpus_per_node: int) -> PairCopies:
    """DeepEP-deduplicated dispatch copies from ``src[n]`` GPUs to each token's ``dst[n, k]`` GPUs."""
    n, k = dst.shape
    G, gpn = num_gpus, gpus_per_node
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    pairs = np.unique(rows * G + dst.ravel())
    row, gpu = pairs // G, pairs % G
    s = src[row]
    same_gpu = gpu == s
    s_node, g_node = s // gpn, gpu // gpn
    intra = (~same_gpu) & (g_node == s_node)
    nvlink = np.bincount(s[intra] * G + gpu[intra], minlength=G * G).astype(np.float64)
    remote = g_node != s_node
    nic = np.zeros(G * G)
    if remote.any():
        r_row, r_gpu, r_src = row[remote], gpu[remote], s[remote]
        forwarder = (r_gpu // gpn) * gpn + r_src % gpn
        node_pairs, first = np.unique(r_row * G + forwarder, return_index=True)
        del node_pairs
        nic = np.bincount(r_src[first] * G + forwarder[first], minlength=G * G).astype(np.float64)
        fan = r_gpu != forwarder
        nvlink += np.bincount(forwarder[fan] * G + r_gpu[fan], minlength=G * G)
    return PairCopies(nvlink.reshape(G, G), nic.reshape(G, G), float(same_gpu.sum()))


def gpu_pair_copies(src: np.ndarray, dst: np.ndarray, num_gpus: int) -> np.ndarray:
    """Token copies per GPU pair ``[gpus, gpus]`` deduplicated per destination GPU only (no node-level
    forwarding): what a direct pairwise all-to-all moves. The diagonal holds GPU-local copies."""
    n, k = dst.shape
    G = num_gpus
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    pairs = np.unique(rows * G + dst.ravel())
    return (
        np.bincount(src[pairs // G] * G + pairs % G, minlength=G * G)
        .astype(np.float64)
        .reshape(G, G)
    )


def _miss_gpu(
    plan: Plan, layer: int, load: np.ndarray, num_tokens: float, D: np.ndarray
) -> np.ndarray:
    """``[sources, gpus]``: probability that a token from each source GPU chooses no slot on each GPU,
    each slot chosen independently with probability ``load * D[src, slot] / tokens`` (the load-only
    estimate; ``D`` the dispatch shares, :func:`moe_placement.dispatch.dispatch_shares`)."""
    p_slot = np.clip(load[plan.phy2log[layer]][None, :] * D / max(num_tokens, 1.0), 0, 1)
    miss = np.ones((plan.num_gpus, plan.num_gpus))
    np.multiply.at(miss.T, plan.slot_gpu(), (1.0 - p_slot).T)
    return miss


def _load_only_shares(plan: Plan, layer: int, D: np.ndarray | None) -> np.ndarray:
    """The dispatch shares ``[sources, slots]``; ``None``: the plan's shares from every source."""
    if D is not None:
        return D
    return np.broadcast_to(plan.shares()[layer], (plan.num_gpus, plan.num_slots))


def expected_copies_load_only(
    plan: Plan, layer: int, load: np.ndarray, num_tokens: float, D: np.ndarray | None = None
) -> PairCopies:
    """Expected dispatch copies when only loads are known: tokens spread evenly over home GPUs, each
    slot chosen independently with probability ``load * share / tokens`` (an estimate, no co-activation),
    the share being the dispatch share from the token's home GPU (``D[src, slot]``; default the plan's)."""
    G, gpn = plan.num_gpus, plan.gpus_per_node
    nodes = G // gpn
    miss_gpu = _miss_gpu(plan, layer, load, num_tokens, _load_only_shares(plan, layer, D))
    hit_gpu = 1.0 - miss_gpu  # [src, gpu]
    hit_node = 1.0 - miss_gpu.reshape(G, nodes, gpn).prod(axis=2)  # [src, node]
    per_home = num_tokens / G
    node_of = np.arange(G) // gpn
    same_node = node_of[:, None] == node_of[None, :]
    nvlink = np.where(same_node, per_home * hit_gpu, 0.0)
    np.fill_diagonal(nvlink, 0.0)
    local = float(per_home * np.trace(hit_gpu))
    nic = np.zeros((G, G))
    for src in range(G):
        for node in range(nodes):
            if node == node_of[src]:
                continue
            fwd = node * gpn + src % gpn
            nic[src, fwd] = per_home * hit_node[src, node]
            # fan-out from the forwarder to the other GPUs of that node
            for dst in range(node * gpn, (node + 1) * gpn):
                if dst != fwd:
                    nvlink[fwd, dst] += per_home * hit_gpu[src, dst]
    return PairCopies(nvlink, nic, local)


def _expected_gpu_pairs_load_only(
    plan: Plan, layer: int, load: np.ndarray, num_tokens: float, D: np.ndarray | None = None
) -> np.ndarray:
    """Expected direct (per destination GPU) copies ``[gpus, gpus]`` under the independent-choice estimate."""
    G = plan.num_gpus
    miss_gpu = _miss_gpu(plan, layer, load, num_tokens, _load_only_shares(plan, layer, D))
    return (num_tokens / G) * (1.0 - miss_gpu)


def expected_hops_load_only(
    plan: Plan, layer: int, load: np.ndarray, num_tokens: float, D: np.ndarray | None = None
) -> tuple[float, float]:
    """Expected tokens that leave their home GPU (and their home node) when only loads are known, under the
    same independent-choice estimate as :func:`expected_copies_load_only`."""
    G, gpn = plan.num_gpus, plan.gpus_per_node
    miss_gpu = _miss_gpu(plan, layer, load, num_tokens, _load_only_shares(plan, layer, D))
    miss_node = miss_gpu.reshape(G, G // gpn, gpn).prod(axis=2)  # [src, node]
    home = np.arange(G)
    own_gpu = miss_gpu[home, home]
    own_node = miss_node[home, home // gpn]
    # no expert off the home GPU (node): every other GPU (node) missed
    stay_gpu = np.prod(miss_gpu, axis=1) / np.where(own_gpu > 0, own_gpu, 1.0)
    stay_node = np.prod(miss_node, axis=1) / np.where(own_node > 0, own_node, 1.0)
    per_home = num_tokens / G
    return float(per_home * (1.0 - stay_gpu).sum()), float(per_home * (1.0 - stay_node).sum())


@dataclass
class Evaluation:
    """Everything the evaluator measured. Arrays are per layer; bytes are for the workload as given,
    times for a step scaled to ``tokens_per_gpu`` tokens on every GPU (``scale`` = that over the trace)."""

    mode: str
    num_gpus: int
    gpus_per_node: int
    bytes_model: str
    gpu_load: np.ndarray  # [layers, gpus] assignments
    dispatch: list[PairCopies]
    combine: list[PairCopies]
    dispatch_bytes_per_copy: float
    combine_bytes_per_copy: float
    hops: (
        np.ndarray
    )  # [layers] tokens that changed GPU (coherent) or left their home GPU (standard)
    node_hops: np.ndarray  # [layers] of those, the ones that changed node
    compute_us: np.ndarray  # [layers, gpus]
    dispatch_us: np.ndarray  # [layers]
    combine_us: np.ndarray  # [layers]
    scale: float
    tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    # whose replica dispatch the loads and copies assume (moe_placement.dispatch.ENGINES)
    engine: str = SHARE
    # Per layer ``[gpus, gpus]`` copies deduplicated per destination GPU only (direct all-to-all), filled
    # when ``evaluate(..., gpu_pairs=True)``; ``None`` otherwise.
    dispatch_pairs: list[np.ndarray] | None = None
    combine_pairs: list[np.ndarray] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.gpu_load.shape[0])

    def max_load(self) -> np.ndarray:
        """``[layers]`` the busiest GPU's (token, expert) assignments: the one definition of "max_load"
        (reports, regress and what-if rows take its mean over layers)."""
        return self.gpu_load.max(axis=1)

    def mean_load(self) -> np.ndarray:
        """``[layers]`` the mean GPU's (token, expert) assignments."""
        return self.gpu_load.mean(axis=1)

    def max_over_mean(self) -> np.ndarray:
        """``[layers]`` max / mean GPU load (1 for a layer with no load)."""
        mean = self.mean_load()
        return np.where(mean > 0, self.max_load() / np.where(mean > 0, mean, 1), 1.0)

    def phase_bytes(self, phase: str) -> tuple[np.ndarray, np.ndarray]:
        """(intra-node NVLink bytes, inter-node NIC bytes) per layer for ``dispatch`` or ``combine``."""
        copies, per = (
            (self.dispatch, self.dispatch_bytes_per_copy)
            if phase == "dispatch"
            else (self.combine, self.combine_bytes_per_copy)
        )
        intra = np.array([c.nvlink.sum() * per for c in copies])
        inter = np.array([c.nic.sum() * per for c in copies])
        return intra, inter

    def busiest_nic_bytes(self) -> np.ndarray:
        """Per layer, the most bytes any one GPU's NIC sends or receives over dispatch + combine."""
        out = []
        for d, c in zip(self.dispatch, self.combine, strict=True):
            send = (
                d.nic.sum(axis=1) * self.dispatch_bytes_per_copy
                + c.nic.sum(axis=1) * self.combine_bytes_per_copy
            )
            recv = (
                d.nic.sum(axis=0) * self.dispatch_bytes_per_copy
                + c.nic.sum(axis=0) * self.combine_bytes_per_copy
            )
            out.append(max(send.max(), recv.max()))
        return np.array(out)

    def step_time(self) -> timing.StepTime:
        """Per-layer times as the one timing type (the analytic model: nothing overlaps)."""
        return timing.step_from_columns(
            self.dispatch_us, self.compute_us.max(axis=1), self.combine_us, "evaluator"
        )

    def layer_us(self) -> np.ndarray:
        return self.step_time().column("layer_us")

    def per_layer(self) -> list[dict[str, float]]:
        """One JSON row per layer (the ``layers`` of ``placement evaluate --json``): loads, bytes, times."""
        mom = self.max_over_mean()
        max_load, mean_load = self.max_load(), self.mean_load()
        d_intra, d_inter = self.phase_bytes("dispatch")
        c_intra, c_inter = self.phase_bytes("combine")
        nic = self.busiest_nic_bytes()
        step = self.step_time()
        rows = []
        for layer, t in enumerate(step.layers):
            rows.append(
                {
                    "layer": layer,
                    "max_load": float(max_load[layer]),
                    "mean_load": float(mean_load[layer]),
                    "max_over_mean": float(mom[layer]),
                    "dispatch_intra_bytes": float(d_intra[layer]),
                    "dispatch_inter_bytes": float(d_inter[layer]),
                    "combine_intra_bytes": float(c_intra[layer]),
                    "combine_inter_bytes": float(c_inter[layer]),
                    "busiest_nic_bytes": float(nic[layer]),
                    "hops": float(self.hops[layer]),
                    "node_hops": float(self.node_hops[layer]),
                    "dispatch_us": t.dispatch_us,
                    "compute_us": t.compute_us,
                    "combine_us": t.combine_us,
                    "layer_us": t.layer_us,
                }
            )
        return rows

    def summary(self) -> dict[str, float]:
        """Totals over the layers (the ``summary`` of ``placement evaluate --json``)."""
        mom = self.max_over_mean()
        d_intra, d_inter = self.phase_bytes("dispatch")
        c_intra, c_inter = self.phase_bytes("combine")
        step = self.step_time()
        totals = step.totals()
        return {
            "mean_max_over_mean": float(mom.mean()),
            "worst_max_over_mean": float(mom.max()),
            "intra_node_bytes": float(d_intra.sum() + c_intra.sum()),
            "inter_node_bytes": float(d_inter.sum() + c_inter.sum()),
            "dispatch_bytes": float(d_intra.sum() + d_inter.sum()),
            "combine_bytes": float(c_intra.sum() + c_inter.sum()),
            "busiest_nic_bytes": float(self.busiest_nic_bytes().sum()),
            "hops": float(self.hops.sum()),
            "node_hops": float(self.node_hops.sum()),
            "dispatch_us": totals["dispatch_us"],
            "compute_us": totals["compute_us"],
            "combine_us": totals["combine_us"],
            "moe_time_us": step.moe_time_us,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "num_gpus": self.num_gpus,
            "gpus_per_node": self.gpus_per_node,
            "bytes_model": self.bytes_model,
            "engine": self.engine,
            "tokens": self.tokens,
            "time_scale": self.scale,
            "summary": self.summary(),
            "layers": self.per_layer(),
            **self.extra,
        }


def _phase_us(
    copies: PairCopies, bytes_per_copy: float, scale: float, cluster: ClusterSpec
) -> float:
    """One phase's time (:func:`moe_placement.timing.phase_us`) from its token copies."""
    per = bytes_per_copy * scale
    return timing.phase_us(copies.nvlink * per, copies.nic * per, cluster)


def check_compatible(plan: Plan, cluster: ClusterSpec, workload: Workload) -> None:
    if plan.num_gpus != cluster.num_gpus or plan.gpus_per_node != cluster.gpus_per_node:
        raise PlacementError(
            f"plan is for {plan.num_gpus} GPUs ({plan.gpus_per_node} per node) but the cluster has "
            f"{cluster.num_gpus} ({cluster.gpus_per_node} per node); pass --gpus/--gpus-per-node"
        )
    if plan.num_experts != workload.num_experts or plan.num_layers != workload.num_layers:
        raise PlacementError(
            f"plan covers {plan.num_layers} layers x {plan.num_experts} experts but the trace has "
            f"{workload.num_layers} x {workload.num_experts}"
        )


def evaluate(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    mode: str = "standard",
    tokens_per_gpu: int | None = DEFAULT_TOKENS_PER_GPU,
    chunks: Iterable[Any] | None = None,
    gpu_pairs: bool = False,
    engine: str | None = None,
) -> Evaluation:
    """Evaluate ``plan`` on ``workload``; per-token traces are streamed once (``workload.chunks()``).

    ``engine``: whose replica dispatch to apply (:mod:`moe_placement.dispatch`); ``None``: the engine
    the plan was solved for (its provenance), the share-aware router when it records none."""
    return evaluate_many(
        [plan],
        cluster,
        workload,
        mode=mode,
        tokens_per_gpu=tokens_per_gpu,
        chunks=chunks,
        gpu_pairs=gpu_pairs,
        engine=engine,
    )[0]


def evaluate_many(
    plans: Sequence[Plan],
    cluster: ClusterSpec,
    workload: Workload,
    *,
    mode: str = "standard",
    tokens_per_gpu: int | None = DEFAULT_TOKENS_PER_GPU,
    chunks: Iterable[Any] | None = None,
    gpu_pairs: bool = False,
    engine: str | None = None,
) -> list[Evaluation]:
    """Evaluate several plans of one cluster and workload in a single pass over the trace, each under
    ``engine``'s dispatch (``None``: each plan's own engine, see :func:`evaluate`)."""
    if mode not in MODES:
        raise PlacementError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    for plan in plans:
        check_compatible(plan, cluster, workload)
    if not workload.per_token and mode == "coherent":
        raise PlacementError(
            f"coherent mode needs per-token routing, but {workload.source} is load-only: give a Parquet trace"
        )
    tokens = max(int(workload.num_tokens), 1)
    engines = [plan_engine(plan) if engine is None else check_engine(engine) for plan in plans]
    tallies = [_Tally(plan, workload, gpu_pairs, e) for plan, e in zip(plans, engines, strict=True)]
    if workload.per_token:
        source = chunks if chunks is not None else workload.chunks()
        for chunk in source:
            for tally in tallies:
                tally.add_chunk(chunk, workload.home_policy, mode)
        bytes_model = "per-token (deduplicated)"
    else:
        for tally in tallies:
            tally.add_load_only(workload.load, float(tokens))
        bytes_model = "independent-choice estimate (load-only input)"
    return [t.finish(cluster, workload, mode, bytes_model, tokens, tokens_per_gpu) for t in tallies]


class _Tally:
    """One plan's running sums while the trace streams by (see :func:`evaluate_many`)."""

    def __init__(self, plan: Plan, workload: Workload, gpu_pairs: bool, engine: str) -> None:
        G, L = plan.num_gpus, plan.num_layers
        self.plan = plan
        self.engine = engine
        self.slot_gpu = plan.slot_gpu()
        self.dispatch = [PairCopies(np.zeros((G, G)), np.zeros((G, G))) for _ in range(L)]
        self.combine = [PairCopies(np.zeros((G, G)), np.zeros((G, G))) for _ in range(L)]
        self.hops = np.zeros(L)
        self.node_hops = np.zeros(L)
        self.gpu_load = np.zeros((L, G))
        self.d_pairs = [np.zeros((G, G)) for _ in range(L)] if gpu_pairs else None
        self.c_pairs = [np.zeros((G, G)) for _ in range(L)] if gpu_pairs else None
        self.router = (
            ReplicaRouter(plan, workload.demand(G), engine) if workload.per_token else None
        )

    def add_chunk(self, chunk: Any, home_policy: str, mode: str) -> None:
        """Route one chunk of complete tokens through every layer."""
        assert self.router is not None
        G, gpn = self.plan.num_gpus, self.plan.gpus_per_node
        ids = chunk.expert_ids
        cur = home_gpus(chunk.seq_id, chunk.pos, G, home_policy)
        for layer in range(self.plan.num_layers):
            slots = self.router.slots(layer, cur, ids[layer], chunk.seq_id, chunk.pos)
            gpus = self.slot_gpu[slots]
            self.gpu_load[layer] += np.bincount(gpus.ravel(), minlength=G)
            copies = dedup_copies(cur, gpus, G, gpn)
            self.dispatch[layer] += copies
            if self.d_pairs is not None and self.c_pairs is not None:
                self.d_pairs[layer] += gpu_pair_copies(cur, gpus, G)
                src_c = cur if mode == "standard" else gpus[:, 0]
                self.c_pairs[layer] += gpu_pair_copies(src_c, gpus, G).T
            if mode == "standard":
                self.combine[layer] += (
                    copies.transposed()
                )  # the reverse path, reduced at forwarders
                moved = (gpus != cur[:, None]).any(axis=1)
                self.hops[layer] += moved.sum()
                left_node = (gpus // gpn) != (cur // gpn)[:, None]
                self.node_hops[layer] += left_node.any(axis=1).sum()
            else:
                nxt = gpus[:, 0]
                self.combine[layer] += dedup_copies(nxt, gpus, G, gpn).transposed()
                self.hops[layer] += (nxt != cur).sum()
                self.node_hops[layer] += ((nxt // gpn) != (cur // gpn)).sum()
                cur = nxt

    def add_load_only(self, load: np.ndarray, tokens: float) -> None:
        """Expected loads, copies and hops from ``load[layers, experts]`` alone."""
        plan = self.plan
        shares = plan.shares()
        table = engine_table(plan, self.engine)
        for layer in range(plan.num_layers):
            # tokens spread evenly over home GPUs: the share-aware router keeps the plan's shares from
            # every source; an engine's rule may split differently by source (SGLang: own GPU first)
            D = (
                None
                if self.engine == SHARE
                else dispatch_shares(plan, layer, self.engine, None, table)
            )
            slot_share = shares[layer] if D is None else D.mean(axis=0)
            slot_load = load[layer][plan.phy2log[layer]] * slot_share
            self.gpu_load[layer] = np.bincount(
                self.slot_gpu, weights=slot_load, minlength=plan.num_gpus
            )
            copies = expected_copies_load_only(plan, layer, load[layer], tokens, D)
            self.dispatch[layer] = copies
            self.combine[layer] = copies.transposed()
            if self.d_pairs is not None and self.c_pairs is not None:
                direct = _expected_gpu_pairs_load_only(plan, layer, load[layer], tokens, D)
                self.d_pairs[layer] = direct
                self.c_pairs[layer] = direct.T.copy()
            self.hops[layer], self.node_hops[layer] = expected_hops_load_only(
                plan, layer, load[layer], tokens, D
            )

    def finish(
        self,
        cluster: ClusterSpec,
        workload: Workload,
        mode: str,
        bytes_model: str,
        tokens: int,
        tokens_per_gpu: int | None,
    ) -> Evaluation:
        """Times for a step of ``tokens_per_gpu`` tokens per GPU from the sums."""
        plan, L, G = self.plan, self.plan.num_layers, self.plan.num_gpus
        shape = workload.shape
        scale = 1.0 if tokens_per_gpu is None else tokens_per_gpu * G / tokens
        d_bpc = shape.hidden_size * shape.dispatch_bytes_per_elem
        c_bpc = shape.hidden_size * shape.combine_bytes_per_elem
        active = np.zeros((L, G))
        for layer in range(L):
            np.add.at(active[layer], self.slot_gpu, workload.load[layer][plan.phy2log[layer]] > 0)
        return Evaluation(
            mode=mode,
            num_gpus=G,
            gpus_per_node=plan.gpus_per_node,
            bytes_model=bytes_model,
            gpu_load=self.gpu_load,
            dispatch=self.dispatch,
            combine=self.combine,
            dispatch_bytes_per_copy=d_bpc,
            combine_bytes_per_copy=c_bpc,
            hops=self.hops,
            node_hops=self.node_hops,
            compute_us=timing.compute_us(self.gpu_load * scale, active, shape, cluster),
            dispatch_us=np.array([_phase_us(d, d_bpc, scale, cluster) for d in self.dispatch]),
            combine_us=np.array([_phase_us(c, c_bpc, scale, cluster) for c in self.combine]),
            scale=scale,
            tokens=tokens,
            dispatch_pairs=self.d_pairs,
            combine_pairs=self.c_pairs,
            engine=self.engine,
        )
