"""ExFlow-style routing dumps: a NumPy ``.npy`` array of top-1 expert ids ``[tokens, layers]``.

A ``[tokens, layers, k]`` array is accepted too (top-k, best first). ExFlow's dumps carry no gate
weights or sequence boundaries: weights are equal and all tokens form one sequence in file order.
"""

from __future__ import annotations

import os

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import (
    ImportedTrace,
    ImportOptions,
    check_ids,
    require_file,
    uniform_weights,
)


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    options = options or ImportOptions()
    path = require_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: a file cut short
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlacementError(f"{path}: not a NumPy .npy array ({cause})") from None
    if not isinstance(array, np.ndarray):
        raise PlacementError(f"{path}: expected one array, got an archive")
    if not np.issubdtype(array.dtype, np.integer):
        raise PlacementError(f"{path}: expert ids must be integers, got a {array.dtype} array")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise PlacementError(
            f"{path}: expected [tokens, layers] (or [tokens, layers, k]), got shape {array.shape}"
        )
    ids = np.ascontiguousarray(array.transpose(1, 0, 2))
    experts = check_ids(ids, options.num_experts, str(path))
    ids = ids.astype(np.int64)
    n = ids.shape[1]
    return ImportedTrace(
        source=str(path),
        format="exflow-npy",
        layer_ids=list(range(ids.shape[0])),
        num_experts=experts,
        expert_ids=ids,
        weights=uniform_weights(ids),
        step=np.zeros(n, dtype=np.int32),
        seq_id=np.zeros(n, dtype=np.int64),
        pos=np.arange(n, dtype=np.int32),
    )
