"""What every importer returns: an :class:`ImportedTrace`, per-token routing or load-only counts.

Each importer module is a pure converter ``load(path, options) -> ImportedTrace`` (no writes);
:meth:`ImportedTrace.write` writes it: a Parquet trace for per-token routing, a ``logical_count`` JSON
for load-only inputs (which carry no co-activation or transitions, so inventing tokens would mislead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.atomic import write_json
from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity, resolve_layers
from moe_placement.shapes import ModelShape, guess_shape, model_shape
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter


@dataclass(frozen=True)
class ImportOptions:
    """Shape information the input files do not carry.

    ``model``: a named shape (``placement.shapes``); otherwise the shape is guessed from the layer and
    expert counts, else ``hidden_size`` / ``expert_intermediate_size`` are used. ``num_experts``: the
    expert count when the file does not say it (default: largest id + 1). ``first_moe_layer`` /
    ``total_layers``: where the MoE layers sit in the model, when neither the input nor the shape says.
    """

    model: str | None = None
    num_experts: int | None = None
    hidden_size: int = 1024
    expert_intermediate_size: int = 512
    # layer identity flags (moe_placement.layers.resolve_layers): over what the input and shape say
    first_moe_layer: int | None = None
    total_layers: int | None = None


@dataclass
class ImportedTrace:
    """Per-token routing (``expert_ids``/``weights`` ``[layers, n, k]``) or load-only ``load[layers, E]``."""

    source: str
    format: str
    layer_ids: list[int]
    num_experts: int
    expert_ids: np.ndarray | None = None
    weights: np.ndarray | None = None
    step: np.ndarray | None = None
    seq_id: np.ndarray | None = None
    pos: np.ndarray | None = None
    domain: np.ndarray | None = None
    load: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Layer identity the dump itself states: layers_said when layer_ids are model layer ids (SGLang and
    # TensorRT-LLM index by model layer; vLLM by MoE layer), total_layers when it gives the model's
    # layer count (SGLang: one row per model layer).
    layers_said: bool = False
    total_layers: int | None = None

    def layer_identity(self, options: ImportOptions | None = None) -> LayerIdentity:
        """Where this input's MoE layers sit in the model: flags, else what the dump says (checked
        against a named model), else the model shape's identity, else the dump's own numbering."""
        options = options or ImportOptions()
        count = len(self.layer_ids)
        said = LayerIdentity.of(self.layer_ids, self.total_layers) if self.layers_said else None
        shape = _named_or_guessed(count, self.num_experts, options)
        known = shape.layer_identity() if shape is not None else None
        if options.first_moe_layer is not None or options.total_layers is not None:
            return resolve_layers(
                count,
                said or known,
                first_moe_layer=options.first_moe_layer,
                total_layers=options.total_layers,
                what="input",
            )
        if said is not None:
            if options.model and known is not None and known != said:
                raise PlacementError(
                    f"layer ids do not fit the model: the input's MoE layers are model layers "
                    f"{list(said.moe_layer_ids)[:4]}... of {said.total_layers}, model {options.model} has "
                    f"{list(known.moe_layer_ids)[:4]}... of {known.total_layers}"
                )
            return said
        if known is not None:
            return known
        return LayerIdentity.of(self.layer_ids, self.total_layers)

    @property
    def load_only(self) -> bool:
        return self.expert_ids is None

    @property
    def num_tokens(self) -> int:
        if self.expert_ids is None:
            return 0
        return int(self.expert_ids.shape[1])

    def meta(self, options: ImportOptions) -> TraceMeta:
        if self.expert_ids is None:
            raise PlacementError("internal: load-only import has no trace metadata")
        layers, _, k = self.expert_ids.shape
        shape = resolve_shape(layers, self.num_experts, options)
        if shape.top_k != k:
            shape = shape.replace(top_k=k)
        return TraceMeta.from_shape(
            shape.with_layers(self.layer_identity(options)),
            source=f"import:{self.format}:{self.source}",
            extra={"import_format": self.format, **self.extra},
        )

    def write(self, out: str | os.PathLike[str], options: ImportOptions | None = None) -> Path:
        """Write a Parquet trace (per-token), or for load-only inputs a load-only Parquet file or a
        ``logical_count`` JSON, atomically."""
        options = options or ImportOptions()
        out = Path(out)
        layers = self.layer_identity(options)  # checked before anything is written
        if self.load_only:
            assert self.load is not None
            if out.suffix.lower() == ".parquet":
                # A load-only Parquet (its own schema and metadata key): no tokens are invented.
                from moe_placement.traces.loadjson import write_load_parquet

                shape = guess_shape(*self.load.shape)
                if options.model:
                    shape = model_shape(options.model)
                return write_load_parquet(
                    out,
                    self.load,
                    list(layers.moe_layer_ids),
                    shape,
                    self.source,
                    total_layers=layers.total_layers,
                )
            if out.suffix.lower() != ".json":
                raise PlacementError(
                    f"{self.format} input is load-only: write it as --out NAME.parquet or NAME.json"
                )
            # one row per model layer, dense rows zero: what SGLang and DeepSeek EPLB read
            full = np.zeros((layers.total_layers, self.num_experts))
            full[list(layers.moe_layer_ids)] = self.load
            write_json(
                out, {"logical_count": full.tolist(), "source": self.source, "format": self.format}
            )
            return out
        if out.suffix.lower() == ".json":
            raise PlacementError(
                "per-token routing is written as a Parquet trace: use --out NAME.parquet"
            )
        meta = self.meta(options)
        assert self.expert_ids is not None and self.weights is not None
        n = self.num_tokens
        with TraceWriter(out, meta, with_domain=self.domain is not None) as writer:
            writer.write(
                self.step if self.step is not None else np.zeros(n, dtype=np.int32),
                self.seq_id if self.seq_id is not None else np.zeros(n, dtype=np.int64),
                self.pos if self.pos is not None else np.arange(n, dtype=np.int32),
                self.expert_ids,
                self.weights,
                self.domain,
            )
        return out


def _named_or_guessed(layers: int, experts: int, options: ImportOptions) -> ModelShape | None:
    """The named shape (checked against the input) or a unique guess; None when neither."""
    if options.model:
        return resolve_shape(layers, experts, options)
    return guess_shape(layers, experts)


def resolve_shape(layers: int, experts: int, options: ImportOptions) -> ModelShape:
    """The named shape (checked against the file), a unique guess, or a generic one from ``options``."""
    if options.model:
        shape = model_shape(options.model)
        if shape.num_moe_layers != layers or shape.num_experts != experts:
            raise PlacementError(
                f"input has {layers} MoE layers x {experts} experts; model {shape.name} has "
                f"{shape.num_moe_layers} x {shape.num_experts}"
            )
        return shape
    guessed = guess_shape(layers, experts)
    if guessed is not None:
        return guessed
    return ModelShape(
        "imported", layers, experts, 1, options.hidden_size, options.expert_intermediate_size
    )


def check_ids(ids: np.ndarray, num_experts: int | None, where: str) -> int:
    """Validate ``ids[..., k]`` (no negatives, no duplicates per token); return the expert count."""
    if ids.size == 0:
        raise PlacementError(f"{where}: no tokens")
    if not np.issubdtype(ids.dtype, np.integer):
        if not np.all(np.equal(np.mod(ids, 1), 0)):
            raise PlacementError(f"{where}: expert ids must be integers")
        ids = ids.astype(np.int64)
    if ids.min() < 0:
        raise PlacementError(f"{where}: negative expert id {int(ids.min())}")
    experts = int(ids.max()) + 1 if num_experts is None else num_experts
    if ids.max() >= experts:
        raise PlacementError(f"{where}: expert id {int(ids.max())} >= expert count {experts}")
    if ids.shape[-1] > 1:
        srt = np.sort(ids, axis=-1)
        if (srt[..., 1:] == srt[..., :-1]).any():
            raise PlacementError(f"{where}: a token lists the same expert twice")
    return experts


def uniform_weights(ids: np.ndarray) -> np.ndarray:
    """Equal gate weights where the input records ids only."""
    return np.full(ids.shape, 1.0 / ids.shape[-1], dtype=np.float32)


def require_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise PlacementError(f"input not found: {path}")
    return path
