"""Stored sweep results: what ``placement whatif`` writes and what reports are built from.

Files in the output folder (all written atomically):

* ``results.parquet`` and ``results.csv``: one row per scenario (its axes, status, metrics);
* ``layers.parquet`` and ``layers.csv``: one row per (scenario, MoE layer) with the time breakdown;
* ``sweep.json``: the sweep's axes and values, the reference point, the base cluster, the engine.

Reports read only these, so they can be rebuilt (``placement whatif --report-only``) without re-running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from moe_placement.atomic import atomic_path, write_json
from moe_placement.errors import PlacementError

RESULTS_FILE = "results.parquet"
LAYERS_FILE = "layers.parquet"
META_FILE = "sweep.json"


def records_to_frames(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per scenario, one row per scenario and layer) from sweep records."""
    rows, layer_rows = [], []
    for record in records:
        row = {k: v for k, v in record.items() if k != "layers"}
        rows.append(row)
        for layer in record.get("layers", []):
            layer_rows.append({"key": record["key"], **layer})
    results = pd.DataFrame(rows)
    layers = pd.DataFrame(
        layer_rows,
        columns=[
            "key",
            "layer",
            "dispatch_us",
            "compute_us",
            "combine_us",
            "layer_us",
            "exposed_comm_us",
        ],
    )
    return results, layers


def write_results(out_dir: str | Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write the results tables (Parquet and CSV) and ``sweep.json`` into ``out_dir``."""
    out = Path(out_dir)
    results, layers = records_to_frames(records)
    for frame, name in ((results, RESULTS_FILE), (layers, LAYERS_FILE)):
        with atomic_path(out / name) as tmp:
            frame.to_parquet(tmp, index=False)
        with atomic_path(out / name.replace(".parquet", ".csv")) as tmp:
            frame.to_csv(tmp, index=False)
    write_json(out / META_FILE, meta)


def load_results(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read back what :func:`write_results` wrote; a missing file is a one-line :class:`PlacementError`."""
    out = Path(out_dir)
    for name in (RESULTS_FILE, LAYERS_FILE, META_FILE):
        if not (out / name).exists():
            raise PlacementError(
                f"{out} has no {name}: run placement whatif without --report-only first"
            )
    try:
        results = pd.read_parquet(out / RESULTS_FILE)
        layers = pd.read_parquet(out / LAYERS_FILE)
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise PlacementError(f"cannot read stored results in {out}: {exc}") from None
    return results, layers, meta
