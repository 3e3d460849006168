"""The replayed MoE layer on one rank: dispatch, SwiGLU expert GEMMs, combine (torch.distributed).

Two schedules over the same :class:`~moe_placement.executor.routing.RankLayer` instructions:

* ``run_phased``: counts exchange (``notify``), dispatch, expert compute and combine one after the
  other, separated by barriers so that each phase's time is the time until the last rank finishes it
  (the simulator's sequential model: dispatch + slowest compute + combine);
* ``run_overlapped``: the rank's tokens cut into chunks, software-pipelined with asynchronous collectives
  (chunk i+1 is dispatched while chunk i computes; combines are in flight while later chunks compute).
  On CUDA the compute runs on a side stream while NCCL works on its own streams.

No Ray here: the kernels take an initialised process group, so they run under any launcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional

from moe_placement.executor.routing import RankLayer


def expert_seed(seed: int, layer: int, expert: int) -> int:
    """One seed per (layer, logical expert): every replica of an expert holds the same weights."""
    return (seed * 1_000_003 + layer * 65_537 + expert) % (2**63 - 1)


def expert_weights(
    seed: int,
    layer: int,
    expert: int,
    hidden: int,
    inter: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SwiGLU weights of one expert: gate ``[inter, hidden]``, up ``[inter, hidden]``, down ``[hidden, inter]``."""
    gen = torch.Generator().manual_seed(expert_seed(seed, layer, expert))
    scale_in, scale_out = hidden**-0.5, inter**-0.5
    gate = torch.randn(inter, hidden, generator=gen) * scale_in
    up = torch.randn(inter, hidden, generator=gen) * scale_in
    down = torch.randn(hidden, inter, generator=gen) * scale_out
    return gate.to(device, dtype), up.to(device, dtype), down.to(device, dtype)


def swiglu(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The routed expert FFN: ``down(silu(gate x) * up x)``; three GEMMs."""
    gate, up, down = w
    return functional.linear(
        functional.silu(functional.linear(x, gate)) * functional.linear(x, up), down
    )


def token_activations(
    seed: int, layer: int, rank: int, n: int, hidden: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Layer input of a rank's home tokens ``[n, hidden]`` (seeded, so a reference can recompute it)."""
    gen = torch.Generator().manual_seed(expert_seed(seed + 7, layer, 100_000 + rank))
    return torch.randn(n, hidden, generator=gen).to(device, dtype)


@dataclass
class DeviceLayer:
    """A :class:`RankLayer` moved to the device as tensors, split lists ready for the collectives."""

    info: RankLayer
    d1_send_idx: torch.Tensor
    d2_send_idx: torch.Tensor
    comp_rows: torch.Tensor
    comp_weight: torch.Tensor
    d1_send: list[int]
    d1_recv: list[int]
    d2_send: list[int]
    d2_recv: list[int]
    slot_bounds: list[tuple[int, int, int]]  # (local slot, start, end) of non-empty slots

    @classmethod
    def from_info(cls, info: RankLayer, dtype: torch.dtype, device: torch.device) -> DeviceLayer:
        off = info.slot_offsets
        bounds = [
            (s, int(off[s]), int(off[s + 1])) for s in range(len(off) - 1) if off[s + 1] > off[s]
        ]
        return cls(
            info=info,
            d1_send_idx=torch.as_tensor(info.d1_send_idx, dtype=torch.long, device=device),
            d2_send_idx=torch.as_tensor(info.d2_send_idx, dtype=torch.long, device=device),
            comp_rows=torch.as_tensor(info.comp_rows, dtype=torch.long, device=device),
            comp_weight=torch.as_tensor(info.comp_weight, device=device).to(dtype)[:, None],
            d1_send=[int(c) for c in info.d1_send_counts],
            d1_recv=[int(c) for c in info.d1_recv_counts],
            d2_send=[int(c) for c in info.d2_send_counts],
            d2_recv=[int(c) for c in info.d2_recv_counts],
            slot_bounds=bounds,
        )


def synthetic_compute_layer(
    rows_per_slot: list[int], seed: int, dtype: torch.dtype, device: torch.device
) -> tuple[DeviceLayer, int]:
    """A layer whose only work is compute (for calibration): slot s computes ``rows_per_slot[s]`` rows
    of a working set ``W`` 1.25x as large as the rows computed (top-k tokens reach several local slots,
    as in replays), gathered in increasing order as the routing lays them out. Returns the layer and
    the rows of ``W``."""
    rows = np.asarray(rows_per_slot, dtype=np.int64)
    n_work = max(int(rows.max(initial=0)), int(np.ceil(1.25 * rows.sum())), 1)
    rng = np.random.default_rng(seed)
    comp = [np.sort(rng.choice(n_work, size=int(r), replace=False)) for r in rows]
    none = np.zeros(0, dtype=np.int64)
    info = RankLayer(
        n_home=n_work,
        d1_send_idx=none,
        d1_send_counts=none,
        d1_recv_counts=none,
        d2_send_idx=none,
        d2_send_counts=none,
        d2_recv_counts=none,
        comp_rows=np.concatenate([none, *comp]),
        comp_weight=rng.random(int(rows.sum())).astype(np.float32),
        slot_offsets=np.concatenate([[0], np.cumsum(rows)]).astype(np.int64),
        home_tokens=none,
    )
    return DeviceLayer.from_info(info, dtype, device), n_work


def _a2a(
    out: torch.Tensor,
    inp: torch.Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: Any,
    async_op: bool = False,
) -> Any:
    return dist.all_to_all_single(out, inp, out_splits, in_splits, group=group, async_op=async_op)


class LayerRunner:
    """Runs replayed layers on one rank; ``sync`` makes device work visible to the host clock."""

    def __init__(self, group: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.group = group
        self.device = device
        self.dtype = dtype
        self.world = dist.get_world_size(group)
        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        )

    def barrier(self) -> None:
        self.sync()
        dist.barrier(group=self.group)

    # ---- phases ------------------------------------------------------------------------------------

    def notify(self, layers: list[DeviceLayer]) -> None:
        """Exchange send counts (as a real dispatcher must before sizing its receive buffers) and check
        they equal the planned receive counts: the replay moves exactly the planned rows."""
        send = torch.tensor(
            [[lay.d1_send[p], lay.d2_send[p]] for p in range(self.world) for lay in layers],
            dtype=torch.long,
        ).reshape(self.world, len(layers), 2)
        recv = torch.empty_like(send)
        if self.device.type == "cuda":
            send, recv = send.to(self.device), recv.to(self.device)
        dist.all_to_all_single(recv, send, group=self.group)
        got = recv.cpu().numpy()
        for i, lay in enumerate(layers):
            want = np.stack([lay.info.d1_recv_counts, lay.info.d2_recv_counts], axis=1)
            if not np.array_equal(got[:, i, :], want):
                raise RuntimeError(
                    "count exchange disagrees with the planned routing (ranks out of step)"
                )

    def dispatch(self, lay: DeviceLayer, x: torch.Tensor, stage2: bool) -> torch.Tensor:
        """Move home rows to destinations (D1, then the forwarders' D2 when any rank forwards: a
        collective, so every rank must take part); return ``W = [X; R1; R2]``."""
        r1 = torch.empty(lay.info.n_r1, x.shape[1], dtype=x.dtype, device=x.device)
        _a2a(r1, x.index_select(0, lay.d1_send_idx), lay.d1_recv, lay.d1_send, self.group)
        return self._forward(lay, x, r1, stage2)

    def _forward(
        self, lay: DeviceLayer, x: torch.Tensor, r1: torch.Tensor, stage2: bool
    ) -> torch.Tensor:
        """The forwarders' D2 fan-out of the rows D1 delivered (when ``stage2``); ``W = [X; R1; R2]``."""
        parts = [x, r1]
        if stage2:
            r2 = torch.empty(lay.info.n_r2, x.shape[1], dtype=x.dtype, device=x.device)
            _a2a(r2, r1.index_select(0, lay.d2_send_idx), lay.d2_recv, lay.d2_send, self.group)
            parts.append(r2)
        return torch.cat(parts)

    def compute(
        self,
        lay: DeviceLayer,
        w: torch.Tensor,
        experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Per local slot, SwiGLU on the rows routed to it; gate-weighted partial sums per row of W."""
        y = torch.zeros_like(w)
        for slot, start, end in lay.slot_bounds:
            rows = lay.comp_rows[start:end]
            out = swiglu(w.index_select(0, rows), experts[slot]) * lay.comp_weight[start:end]
            y.index_add_(0, rows, out)
        return y

    def combine(self, lay: DeviceLayer, y: torch.Tensor, stage2: bool) -> torch.Tensor:
        """Reverse of dispatch: D2 partials back to forwarders (summed there), then D1 back home."""
        back1, _ = self._issue_combine(lay, y, stage2)
        return y[: lay.info.n_home].index_add(0, lay.d1_send_idx, back1)

    def _issue_combine(
        self, lay: DeviceLayer, y: torch.Tensor, stage2: bool, async_op: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """D2 partials back to the forwarders (summed there), then the D1 return; returns the buffer the
        home rows' partials arrive in and the D1 return's work handle (``async_op``)."""
        n_home, n_r1 = lay.info.n_home, lay.info.n_r1
        hidden = y.shape[1]
        y_r1 = y[n_home : n_home + n_r1]
        if stage2:
            back2 = torch.empty(int(sum(lay.d2_send)), hidden, dtype=y.dtype, device=y.device)
            _a2a(back2, y[n_home + n_r1 :].contiguous(), lay.d2_send, lay.d2_recv, self.group)
            y_r1 = y_r1.index_add(0, lay.d2_send_idx, back2)
        back1 = torch.empty(int(sum(lay.d1_send)), hidden, dtype=y.dtype, device=y.device)
        work = _a2a(back1, y_r1.contiguous(), lay.d1_send, lay.d1_recv, self.group, async_op)
        return back1, work

    # ---- schedules ---------------------------------------------------------------------------------

    def run_phased(
        self,
        lay: DeviceLayer,
        x: torch.Tensor,
        experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        stage2: bool,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """One layer, phase by phase (notify, dispatch, compute, combine, each after a barrier); returns
        the home tokens' output and this rank's ``[4, 2]`` (start, end) clock readings in us
        (``time.perf_counter``, which ranks on one host share; see :mod:`moe_placement.executor.timing`)."""
        stamps = np.zeros((4, 2))

        def timed(index: int, phase: Callable[[], Any]) -> Any:
            self.barrier()
            t0 = time.perf_counter()
            result = phase()
            self.sync()
            stamps[index] = (t0 * 1e6, time.perf_counter() * 1e6)
            return result

        timed(0, lambda: self.notify([lay]))
        w = timed(1, lambda: self.dispatch(lay, x, stage2))
        y = timed(2, lambda: self.compute(lay, w, experts))
        out = timed(3, lambda: self.combine(lay, y, stage2))
        return out, stamps

    def run_overlapped(
        self,
        chunks: list[DeviceLayer],
        xs: list[torch.Tensor],
        experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        stage2: bool,
    ) -> tuple[list[torch.Tensor], float]:
        """Pipelined chunks with asynchronous collectives; returns outputs per chunk and the time (us)."""
        self.notify(chunks)  # one count exchange for all chunks, outside the timed region
        self.barrier()
        stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        t0 = time.perf_counter()
        if stream is not None:
            with torch.cuda.stream(stream):
                outs = self._pipeline(chunks, xs, experts, stage2)
        else:
            outs = self._pipeline(chunks, xs, experts, stage2)
        self.sync()
        return outs, (time.perf_counter() - t0) * 1e6

    def _issue_d1(self, lay: DeviceLayer, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        r1 = torch.empty(lay.info.n_r1, x.shape[1], dtype=x.dtype, device=x.device)
        work = _a2a(
            r1, x.index_select(0, lay.d1_send_idx), lay.d1_recv, lay.d1_send, self.group, True
        )
        return r1, work

    def _pipeline(
        self,
        chunks: list[DeviceLayer],
        xs: list[torch.Tensor],
        experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        stage2: bool,
    ) -> list[torch.Tensor]:
        n = len(chunks)
        pending = self._issue_d1(chunks[0], xs[0])
        combines: list[tuple[DeviceLayer, torch.Tensor, torch.Tensor, Any]] = []
        for i in range(n):
            lay, x = chunks[i], xs[i]
            r1, work = pending
            if i + 1 < n:  # next chunk's dispatch is in flight while this one computes
                pending = self._issue_d1(chunks[i + 1], xs[i + 1])
            work.wait()  # the forwarders' fan-out depends on D1 having arrived
            y = self.compute(lay, self._forward(lay, x, r1, stage2), experts)
            back1, cwork = self._issue_combine(lay, y, stage2, async_op=True)
            combines.append((lay, y, back1, cwork))
        outs = []
        for lay, y, back1, cwork in combines:
            cwork.wait()
            outs.append(y[: lay.info.n_home].index_add(0, lay.d1_send_idx, back1))
        return outs
