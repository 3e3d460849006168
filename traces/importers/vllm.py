"""vLLM routed-experts output (``--enable-return-routed-experts``).

vLLM returns, per completion, ``routed_experts``: an int16 array ``[tokens, num_moe_layers, top_k]`` of
logical expert ids covering the prompt and the generated tokens that were forwarded
(``prompt + output - 1``); over HTTP it is a base64-encoded ``.npy``. Its layer axis counts MoE layers
only, so which model layers they are comes from the model shape (``--model``) or
``--first-moe-layer`` / ``--total-layers``. Accepted inputs:

* one ``.npy`` (one request), a ``.npz`` (one array per request, in key order) or a folder of ``.npy``;
* a ``.jsonl`` file, one request per line: ``{"routed_experts": <base64 .npy string or nested list>,
  "prompt_tokens": P (optional), "domain": ... (optional)}``.

Each request becomes a sequence; with ``prompt_tokens`` the prompt is ``step`` 0 and generated token i is
step i + 1. vLLM reports no gate weights: they are equal.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from pathlib import Path

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.importers.base import (
    ImportedTrace,
    ImportOptions,
    check_ids,
    require_file,
    uniform_weights,
)


def _decode_array(value: object, where: str) -> np.ndarray:
    if isinstance(value, str):
        try:
            return np.load(io.BytesIO(base64.b64decode(value, validate=True)), allow_pickle=False)
        except (binascii.Error, ValueError, OSError):
            raise PlacementError(f"{where}: routed_experts is not a base64-encoded .npy") from None
    try:
        return np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):
        raise PlacementError(
            f"{where}: routed_experts must be a nested list or base64 .npy"
        ) from None


def _requests(path: Path) -> list[tuple[np.ndarray, int | None, str | None]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise PlacementError(f"{path}: no .npy files in the folder")
        return [(np.load(f, allow_pickle=False), None, None) for f in files]
    if suffix == ".npy":
        return [(np.load(path, allow_pickle=False), None, None)]
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return [(archive[key], None, None) for key in sorted(archive.files)]
    if suffix in (".jsonl", ".json"):
        out: list[tuple[np.ndarray, int | None, str | None]] = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    raise PlacementError(f"{path}:{number}: not valid JSON") from None
                if not isinstance(item, dict) or "routed_experts" not in item:
                    raise PlacementError(
                        f"{path}:{number}: expected an object with 'routed_experts'"
                    )
                prompt = item.get("prompt_tokens", item.get("num_prompt_tokens"))
                domain = item.get("domain")
                out.append(
                    (
                        _decode_array(item["routed_experts"], f"{path}:{number}"),
                        None if prompt is None else int(prompt),
                        None if domain is None else str(domain),
                    )
                )
        return out
    raise PlacementError(f"{path}: expected .npy, .npz, .jsonl or a folder of .npy files")


def load(path: str | os.PathLike[str], options: ImportOptions | None = None) -> ImportedTrace:
    options = options or ImportOptions()
    root = require_file(path)
    try:
        requests = _requests(root)
    except (ValueError, OSError) as exc:
        raise PlacementError(f"{root}: unreadable ({str(exc).splitlines()[0]})") from None
    if not requests:
        raise PlacementError(f"{root}: no requests")
    shapes = {r[0].shape[1:] for r in requests if r[0].ndim == 3}
    if any(r[0].ndim != 3 for r in requests) or len(shapes) != 1:
        raise PlacementError(
            f"{root}: every routed_experts array must be [tokens, layers, top_k] of one shape"
        )
    ids = np.concatenate([r[0] for r in requests], axis=0).transpose(1, 0, 2)
    experts = check_ids(ids, options.num_experts, str(root))
    seq = np.concatenate([np.full(len(r[0]), i, dtype=np.int64) for i, r in enumerate(requests)])
    pos = np.concatenate([np.arange(len(r[0]), dtype=np.int32) for r in requests])
    step = np.concatenate(
        [
            np.zeros(len(r[0]), dtype=np.int32)
            if r[1] is None
            else np.maximum(np.arange(len(r[0])) - r[1] + 1, 0).astype(np.int32)
            for r in requests
        ]
    )
    domains = [r[2] for r in requests]
    domain = None
    if any(d is not None for d in domains):
        domain = np.concatenate(
            [
                np.full(len(r[0]), d or "", dtype=object)
                for r, d in zip(requests, domains, strict=True)
            ]
        )
    ids = np.ascontiguousarray(ids.astype(np.int64))
    return ImportedTrace(
        source=str(root),
        format="vllm",
        layer_ids=list(range(ids.shape[0])),
        num_experts=experts,
        expert_ids=ids,
        weights=uniform_weights(ids),
        step=step,
        seq_id=seq,
        pos=pos,
        domain=domain,
    )
