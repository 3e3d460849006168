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
from moe_placement.layers import LayerIdentity
from moe_placement.traces.importers.base import ImportedTrace, ImportOptions, require_file
from moe_placement.traces.importers.sglang import stat_counts, torch_load
from moe_placement.traces.loadjson import counts_with_layers, read_logical_count_layers


def _counts_from_pt(path: os.PathLike[str]) -> tuple[np.ndarray, LayerIdentity]:
    data = torch_load(path)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise PlacementError(
            f"{path}: expected a dict with a 'logical_count' tensor (SGLang stat dump)"
        )
    counts = stat_counts(data["logical_count"], str(path))
    load, layers = counts_with_layers(counts, str(path))
    return load, layers


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    """Load-only counts ``load[moe_layers, experts]`` with their model layer indices."""
    path = require_file(path)
    if path.suffix.lower() == ".pt":
        counts, layers = _counts_from_pt(path)
    else:
        counts, layers = read_logical_count_layers(path)
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
        layer_ids=list(layers.moe_layer_ids),
        num_experts=int(counts.shape[1]),
        load=counts,
        # zero (dense) rows dropped: the rows were model layers and their count the model's
        layers_said=layers.total_layers > layers.num_moe_layers,
        total_layers=layers.total_layers if layers.total_layers > layers.num_moe_layers else None,
    )
