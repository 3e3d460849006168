"""Importers: pure converters from other tools' routing dumps to this project's trace.

Each module has ``load(path, options) -> ImportedTrace`` and writes nothing; ``ImportedTrace.write``
writes a Parquet trace (per-token inputs) or a ``logical_count`` JSON (load-only inputs).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from moe_placement.errors import PlacementError
from moe_placement.traces.importers import (
    csv_table,
    exflow_npy,
    logical_count,
    sglang,
    trtllm,
    vllm,
)
from moe_placement.traces.importers.base import ImportedTrace, ImportOptions

FORMATS: dict[str, Callable[..., ImportedTrace]] = {
    "logical-count": logical_count.load,
    "sglang": sglang.load,
    "vllm": vllm.load,
    "trtllm": trtllm.load,
    "csv": csv_table.load,
    "exflow-npy": exflow_npy.load,
}


def load(
    fmt: str, path: str | os.PathLike[str], options: ImportOptions | None = None
) -> ImportedTrace:
    """Run the importer for ``fmt`` on ``path``."""
    if fmt not in FORMATS:
        raise PlacementError(f"unknown import format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt](path, options)


__all__ = ["FORMATS", "ImportOptions", "ImportedTrace", "load"]
