"""SGLang per-token expert-distribution dumps (``--expert-distribution-recorder-mode per_token``).

Each rank writes ``expert_distribution_recorder_<time>_<rank>.pt`` (``torch.save``): a dict with
``records`` (one per forward pass: ``forward_pass_id``, ``rank``, ``topk_ids_of_layer`` ``[layers,
tokens, 8]`` int32 padded with -1, and when available ``rids``, ``extend_seq_lens``, ``forward_mode``)
and ``last_physical_to_logical_map`` ``[layers, physical_slots]``. Give one file or a folder of them.

Physical slot ids are mapped to logical experts with that map; layers that never route (dense layers)
are dropped; tokens with no expert at all (padding) are dropped. Sequences come from ``rids`` (extend
passes contribute ``extend_seq_lens`` tokens per request, decode passes one); without them each forward
pass is one sequence. ``step`` is the forward-pass id. The dumps carry no gate weights: they are equal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import (
    ImportedTrace,
    ImportOptions,
    check_ids,
    require_file,
    uniform_weights,
)

DECODE_MODES = {2, "DECODE", "decode"}


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no arbitrary pickles)."""
    try:
        import torch
    except ImportError:
        raise PlacementError(f"{path}: reading a .pt dump needs torch") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle; report one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlacementError(f"{path}: not a readable torch dump ({first[:160]})") from None


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if not files:
            raise PlacementError(f"{path}: no .pt dumps in the folder")
        return files
    return [path]


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    options = options or ImportOptions()
    root = require_file(path)
    passes: list[
        tuple[int, np.ndarray, np.ndarray, np.ndarray]
    ] = []  # step, ids[L,T,K], seq[T], pos[T]
    seq_of: dict[tuple[int, str], int] = {}
    mapped = False
    next_pos: dict[int, int] = {}
    for file in _files(root):
        data = torch_load(file)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise PlacementError(
                f"{file}: expected a dict with a 'records' list (SGLang per_token dump)"
            )
        p2l = data.get("last_physical_to_logical_map")
        p2l_np = None if p2l is None else _as_numpy(p2l).astype(np.int64)
        for number, record in enumerate(data["records"]):
            if "topk_ids_of_layer" not in record:
                raise PlacementError(
                    f"{file}: record {number} has no topk_ids_of_layer (not per_token mode?)"
                )
            ids = _as_numpy(record["topk_ids_of_layer"]).astype(np.int64)
            if ids.ndim != 3:
                raise PlacementError(
                    f"{file}: record {number}: topk_ids_of_layer must be [layers, tokens, k]"
                )
            if p2l_np is not None:
                if p2l_np.shape[0] != ids.shape[0] or (ids.max(initial=-1) >= p2l_np.shape[1]):
                    raise PlacementError(
                        f"{file}: physical-to-logical map does not fit the recorded ids"
                    )
                valid = ids >= 0
                flat = np.where(valid, ids, 0).reshape(ids.shape[0], -1)
                logical = np.take_along_axis(p2l_np, flat, axis=1).reshape(ids.shape)
                ids = np.where(valid, logical, -1)
                mapped = True
            rank = int(record.get("rank", 0))
            step = int(record.get("forward_pass_id", number))
            tokens = ids.shape[1]
            rids = record.get("rids")
            if rids is not None and len(rids) > 0:
                lens = record.get("extend_seq_lens")
                decode = record.get("forward_mode") in DECODE_MODES or lens is None
                counts = (
                    np.ones(len(rids), dtype=np.int64)
                    if decode
                    else np.asarray(lens, dtype=np.int64)
                )
                if counts.sum() != tokens:
                    raise PlacementError(
                        f"{file}: record {number}: {tokens} tokens but the requests account for {counts.sum()}"
                    )
                seq = np.empty(tokens, dtype=np.int64)
                pos = np.empty(tokens, dtype=np.int32)
                offset = 0
                for rid, count in zip(rids, counts, strict=True):
                    sid = seq_of.setdefault((rank, str(rid)), len(seq_of))
                    first = next_pos.get(sid, 0)
                    seq[offset : offset + count] = sid
                    pos[offset : offset + count] = np.arange(first, first + count)
                    next_pos[sid] = first + int(count)
                    offset += int(count)
            else:
                sid = seq_of.setdefault((rank, f"pass-{step}"), len(seq_of))
                seq = np.full(tokens, sid, dtype=np.int64)
                pos = np.arange(tokens, dtype=np.int32)
            passes.append((step, ids, seq, pos))
    if not passes:
        raise PlacementError(f"{root}: no records")
    layers = {p[1].shape[0] for p in passes}
    if len(layers) != 1:
        raise PlacementError(f"{root}: records disagree on the layer count {sorted(layers)}")
    ids = np.concatenate([p[1] for p in passes], axis=1)
    steps = np.concatenate([np.full(p[1].shape[1], p[0], dtype=np.int32) for p in passes])
    seq = np.concatenate([p[2] for p in passes])
    pos = np.concatenate([p[3] for p in passes])
    routed_layers = np.flatnonzero((ids >= 0).any(axis=(1, 2)))
    if routed_layers.size == 0:
        raise PlacementError(f"{root}: no layer routed any token")
    ids = ids[routed_layers]
    valid = (ids >= 0).sum(axis=2)  # [layers, tokens]
    token_k = valid.max(axis=0)
    keep = token_k > 0
    k = int(token_k.max())
    if (valid[:, keep] != k).any():
        raise PlacementError(
            f"{root}: tokens route to differing numbers of experts (expected {k} everywhere)"
        )
    # Valid entries first, in recorded order; the -1 padding is dropped.
    order = np.argsort(ids[:, keep] < 0, axis=2, kind="stable")
    ids = np.take_along_axis(ids[:, keep], order, axis=2)[:, :, :k]
    experts = check_ids(ids, options.num_experts, str(root))
    return ImportedTrace(
        source=str(root),
        format="sglang",
        layer_ids=routed_layers.tolist(),
        num_experts=experts,
        expert_ids=ids,
        weights=uniform_weights(ids),
        step=steps[keep],
        seq_id=seq[keep],
        pos=pos[keep],
        extra={"physical_to_logical_mapped": mapped},
    )
