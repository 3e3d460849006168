"""Load-only inputs: the ``{"logical_count": [[...]]}`` JSON of DeepSeek EPLB and SGLang.

Rows that are all zero (dense layers, such as DeepSeek-V3's first three) are dropped; the model layer
index of each kept row is recorded. Such a workload has ``load`` only: no co-activation, no transitions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from placement.errors import PlacementError
from placement.shapes import ModelShape, guess_shape
from placement.workload import Workload


def read_logical_count(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """``load[moe_layers, experts]`` and the model layer index of each row."""
    path = Path(path)
    if not path.exists():
        raise PlacementError(f"load file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlacementError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or "logical_count" not in data:
        raise PlacementError(f"{path}: expected a JSON object with a 'logical_count' key")
    try:
        counts = np.asarray(data["logical_count"], dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(
            f"{path}: logical_count must be a rectangular list of numbers"
        ) from None
    if counts.ndim == 3:  # SGLang may dump [ranks, layers, experts]: sum over ranks
        counts = counts.sum(axis=0)
    if counts.ndim != 2 or counts.shape[1] < 1:
        raise PlacementError(
            f"{path}: logical_count must be [layers][experts], got shape {counts.shape}"
        )
    if not np.isfinite(counts).all() or counts.min() < 0:
        raise PlacementError(f"{path}: logical_count must be finite and >= 0")
    keep = np.flatnonzero(counts.sum(axis=1) > 0)
    if keep.size == 0:
        raise PlacementError(f"{path}: every layer's counts are zero")
    return counts[keep], keep.tolist()


def is_logical_count_file(path: str | Path) -> bool:
    return str(path).lower().endswith(".json")


def load_logical_count(path: str | Path, shape: ModelShape | None = None) -> Workload:
    """A load-only :class:`Workload`; the model shape comes from ``shape`` or is guessed by size."""
    load, layer_ids = read_logical_count(path)
    layers, experts = load.shape
    if shape is None:
        shape = guess_shape(layers, experts)
    if shape is None:
        raise PlacementError(
            f"{path}: {layers} layers x {experts} experts matches no known model; pass --model NAME"
        )
    if shape.num_moe_layers != layers or shape.num_experts != experts:
        raise PlacementError(
            f"{path}: {layers} MoE layers x {experts} experts does not match model {shape.name} "
            f"({shape.num_moe_layers} x {shape.num_experts})"
        )
    shape = shape.replace(first_moe_layer=layer_ids[0])
    tokens = round(float(load.sum(axis=1).mean()) / shape.top_k)
    return Workload(
        shape=shape,
        load=load,
        num_tokens=tokens,
        source=str(path),
        fingerprint=hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16],
    )
