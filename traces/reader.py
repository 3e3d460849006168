"""Streaming trace reader: one row group at a time, validated as it goes.

Memory is bounded by the largest row group (the writer bounds it), never by the file: a 50-million-row
trace is read in pieces.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_placement.errors import PlacementError
from moe_placement.traces.schema import LOAD_META_KEY, META_KEY, TraceMeta

COLUMNS = ("step", "seq_id", "pos", "layer", "expert_ids", "weights")


@dataclass(frozen=True)
class TokenChunk:
    """``n`` complete tokens: ``expert_ids[layers, n, k]`` (int16, top-1 first), ``weights[layers, n, k]``."""

    step: np.ndarray
    seq_id: np.ndarray
    pos: np.ndarray
    expert_ids: np.ndarray
    weights: np.ndarray
    domain: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.seq_id.shape[0])


def _fixed_list_to_numpy(column: pa.ChunkedArray, k: int, what: str) -> np.ndarray:
    array = column.combine_chunks()
    if not pa.types.is_fixed_size_list(array.type) or array.type.list_size != k:
        raise PlacementError(f"trace column {what} must be a fixed-size list of top_k={k} values")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)


class TraceFile:
    """An open trace: metadata plus a streaming iterator over validated :class:`TokenChunk`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise PlacementError(f"trace file not found: {self.path}")
        if self.path.is_dir():
            raise PlacementError(f"trace path is a directory: {self.path}")
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PlacementError(
                f"trace {self.path} is not a readable Parquet file: {first}"
            ) from None
        schema = self._file.schema_arrow
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None and LOAD_META_KEY in (schema.metadata or {}):
            raise PlacementError(
                f"{self.path} is a load-only file (expert counts, no per-token routing): "
                "this needs a per-token trace"
            )
        if raw is None:
            raise PlacementError(
                f"trace {self.path}: metadata missing (no {META_KEY.decode()} key)"
            )
        self.meta = TraceMeta.from_json(raw)
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise PlacementError(f"trace {self.path}: columns missing: {', '.join(missing)}")
        for name in ("expert_ids", "weights"):
            typ = schema.field(name).type
            if not pa.types.is_fixed_size_list(typ) or typ.list_size != self.meta.top_k:
                raise PlacementError(
                    f"trace {self.path}: column {name} must be a fixed-size list of top_k={self.meta.top_k}"
                )
        integer_columns = ("step", "seq_id", "pos", "layer")
        value_types = {name: schema.field(name).type for name in integer_columns}
        value_types["expert_ids"] = schema.field("expert_ids").type.value_type
        for name, typ in value_types.items():
            if not pa.types.is_integer(typ):
                raise PlacementError(
                    f"trace {self.path}: column {name} must hold integers, not {typ}"
                )
        if not pa.types.is_floating(schema.field("weights").type.value_type):
            raise PlacementError(
                f"trace {self.path}: column weights must hold floating-point values"
            )
        self.has_domain = "domain" in schema.names
        self.num_rows = self._file.metadata.num_rows
        if self.num_rows == 0:  # nothing to place, simulate or count; consumers would divide by 0
            raise PlacementError(f"trace {self.path} holds no tokens")
        if self.num_rows % self.meta.num_moe_layers:
            raise PlacementError(
                f"trace {self.path}: {self.num_rows} rows is not a multiple of {self.meta.num_moe_layers} layers"
            )

    @property
    def num_tokens(self) -> int:
        return self.num_rows // self.meta.num_moe_layers

    @property
    def num_row_groups(self) -> int:
        return self._file.num_row_groups

    def fingerprint(self) -> str:
        """Hash of the file's bytes (16 hex digits): ties a plan to the trace it was fitted to."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    def iter_chunks(self) -> Iterator[TokenChunk]:
        """Yield each row group as validated complete tokens."""
        meta = self.meta
        layers, k = meta.num_moe_layers, meta.top_k
        columns = list(COLUMNS) + (["domain"] if self.has_domain else [])
        for group in range(self._file.num_row_groups):
            try:
                table = self._file.read_row_group(group, columns=columns)
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise PlacementError(
                    f"trace {self.path}: row group {group} unreadable: {first}"
                ) from None
            rows = table.num_rows
            where = f"trace {self.path} row group {group}"
            if rows % layers:
                raise PlacementError(f"{where}: {rows} rows is not whole tokens x {layers} layers")
            n = rows // layers
            layer = table.column("layer").to_numpy()
            if not np.array_equal(layer, np.repeat(np.arange(layers), n)):
                raise PlacementError(
                    f"{where}: layers not contiguous 0..{layers - 1} (layer-major, whole tokens)"
                )
            step = table.column("step").to_numpy().reshape(layers, n)
            seq = table.column("seq_id").to_numpy().reshape(layers, n)
            pos = table.column("pos").to_numpy().reshape(layers, n)
            if layers > 1 and not (
                (seq == seq[0]).all() and (pos == pos[0]).all() and (step == step[0]).all()
            ):
                raise PlacementError(
                    f"{where}: tokens differ between layers (each layer must list the same tokens)"
                )
            ids = _fixed_list_to_numpy(table.column("expert_ids"), k, "expert_ids").reshape(
                layers, n, k
            )
            weights = _fixed_list_to_numpy(table.column("weights"), k, "weights").reshape(
                layers, n, k
            )
            if ids.size and (ids.min() < 0 or ids.max() >= meta.num_experts):
                bad = int(ids.max()) if ids.max() >= meta.num_experts else int(ids.min())
                raise PlacementError(
                    f"{where}: expert id {bad} out of range [0, {meta.num_experts})"
                )
            if k > 1:
                srt = np.sort(ids, axis=2)
                if (srt[..., 1:] == srt[..., :-1]).any():
                    raise PlacementError(f"{where}: a token lists the same expert twice")
            if not np.isfinite(weights).all():
                raise PlacementError(f"{where}: non-finite gate weight")
            domain = None
            if self.has_domain:
                domain = np.asarray(table.column("domain").to_pylist()[:n], dtype=object)
            yield TokenChunk(
                step=step[0].copy(),
                seq_id=seq[0].copy(),
                pos=pos[0].copy(),
                expert_ids=ids.astype(np.int64),
                weights=weights.astype(np.float32),
                domain=domain,
            )

    def validate(self) -> int:
        """Read the whole file, checking every invariant; return the number of tokens."""
        return sum(chunk.num_tokens for chunk in self.iter_chunks())

    def read_all(self) -> TokenChunk:
        """The whole trace in memory (small traces and tests only)."""
        chunks = list(self.iter_chunks())
        if not chunks:
            raise PlacementError(f"trace {self.path} holds no tokens")
        domain = None
        if self.has_domain:
            domain = np.concatenate([c.domain for c in chunks if c.domain is not None])
        return TokenChunk(
            step=np.concatenate([c.step for c in chunks]),
            seq_id=np.concatenate([c.seq_id for c in chunks]),
            pos=np.concatenate([c.pos for c in chunks]),
            expert_ids=np.concatenate([c.expert_ids for c in chunks], axis=1),
            weights=np.concatenate([c.weights for c in chunks], axis=1),
            domain=domain,
        )
