"""TensorRT-LLM expert statistics (``EXPERT_STATISTIC_ITER_RANGE`` / ``EXPERT_STATISTIC_PATH``).

Modelled on TensorRT-LLM's ``tensorrt_llm/_torch/expert_statistic.py`` (``ExpertStatistic``:
``_maybe_add_info``, ``_write``) and ``examples/wide_ep/ep_load_balancer/utils.py``
(``load_expert_statistic``), which the wide-EP example reads before generating its load-balancer YAML
(versions in docs/engines.md).

The folder holds ``meta_info.json`` (``num_experts``, ``num_experts_per_token``) and one
``rank<r>.safetensors`` per rank: one int64 tensor ``[num_experts]`` per (iteration, layer), named
``"<iter>_<layer>"``, the tokens each logical expert received on that rank. The layer is the MoE
module's ``layer_idx``: the model layer (DeepSeek-V3: 3..60), the same key as the YAML's
``initial_global_assignments``. Counts are summed over ranks and iterations: load-only.
``rank<r>_raw.safetensors`` (raw routed ids) are skipped, as the example's loader skips them.

The safetensors files are read with a small parser of the format (an 8-byte little-endian header
length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes), so no
``safetensors`` package is needed.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import ImportedTrace, ImportOptions, require_file

SAFETENSORS_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "I32": np.int32,
    "U32": np.uint32,
    "I64": np.int64,
    "U64": np.uint64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}
_KEY = re.compile(r"^(\d+)_(\d+)$")
_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")
# a header larger than this is not an expert-statistic file (each holds a few thousand small tensors)
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a NumPy array (little-endian, C order)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise PlacementError(
            f"{path}: not a safetensors file (shorter than its 8-byte header length)"
        )
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > min(MAX_HEADER_BYTES, len(raw) - 8):
        raise PlacementError(
            f"{path}: not a safetensors file (header length {header_len} out of range)"
        )
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PlacementError(f"{path}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise PlacementError(f"{path}: safetensors header is not a JSON object")
    data = memoryview(raw)[8 + header_len :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise PlacementError(
                f"{path}: tensor {name!r}: unsupported dtype or malformed header entry"
            ) from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise PlacementError(f"{path}: tensor {name!r}: byte range does not match its shape")
        out[name] = (
            np.frombuffer(data[begin:end], dtype=dtype)
            .reshape(shape)
            .astype(dtype.newbyteorder("="))
        )
    return out


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    """Load-only ``[MoE layers, experts]`` counts of an expert-statistic folder."""
    options = options or ImportOptions()
    root = require_file(path)
    if not root.is_dir():
        raise PlacementError(
            f"{root}: give the expert-statistic folder (meta_info.json, rank*.safetensors)"
        )
    files = sorted(f for f in root.iterdir() if _RANK_FILE.match(f.name))
    if not files:
        raise PlacementError(f"{root}: no rank<r>.safetensors files")
    meta_path = root / "meta_info.json"
    num_experts = options.num_experts
    meta: dict[str, object] = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PlacementError(f"{meta_path}: not JSON") from None
        if not isinstance(meta, dict):
            raise PlacementError(f"{meta_path}: expected a JSON object")
    counts: dict[int, np.ndarray] = {}
    iterations: set[int] = set()
    for file in files:
        for key, tensor in read_safetensors(file).items():
            match = _KEY.match(key)
            if match is None:
                raise PlacementError(f"{file}: tensor {key!r} is not named <iter>_<layer>")
            if tensor.ndim != 1 or not np.issubdtype(tensor.dtype, np.number):
                raise PlacementError(f"{file}: tensor {key!r} must be a 1-D count per expert")
            if (tensor < 0).any():
                raise PlacementError(f"{file}: tensor {key!r} holds a negative count")
            iteration, layer = int(match.group(1)), int(match.group(2))
            iterations.add(iteration)
            previous = counts.get(layer)
            if previous is not None and previous.shape != tensor.shape:
                raise PlacementError(
                    f"{file}: layer {layer} counts {tensor.size} experts, elsewhere {previous.size}"
                )
            counts[layer] = tensor.astype(np.float64) + (0.0 if previous is None else previous)
    if not counts:
        raise PlacementError(f"{root}: the rank files hold no counts")
    layer_ids = sorted(counts)
    load = np.stack([counts[layer] for layer in layer_ids])
    stated = meta.get("num_experts")
    if isinstance(stated, int) and stated != load.shape[1]:
        raise PlacementError(
            f"{root}: meta_info.json says {stated} experts, the counts have {load.shape[1]}"
        )
    if num_experts is not None and num_experts != load.shape[1]:
        raise PlacementError(
            f"{root}: {load.shape[1]} experts, but --experts {num_experts} was given"
        )
    return ImportedTrace(
        source=str(root),
        format="trtllm",
        layer_ids=layer_ids,
        num_experts=int(load.shape[1]),
        load=load,
        extra={
            "ranks": len(files),
            "iterations": [min(iterations), max(iterations) + 1],
            "top_k": meta.get("num_experts_per_token"),
        },
        layers_said=True,  # FusedMoE.layer_idx: model layer ids
    )
