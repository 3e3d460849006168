"""Load-only inputs: the ``{"logical_count": [[...]]}`` JSON of DeepSeek EPLB and SGLang.

Rows that are all zero (dense layers, such as DeepSeek-V3's first three) are dropped; the model layer
index of each kept row is recorded, and the row count is the model's layer count (SGLang writes one row
per model layer). A file without zero rows does not say where its layers sit in the model: then a named
model shape does (deepseek-v3: 61 layers, the first 3 dense). Such a workload has ``load`` only: no
co-activation, no transitions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_placement.atomic import atomic_path
from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity
from moe_placement.shapes import ModelShape, guess_shape, model_shape
from moe_placement.traces.schema import LOAD_COLUMNS, LOAD_META_KEY, LoadMeta, load_arrow_schema
from moe_placement.workload import Workload


def read_logical_count(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """``load[moe_layers, experts]`` and the model layer index of each row."""
    load, layers = read_logical_count_layers(path)
    return load, list(layers.moe_layer_ids)


def read_logical_count_layers(path: str | Path) -> tuple[np.ndarray, LayerIdentity]:
    """``load[moe_layers, experts]`` and its layer identity: the non-zero rows among all the rows."""
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
    return counts_with_layers(counts, str(path))


def counts_with_layers(counts: np.ndarray, where: str) -> tuple[np.ndarray, LayerIdentity]:
    """Drop the all-zero (dense) rows of ``counts[model_layers, experts]``; the kept rows' indices are
    the MoE layer ids and the row count the model's layer count."""
    keep = np.flatnonzero(counts.sum(axis=1) > 0)
    if keep.size == 0:
        raise PlacementError(f"{where}: every layer's counts are zero")
    return counts[keep], LayerIdentity.of(keep.tolist(), counts.shape[0])


def identity_for_shape(
    layers: LayerIdentity, shape: ModelShape, dropped_rows: bool
) -> LayerIdentity | None:
    """What an input's rows say about layer identity, given the model shape.

    Rows were dropped (zero dense rows): the input says, and must agree with a named shape that knows.
    No row dropped: the input's numbering is only its own, so the shape's identity is used if it has
    one; else the rows are taken as model layers 0..L-1 of an L-layer model.
    """
    known = shape.layer_identity()
    if dropped_rows:
        if known is not None and known != layers:
            raise PlacementError(
                f"layer ids do not fit the model: the input's MoE rows are model layers "
                f"{layers.first_moe_layer}..{layers.moe_layer_ids[-1]} of {layers.total_layers}, model "
                f"{shape.name} has {known.first_moe_layer}..{known.moe_layer_ids[-1]} of {known.total_layers}"
            )
        return layers
    return known if known is not None else layers


def is_logical_count_file(path: str | Path) -> bool:
    return str(path).lower().endswith(".json")


def load_logical_count(path: str | Path, shape: ModelShape | None = None) -> Workload:
    """A load-only :class:`Workload`; the model shape comes from ``shape`` or is guessed by size."""
    load, file_layers = read_logical_count_layers(path)
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
    dropped = file_layers.total_layers > file_layers.num_moe_layers
    shape = shape.with_layers(identity_for_shape(file_layers, shape, dropped))
    tokens = round(float(load.sum(axis=1).mean()) / shape.top_k)
    return Workload(
        shape=shape,
        load=load,
        num_tokens=tokens,
        source=str(path),
        fingerprint=hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16],
    )


# ---- load-only Parquet -----------------------------------------------------------------------------
# What `placement import --format logical-count IN --out T.parquet` writes, in the layout that
# traces/schema.py defines (LoadMeta, load_arrow_schema). Every command that accepts a trace accepts it
# as a load-only input.


def is_load_parquet(path: str | Path) -> bool:
    """True for a load-only Parquet file written by :func:`write_load_parquet`."""
    if not str(path).lower().endswith(".parquet") or not Path(path).is_file():
        return False
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        return False
    return LOAD_META_KEY in (schema.metadata or {})


def write_load_parquet(
    path: str | Path,
    load: np.ndarray,
    layer_ids: list[int],
    shape: ModelShape | None,
    source: str,
    total_layers: int | None = None,
) -> Path:
    """Write ``load[moe_layers, experts]`` as a load-only Parquet file, atomically."""
    layers, experts = load.shape
    meta = LoadMeta(
        num_moe_layers=layers,
        num_experts=experts,
        moe_layer_ids=[int(i) for i in layer_ids],
        model_name=shape.name if shape is not None else None,
        source=source,
        total_layers=total_layers,
    )
    columns = {
        "layer": np.repeat(np.arange(layers), experts),
        "expert": np.tile(np.arange(experts), layers),
        "count": load.reshape(-1),
    }
    table = pa.table(columns, schema=load_arrow_schema(meta))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_load_parquet(path: str | Path) -> tuple[np.ndarray, LoadMeta]:
    """``load[moe_layers, experts]`` and the metadata of a load-only file."""
    table = pq.read_table(path)
    meta = LoadMeta.from_json(table.schema.metadata[LOAD_META_KEY])
    missing = [c for c in LOAD_COLUMNS if c not in table.column_names]
    if missing:
        raise PlacementError(f"{path}: load-only columns missing: {', '.join(missing)}")
    layer, expert = (table.column(c).to_numpy().astype(np.int64) for c in ("layer", "expert"))
    if layer.size and (
        layer.min() < 0
        or layer.max() >= meta.num_moe_layers
        or expert.min() < 0
        or expert.max() >= meta.num_experts
    ):
        raise PlacementError(f"{path}: a layer or expert index lies outside the metadata's shape")
    load = np.zeros((meta.num_moe_layers, meta.num_experts))
    load[layer, expert] = table.column("count").to_numpy()
    return load, meta


def load_load_parquet(path: str | Path, shape: ModelShape | None = None) -> Workload:
    """A load-only :class:`Workload` from a file written by :func:`write_load_parquet`."""
    load, meta = read_load_parquet(path)
    layers, experts = load.shape
    if shape is None and meta.model_name:
        try:
            shape = model_shape(meta.model_name)
        except PlacementError:
            shape = None
    if shape is None:
        shape = guess_shape(layers, experts)
    if shape is None:
        raise PlacementError(
            f"{path}: {layers} layers x {experts} experts matches no known model; pass --model NAME"
        )
    # ids numbered 0..L-1 with no total recorded say nothing beyond the file's own numbering
    file_layers = meta.layer_identity()
    says = meta.total_layers is not None or meta.moe_layer_ids != list(range(layers))
    shape = shape.with_layers(identity_for_shape(file_layers, shape, says))
    return Workload(
        shape=shape,
        load=load,
        num_tokens=round(float(load.sum(axis=1).mean()) / shape.top_k),
        source=str(path),
        fingerprint=hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16],
    )
