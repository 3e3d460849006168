"""Replay routing: which rows each rank sends, receives and computes, per MoE layer (pure NumPy).

The driver turns a plan and a per-token trace into per-rank instructions; the workers only execute them.
The home-rank mapping (:func:`moe_placement.workload.home_gpus`), the replica choice
(:class:`moe_placement.metrics.ReplicaRouter`) and the DeepEP-style deduplication are exactly the evaluator's,
so the rows the workers move equal the evaluator's token copies pair by pair:

* a token is sent once per destination GPU (never once per expert);
* inside a node, home -> destination directly (stage D1, the evaluator's NVLink copies);
* across nodes once per destination node, home -> the GPU of that node with the home's local index (the
  forwarder, stage D1, the evaluator's NIC copies), then forwarder -> the other destination GPUs of that
  node (stage D2, the evaluator's NVLink fan-out copies);
* combine is the exact reverse (D2 reversed, partial sums added at the forwarder, then D1 reversed).

Abbreviations: G ranks (= plan GPUs), gpn GPUs per node, spg slots per GPU, n tokens, k top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.metrics import ReplicaRouter
from moe_placement.plan import Plan
from moe_placement.workload import home_gpus


@dataclass(frozen=True)
class RankLayer:
    """What one rank does for one MoE layer (or one chunk of it).

    Row buffers on the rank: ``X`` (its ``n_home`` home tokens), ``R1`` (rows received in D1, grouped by
    source rank in rank order), ``R2`` (rows received in D2, likewise); the working set is
    ``W = [X; R1; R2]``.

    * ``d1_send_idx`` rows of ``X`` sent in D1, grouped by destination (``d1_send_counts[G]``);
      ``d1_recv_counts[G]`` rows expected from each source.
    * ``d2_send_idx`` rows of ``R1`` forwarded in D2 (``d2_send_counts[G]``), ``d2_recv_counts[G]``.
    * ``comp_rows[A]`` rows of ``W`` each local slot computes, sorted by local slot
      (``slot_offsets[spg + 1]``), gate weight ``comp_weight[A]``.
    * ``home_tokens[n_home]`` trace index of each home token (for reference checks).
    """

    n_home: int
    d1_send_idx: np.ndarray
    d1_send_counts: np.ndarray
    d1_recv_counts: np.ndarray
    d2_send_idx: np.ndarray
    d2_send_counts: np.ndarray
    d2_recv_counts: np.ndarray
    comp_rows: np.ndarray
    comp_weight: np.ndarray
    slot_offsets: np.ndarray
    home_tokens: np.ndarray

    @property
    def n_r1(self) -> int:
        return int(self.d1_recv_counts.sum())

    @property
    def n_r2(self) -> int:
        return int(self.d2_recv_counts.sum())

    @property
    def n_work(self) -> int:
        return self.n_home + self.n_r1 + self.n_r2

    @property
    def has_stage2(self) -> bool:
        return bool(self.d2_send_counts.any() or self.d2_recv_counts.any())


@dataclass(frozen=True)
class LayerRouting:
    """One layer for every rank, plus the copies it moves: ``sent_copies[src, dst]`` rows (D1 + D2)."""

    ranks: list[RankLayer]
    sent_copies: np.ndarray
    stage2: bool


def _grouped(
    keys: np.ndarray, values: np.ndarray, num_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """``values`` sorted by (key, value) and the count per key in ``[0, num_groups)``."""
    order = np.lexsort((values, keys))
    return values[order], np.bincount(keys, minlength=num_groups).astype(np.int64)


def route_layer(
    home: np.ndarray,
    slots: np.ndarray,
    weights: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    slots_per_gpu: int,
    token_ids: np.ndarray | None = None,
) -> LayerRouting:
    """Per-rank instructions for tokens with home ``home[n]`` using global slots ``slots[n, k]``.

    ``weights[n, k]`` are the gate weights applied when partial results are summed.
    """
    G, spg = num_gpus, slots_per_gpu
    tok = np.arange(slots.shape[0], dtype=np.int64)
    token_ids = tok if token_ids is None else np.asarray(token_ids, dtype=np.int64)
    dst_gpu = slots // spg
    copies = _copies(home, dst_gpu, G, gpus_per_node)
    home_pos, n_home = _home_positions(home, G)
    row_of = _working_rows(home, copies, n_home, G)
    ranks: list[RankLayer] = []
    for r in range(G):
        n_h = int(n_home[r])
        send1, cnt1, recv1 = _stage(copies.d1_tok, copies.d1_src, copies.d1_dst, r, G)
        send2_tok, cnt2, recv2 = _stage(copies.d2_tok, copies.d2_src, copies.d2_dst, r, G)
        # D2 forwards rows of R1: a forwarded token's row in W minus the X part.
        send2 = np.array([row_of[r][int(t)] - n_h for t in send2_tok], dtype=np.int64)
        comp_rows, comp_weight, offsets = _local_compute(r, slots, dst_gpu, weights, row_of[r], spg)
        ranks.append(
            RankLayer(
                n_home=n_h,
                d1_send_idx=home_pos[send1],
                d1_send_counts=cnt1,
                d1_recv_counts=recv1,
                d2_send_idx=send2,
                d2_send_counts=cnt2,
                d2_recv_counts=recv2,
                comp_rows=comp_rows,
                comp_weight=comp_weight,
                slot_offsets=offsets,
                home_tokens=token_ids[np.flatnonzero(home == r)],
            )
        )
    return LayerRouting(ranks=ranks, sent_copies=copies.sent(G), stage2=bool(copies.d2_tok.size))


@dataclass(frozen=True)
class _Copies:
    """The row copies one layer moves, one entry per copy: stage D1 ``(d1_tok, d1_src, d1_dst)`` and
    stage D2 ``(d2_tok, d2_src, d2_dst)`` (token index, source rank, destination rank)."""

    d1_tok: np.ndarray
    d1_src: np.ndarray
    d1_dst: np.ndarray
    d2_tok: np.ndarray
    d2_src: np.ndarray
    d2_dst: np.ndarray

    def sent(self, G: int) -> np.ndarray:
        """``[G, G]`` rows moved from each source to each destination rank (D1 + D2)."""
        sent = np.zeros((G, G), dtype=np.int64)
        np.add.at(sent, (self.d1_src, self.d1_dst), 1)
        np.add.at(sent, (self.d2_src, self.d2_dst), 1)
        return sent


def _copies(home: np.ndarray, dst_gpu: np.ndarray, G: int, gpn: int) -> _Copies:
    """The deduplicated copies of tokens with home ``home[n]`` sent to GPUs ``dst_gpu[n, k]``."""
    n, k = dst_gpu.shape
    tok = np.arange(n, dtype=np.int64)
    # Unique (token, destination GPU) pairs: the deduplication.
    pair = np.unique(np.repeat(tok, k) * G + dst_gpu.ravel())
    p_tok, p_gpu = pair // G, pair % G
    p_src = home[p_tok]
    same_node = (p_gpu // gpn) == (p_src // gpn)
    direct = same_node & (p_gpu != p_src)
    remote = ~same_node
    fwd = (p_gpu // gpn) * gpn + p_src % gpn
    # D1 copies: direct (token -> destination) and NIC (token -> forwarder, once per node).
    d1_tok = np.concatenate([p_tok[direct], p_tok[remote]])
    d1_dst = np.concatenate([p_gpu[direct], fwd[remote]])
    d1_key = np.unique(d1_tok * G + d1_dst)
    d1_tok, d1_dst = d1_key // G, d1_key % G
    # D2 copies: forwarder -> final destination inside the destination node.
    fan = remote & (p_gpu != fwd)
    return _Copies(
        d1_tok=d1_tok,
        d1_src=home[d1_tok],
        d1_dst=d1_dst,
        d2_tok=p_tok[fan],
        d2_src=fwd[fan],
        d2_dst=p_gpu[fan],
    )


def _home_positions(home: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Position of each home token inside its rank's X buffer (tokens keep trace order), and the
    number of home tokens per rank ``n_home[G]``."""
    home_pos = np.zeros(home.size, dtype=np.int64)
    n_home = np.bincount(home, minlength=G)
    for r in range(G):
        idx = np.flatnonzero(home == r)
        home_pos[idx] = np.arange(idx.size)
    return home_pos, n_home


def _received(tok: np.ndarray, src: np.ndarray, dst: np.ndarray, G: int) -> dict[int, np.ndarray]:
    """Tokens each rank receives in one stage, grouped by source in rank order, then by token."""
    order = np.lexsort((tok, src, dst))
    sorted_dst = dst[order]
    return {r: tok[order][sorted_dst == r] for r in range(G)}


def _working_rows(
    home: np.ndarray, copies: _Copies, n_home: np.ndarray, G: int
) -> dict[int, dict[int, int]]:
    """Row of each (token, rank) in that rank's working set W = [X; R1; R2]."""
    r1_tokens = _received(copies.d1_tok, copies.d1_src, copies.d1_dst, G)
    r2_tokens = _received(copies.d2_tok, copies.d2_src, copies.d2_dst, G)
    row_of: dict[int, dict[int, int]] = {r: {} for r in range(G)}
    for r in range(G):
        home_idx = np.flatnonzero(home == r)
        rows = row_of[r]
        for i, t in enumerate(home_idx):
            rows[int(t)] = i
        base = int(n_home[r])
        for i, t in enumerate(r1_tokens[r]):
            rows[int(t)] = base + i
        base += int(r1_tokens[r].size)
        for i, t in enumerate(r2_tokens[r]):
            rows[int(t)] = base + i
    return row_of


def _stage(
    tok: np.ndarray, src: np.ndarray, dst: np.ndarray, r: int, G: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank ``r``'s side of one stage: the tokens it sends sorted by (destination, token), the
    count per destination ``[G]`` and the count it receives from each source ``[G]``."""
    m = src == r
    send_tok, send_counts = _grouped(dst[m], tok[m], G)
    recv_counts = np.bincount(src[dst == r], minlength=G).astype(np.int64)
    return send_tok, send_counts, recv_counts


def _local_compute(
    r: int,
    slots: np.ndarray,
    dst_gpu: np.ndarray,
    weights: np.ndarray,
    rows: dict[int, int],
    spg: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (token, k) whose chosen slot is on rank ``r``: its row of W, its gate weight (float32)
    and the offsets of each local slot's rows ``[spg + 1]``, rows sorted by local slot."""
    t_idx, k_idx = np.nonzero(dst_gpu == r)
    local_slot = slots[t_idx, k_idx] - r * spg
    order = np.lexsort((t_idx, local_slot))
    t_idx, k_idx, local_slot = t_idx[order], k_idx[order], local_slot[order]
    comp_rows = np.array([rows[int(t)] for t in t_idx], dtype=np.int64)
    offsets = np.zeros(spg + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(local_slot, minlength=spg))
    return comp_rows, weights[t_idx, k_idx].astype(np.float32), offsets


@dataclass(frozen=True)
class Replay:
    """Everything the workers replay: ``layers[l][chunk]`` routing, the expert held by every slot
    ``phy2log[layers, slots]``, and the shapes the kernels use."""

    layers: list[list[LayerRouting]]
    phy2log: np.ndarray
    num_gpus: int
    slots_per_gpu: int
    hidden_size: int
    intermediate_size: int
    num_tokens: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def sent_copies(self, layer: int) -> np.ndarray:
        """Rows moved between rank pairs in the unchunked layer, ``[G, G]`` (D1 + D2)."""
        return self.layers[layer][0].sent_copies

    def for_rank(self, rank: int) -> list[list[RankLayer]]:
        """``[layers][1 + chunks]`` instructions for one rank: entry 0 the whole layer, then the chunks."""
        return [[routing.ranks[rank] for routing in layer] for layer in self.layers]


def build_replay(
    plan: Plan,
    expert_ids: np.ndarray,
    gate_weights: np.ndarray,
    seq_id: np.ndarray,
    pos: np.ndarray,
    demand: np.ndarray,
    *,
    home_policy: str,
    hidden_size: int,
    intermediate_size: int,
    chunks: int = 1,
) -> Replay:
    """Routing for ``expert_ids[layers, n, k]`` under ``plan``; ``demand[layers, gpus, experts]`` is the
    per-home demand the replica split is built from (the evaluator's ``workload.demand``).

    Entry 0 of each layer is the whole layer; entries 1..``chunks`` split every rank's home tokens into
    ``chunks`` contiguous pieces, for the pipelined (overlap) run.
    """
    if chunks < 1:
        raise PlacementError("--chunks must be >= 1")
    L, n, _k = expert_ids.shape
    if plan.num_layers != L:
        raise PlacementError(f"trace has {L} layers but the plan {plan.num_layers}")
    G = plan.num_gpus
    router = ReplicaRouter(plan, demand)
    home = home_gpus(seq_id, pos, G, home_policy)
    # Chunk of each token: its position among its home rank's tokens, cut into `chunks` pieces.
    chunk_of = np.zeros(n, dtype=np.int64)
    for r in range(G):
        idx = np.flatnonzero(home == r)
        if idx.size:
            chunk_of[idx] = np.arange(idx.size) * chunks // idx.size
    layers: list[list[LayerRouting]] = []
    for layer in range(L):
        slots = router.slots(layer, home, expert_ids[layer], seq_id, pos)
        w = gate_weights[layer]
        entries = [route_layer(home, slots, w, G, plan.gpus_per_node, plan.slots_per_gpu)]
        for c in range(chunks):
            sel = np.flatnonzero(chunk_of == c)
            entries.append(
                route_layer(
                    home[sel], slots[sel], w[sel], G, plan.gpus_per_node, plan.slots_per_gpu, sel
                )
            )
        layers.append(entries)
    return Replay(
        layers=layers,
        phy2log=np.asarray(plan.phy2log, dtype=np.int64),
        num_gpus=G,
        slots_per_gpu=plan.slots_per_gpu,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_tokens=n,
    )
