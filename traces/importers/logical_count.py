"""EPLB / SGLang ``logical_count``: per-layer expert token counts, load-only.

Inputs: the ``{"logical_count": [[...]]}`` JSON of DeepSeek EPLB and SGLang (``[layers][experts]`` or
``[ranks or buffered steps][layers][experts]``, summed over the leading axis), or SGLang's ``stat``-mode
``torch.save`` dump (a ``.pt`` dict with a ``logical_count`` tensor). All-zero rows (dense layers) are
dropped and the kept rows' model layer indices recorded.
"""

from __future__ import annotations

import os

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import ImportedTrace, ImportOptions, require_file
from moe_placement.traces.loadjson import read_logical_count


def _counts_from_pt(path: os.PathLike[str]) -> tuple[np.ndarray, list[int]]:
    from moe_placement.traces.importers.sglang import torch_load

    data = torch_load(path)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise PlacementError(
            f"{path}: expected a dict with a 'logical_count' tensor (SGLang stat dump)"
        )
    counts = np.asarray(data["logical_count"], dtype=np.float64)
    while counts.ndim > 2:
        counts = counts.sum(axis=0)
    if counts.ndim != 2 or not np.isfinite(counts).all() or counts.min() < 0:
        raise PlacementError(f"{path}: logical_count must be finite, >= 0 and [layers, experts]")
    keep = np.flatnonzero(counts.sum(axis=1) > 0)
    if keep.size == 0:
        raise PlacementError(f"{path}: every layer's counts are zero")
    return counts[keep], keep.tolist()


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    """Load-only counts ``load[moe_layers, experts]`` with their model layer indices."""
    path = require_file(path)
    if path.suffix.lower() == ".pt":
        counts, layer_ids = _counts_from_pt(path)
    else:
        counts, layer_ids = read_logical_count(path)
    if (
        options is not None
        and options.num_experts is not None
        and options.num_experts != counts.shape[1]
    ):
        raise PlacementError(
            f"{path}: {counts.shape[1]} experts, but --experts {options.num_experts} was given"
        )
    return ImportedTrace(
        source=str(path),
        format="logical-count",
        layer_ids=layer_ids,
        num_experts=int(counts.shape[1]),
        load=counts,
    )
