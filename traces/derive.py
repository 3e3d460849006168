"""One streaming pass over a trace derives what solvers need (see :class:`moe_placement.workload.Workload`)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from moe_placement.shapes import ModelShape
from moe_placement.traces.reader import TraceFile
from moe_placement.workload import Workload, home_gpus


def _pair_counts(first: np.ndarray, second: np.ndarray, num_experts: int) -> np.ndarray:
    """Counts of (first[t, a], second[t, b]) over tokens and all a, b: ``[experts, experts]``."""
    flat = (first[:, :, None] * num_experts + second[:, None, :]).ravel()
    return np.bincount(flat, minlength=num_experts * num_experts).reshape(num_experts, num_experts)


def derive_workload(
    trace: TraceFile,
    *,
    num_gpus: int | None = None,
    home_policy: str = "token",
    shape: ModelShape | None = None,
    progress: bool = False,
) -> Workload:
    """Load, co-activation, inter-layer transitions and (if ``num_gpus``) per-home-GPU demand."""
    meta = trace.meta
    layers, experts, k = meta.num_moe_layers, meta.num_experts, meta.top_k
    load = np.zeros((layers, experts), dtype=np.float64)
    coact = np.zeros((layers, experts, experts), dtype=np.float64)
    trans = np.zeros((max(layers - 1, 0), experts, experts), dtype=np.float64)
    top1 = np.zeros_like(trans)
    demand = None if num_gpus is None else np.zeros((layers, num_gpus, experts), dtype=np.float64)
    tokens = 0
    iterator = trace.iter_chunks()
    bar = tqdm(
        iterator,
        total=trace.num_row_groups,
        desc="reading trace",
        unit="group",
        disable=None if progress else True,
        leave=False,
    )
    for chunk in bar:
        ids = chunk.expert_ids
        tokens += chunk.num_tokens
        home = (
            None if num_gpus is None else home_gpus(chunk.seq_id, chunk.pos, num_gpus, home_policy)
        )
        for layer in range(layers):
            ids_l = ids[layer]
            load[layer] += np.bincount(ids_l.ravel(), minlength=experts)
            if k > 1:
                pairs = _pair_counts(ids_l, ids_l, experts)
                np.fill_diagonal(pairs, 0)
                coact[layer] += pairs
            if layer + 1 < layers:
                trans[layer] += _pair_counts(ids_l, ids[layer + 1], experts)
                top1[layer] += _pair_counts(ids_l[:, :1], ids[layer + 1][:, :1], experts)
            if demand is not None and home is not None and num_gpus is not None:
                flat = np.repeat(home, k) * experts + ids_l.ravel()
                demand[layer] += np.bincount(flat, minlength=num_gpus * experts).reshape(
                    num_gpus, experts
                )
    return Workload(
        shape=shape if shape is not None else meta.shape(),
        load=load,
        num_tokens=tokens,
        source=str(trace.path),
        fingerprint=trace.fingerprint(),
        coact=coact,
        transitions=trans,
        top1_transitions=top1,
        home_demand=demand,
        home_num_gpus=num_gpus,
        home_policy=home_policy,
        chunk_source=trace.iter_chunks,
    )
