"""SGLang expert-distribution recorder dumps (``--expert-distribution-recorder-mode``), every mode.

Modelled on ``python/sglang/srt/eplb/expert_distribution.py`` (see docs/engines.md for the version). All
modes index layers by *model* layer (``ExpertLocationMetadata.num_layers`` is the config's
``num_hidden_layers``): dense layers are rows that never route, and are dropped; the kept rows' indices
are the MoE layer ids and the row count is the model's layer count.

* ``per_token``: each rank writes ``expert_distribution_recorder_<time>_<rank>.pt`` (``torch.save``): a
  dict with ``records`` (one per forward pass: ``forward_pass_id``, ``rank``, ``topk_ids_of_layer``
  ``[layers, tokens, 8]`` int32 of *physical* slot ids padded with -1, and when available ``rids``,
  ``extend_seq_lens``, ``forward_mode``) and ``last_physical_to_logical_map`` ``[layers, physical]``.
  Physical ids are mapped to logical experts with that map; tokens with no expert (padding) are
  dropped. Sequences come from ``rids`` (extend passes contribute ``extend_seq_lens`` tokens per
  request, decode passes one); without them each forward pass is one sequence. ``step`` is the
  forward-pass id. The dumps carry no gate weights: they are equal. A per-token trace.
* ``per_pass``: the same files, each record holding ``global_physical_count`` ``[layers, physical]``
  (tokens per physical slot in that pass, on that rank): summed over passes and ranks and mapped to
  logical experts with ``last_physical_to_logical_map``. Load-only.
* ``stat`` / ``stat_approx``: rank 0 writes ``expert_distribution_recorder_<time>.pt``, a dict with
  ``logical_count`` ``[buffered steps, layers, logical experts]`` (already all-reduced over ranks):
  summed over steps. Load-only.

Give one file or a folder of them (one mode per folder).
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
from moe_placement.traces.loadjson import counts_with_layers

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


def stat_counts(value: object, where: str) -> np.ndarray:
    """SGLang's stat-mode ``logical_count`` (``[buffered steps, model layers, experts]``, or already
    ``[layers, experts]``) summed to ``[model layers, experts]`` and checked."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()  # type: ignore[attr-defined]
    try:
        counts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"{where}: logical_count is not a numeric array") from None
    while counts.ndim > 2:
        counts = counts.sum(axis=0)
    if counts.ndim != 2 or not np.isfinite(counts).all() or counts.min() < 0:
        raise PlacementError(f"{where}: logical_count must be finite, >= 0 and [layers, experts]")
    return counts


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


def _mode(data: Any, file: Path) -> str:
    """Which recorder mode wrote ``data``: ``stat``, ``per_pass`` or ``per_token``."""
    if isinstance(data, dict) and "logical_count" in data:
        return "stat"
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise PlacementError(
            f"{file}: expected an SGLang expert-distribution dump (a dict with 'records' or 'logical_count')"
        )
    records = data["records"]
    if records and all(isinstance(r, dict) for r in records):
        if all("topk_ids_of_layer" in r for r in records):
            return "per_token"
        if all("global_physical_count" in r for r in records):
            return "per_pass"
    raise PlacementError(
        f"{file}: records hold neither topk_ids_of_layer (per_token) nor global_physical_count (per_pass)"
    )


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    """Any recorder mode: a per-token trace (per_token) or load-only counts (per_pass, stat)."""
    options = options or ImportOptions()
    root = require_file(path)
    dumps = [(file, torch_load(file)) for file in _files(root)]
    modes = {_mode(data, file) for file, data in dumps}
    if len(modes) != 1:
        raise PlacementError(
            f"{root}: dumps of different recorder modes ({', '.join(sorted(modes))})"
        )
    mode = modes.pop()
    if mode == "per_token":
        return _per_token(root, dumps, options)
    if mode == "per_pass":
        counts = _per_pass_counts(dumps)
    else:
        per_file = [stat_counts(data["logical_count"], str(file)) for file, data in dumps]
        if len({c.shape for c in per_file}) != 1:
            raise PlacementError(f"{root}: stat dumps disagree on [layers, experts]")
        counts = np.sum(per_file, axis=0)
    load, layers = counts_with_layers(counts, str(root))
    if options.num_experts is not None and options.num_experts != load.shape[1]:
        raise PlacementError(
            f"{root}: {load.shape[1]} experts, but --experts {options.num_experts} was given"
        )
    return ImportedTrace(
        source=str(root),
        format="sglang",
        layer_ids=list(layers.moe_layer_ids),
        num_experts=int(load.shape[1]),
        load=load,
        extra={"recorder_mode": mode},
        layers_said=True,
        total_layers=layers.total_layers,
    )


def _per_pass_counts(dumps: list[tuple[Path, Any]]) -> np.ndarray:
    """``[model layers, logical experts]``: every record's ``global_physical_count`` mapped to logical
    experts with its file's ``last_physical_to_logical_map``, summed over passes and ranks."""
    total: np.ndarray | None = None
    for file, data in dumps:
        p2l_raw = data.get("last_physical_to_logical_map")
        if p2l_raw is None:
            raise PlacementError(f"{file}: per_pass dump without last_physical_to_logical_map")
        p2l = _as_numpy(p2l_raw).astype(np.int64)
        if p2l.ndim != 2 or p2l.size == 0 or p2l.min() < 0:
            raise PlacementError(
                f"{file}: last_physical_to_logical_map must be [layers, physical] ids >= 0"
            )
        layers, physical = p2l.shape
        experts = int(p2l.max()) + 1
        physical_count = np.zeros((layers, physical))
        for number, record in enumerate(data["records"]):
            count = _as_numpy(record["global_physical_count"]).astype(np.float64)
            if count.shape != (layers, physical):
                raise PlacementError(
                    f"{file}: record {number}: global_physical_count {count.shape} does not match the "
                    f"map's {(layers, physical)}"
                )
            if not np.isfinite(count).all() or count.min() < 0:
                raise PlacementError(f"{file}: record {number}: counts must be finite and >= 0")
            physical_count += count
        logical = np.zeros((layers, experts))
        rows = np.repeat(np.arange(layers), physical)
        np.add.at(logical, (rows, p2l.reshape(-1)), physical_count.reshape(-1))
        if total is not None and total.shape != logical.shape:
            raise PlacementError(
                f"{file}: dumps disagree on [layers, experts] {total.shape} vs {logical.shape}"
            )
        total = logical if total is None else total + logical
    assert total is not None
    return total


def _per_token(root: Path, dumps: list[tuple[Path, Any]], options: ImportOptions) -> ImportedTrace:
    passes: list[
        tuple[int, np.ndarray, np.ndarray, np.ndarray]
    ] = []  # step, ids[L,T,K], seq[T], pos[T]
    seq_of: dict[tuple[int, str], int] = {}
    mapped = False
    next_pos: dict[int, int] = {}
    for file, data in dumps:
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
    model_layers = ids.shape[0]
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
        extra={"physical_to_logical_mapped": mapped, "recorder_mode": "per_token"},
        layers_said=True,
        total_layers=model_layers,
    )
