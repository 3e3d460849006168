"""CSV routing tables: one row per (layer, token), one column per expert, non-zero = chosen.

Required columns ``layer_id`` and ``token_id``; expert columns are named by their expert index
(``3``, ``expert_3``, ``e3``: the trailing integer). A chosen expert's value is its gate weight (rows of
0/1 give equal weights). Optional columns ``seq_id``, ``pos``, ``step`` and ``domain`` are kept. Every
token must appear at every layer and choose the same number of experts.
"""

from __future__ import annotations

import os
import re

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import (
    ImportedTrace,
    ImportOptions,
    check_ids,
    require_file,
)

_EXPERT_COLUMN = re.compile(r"^(?:expert_?|e)?(\d+)$", re.I)
OPTIONAL = ("seq_id", "pos", "step", "domain")


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    import pandas as pd

    options = options or ImportOptions()
    path = require_file(path)
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise PlacementError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for required in ("layer_id", "token_id"):
        if required not in frame.columns:
            raise PlacementError(f"{path}: column {required!r} missing")
    experts_cols: dict[int, str] = {}
    for col in frame.columns:
        if col in ("layer_id", "token_id", *OPTIONAL):
            continue
        match = _EXPERT_COLUMN.match(col)
        if match is None:
            raise PlacementError(
                f"{path}: column {col!r} is neither an expert index nor a known column"
            )
        experts_cols[int(match.group(1))] = col
    if not experts_cols:
        raise PlacementError(f"{path}: no expert columns")
    num_experts = max(experts_cols) + 1
    values = np.zeros((len(frame), num_experts), dtype=np.float64)
    for index, col in experts_cols.items():
        column = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(column).any():
            raise PlacementError(f"{path}: column {col!r} has a non-numeric value")
        values[:, index] = column
    chosen = values != 0
    per_row = chosen.sum(axis=1)
    k = int(per_row.max())
    if k == 0 or (per_row != k).any():
        bad = int(np.flatnonzero(per_row != k)[0]) if k else 0
        raise PlacementError(
            f"{path}: row {bad + 2} chooses {int(per_row[bad])} experts, others {k}"
        )
    layer_values = np.sort(frame["layer_id"].unique())
    token_values = np.sort(frame["token_id"].unique())
    layers, tokens = len(layer_values), len(token_values)
    if len(frame) != layers * tokens:
        raise PlacementError(
            f"{path}: {len(frame)} rows, expected every one of {tokens} tokens at {layers} layers"
        )
    frame = frame.assign(_row=np.arange(len(frame))).sort_values(
        ["layer_id", "token_id"], kind="stable"
    )
    if frame.duplicated(["layer_id", "token_id"]).any():
        raise PlacementError(f"{path}: a (layer_id, token_id) pair appears twice")
    rows = frame["_row"].to_numpy()
    # Chosen experts in index order, then their values as weights.
    ids = np.argsort(~chosen[rows], axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(values[rows], ids, axis=1)
    if np.all(weights == weights.flat[0]):
        weights = np.full_like(weights, 1.0 / k)
    if (weights < 0).any():
        raise PlacementError(f"{path}: negative gate weight")
    ids = ids.reshape(layers, tokens, k)
    weights = weights.reshape(layers, tokens, k).astype(np.float32)
    experts = check_ids(ids, options.num_experts or num_experts, str(path))
    first_layer = frame[frame["layer_id"] == layer_values[0]]
    extra_cols = {c: first_layer[c].to_numpy() for c in OPTIONAL if c in frame.columns}
    return ImportedTrace(
        source=str(path),
        format="csv",
        layer_ids=[int(v) for v in layer_values],
        num_experts=experts,
        expert_ids=ids.astype(np.int64),
        weights=weights,
        step=extra_cols["step"].astype(np.int32) if "step" in extra_cols else None,
        seq_id=extra_cols["seq_id"].astype(np.int64) if "seq_id" in extra_cols else None,
        pos=extra_cols["pos"].astype(np.int32)
        if "pos" in extra_cols
        else np.searchsorted(token_values, first_layer["token_id"].to_numpy()).astype(np.int32),
        domain=extra_cols["domain"].astype(str).astype(object) if "domain" in extra_cols else None,
    )
