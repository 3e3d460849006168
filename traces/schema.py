"""The Parquet layouts, each versioned: per-token traces and load-only expert counts.

Per-token trace, version 1 (``TRACE_SCHEMA_VERSION``). One row per (token, MoE layer)::

    step int32, seq_id int64, pos int32, layer int16,
    expert_ids fixed_size_list<int16>[k]   (ordered by descending gate weight; [0] is the top-1),
    weights    fixed_size_list<float32>[k],
    domain     string (optional)

Layout invariant (what makes streaming and cross-layer joins cheap): every row group holds *complete*
tokens, layer-major: all of its n tokens at layer 0, then the same n tokens in the same order at layer 1,
and so on. File metadata (key ``moe_placement.trace``) is a JSON object with the fields of
:class:`TraceMeta`.

Load-only counts, version 1 (``LOAD_SCHEMA_VERSION``): what ``placement import --format logical-count
IN --out T.parquet`` writes. One row per (MoE layer, expert)::

    layer int16, expert int32, count float64

File metadata sits under its own key (``moe_placement.load``, the fields of :class:`LoadMeta`), so that
no reader mistakes expert counts for per-token routing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity
from moe_placement.shapes import ModelShape

TRACE_SCHEMA_VERSION = 1
META_KEY = b"moe_placement.trace"
REQUIRED_META = (
    "schema_version",
    "model_name",
    "num_moe_layers",
    "num_experts",
    "top_k",
    "hidden_size",
    "expert_intermediate_size",
    "shared_experts",
    "dispatch_bytes_per_elem",
    "combine_bytes_per_elem",
    "source",
)


@dataclass(frozen=True)
class TraceMeta:
    """What a trace says about the model and where it came from."""

    model_name: str
    num_moe_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    shared_experts: int = 0
    dispatch_bytes_per_elem: float = 2.0
    combine_bytes_per_elem: float = 2.0
    source: str = "unknown"
    schema_version: int = TRACE_SCHEMA_VERSION
    moe_layer_ids: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # model layers, dense ones included (captured: the HF config's num_hidden_layers); None: unknown
    total_layers: int | None = None

    def __post_init__(self) -> None:
        for key in (
            "num_moe_layers",
            "num_experts",
            "top_k",
            "hidden_size",
            "expert_intermediate_size",
        ):
            if int(getattr(self, key)) < 1:
                raise PlacementError(f"trace metadata: {key} must be >= 1")
        if self.top_k > self.num_experts:
            raise PlacementError("trace metadata: top_k larger than num_experts")
        if self.num_experts > 32767:
            raise PlacementError("trace metadata: at most 32767 experts (ids are int16)")
        ids, total = self.moe_layer_ids, self.total_layers
        if total is not None and (not isinstance(total, int) or isinstance(total, bool)):
            raise PlacementError(f"trace metadata: total_layers {total!r} is not an integer")
        if ids is not None and not (
            isinstance(ids, list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise PlacementError("trace metadata: moe_layer_ids must be a list of integers")
        self.layer_identity()  # ids increasing, one per MoE layer, inside the model

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        if data["total_layers"] is None:  # unknown: left out, so older files stay identical
            del data["total_layers"]
        return json.dumps(data, sort_keys=True).encode()

    def layer_identity(self) -> LayerIdentity | None:
        """The model layer of each MoE layer and the model's layer count, when the trace records them."""
        if not self.moe_layer_ids:
            return None
        if len(self.moe_layer_ids) != self.num_moe_layers:
            raise PlacementError(
                f"trace metadata: {len(self.moe_layer_ids)} moe_layer_ids for {self.num_moe_layers} layers"
            )
        return LayerIdentity.of(self.moe_layer_ids, self.total_layers)

    @classmethod
    def from_json(cls, raw: bytes) -> TraceMeta:
        try:
            data = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            raise PlacementError("trace metadata is not valid JSON") from None
        if not isinstance(data, dict):
            raise PlacementError(f"trace metadata must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_META if k not in data]
        if missing:
            raise PlacementError(f"trace metadata missing: {', '.join(missing)}")
        if not _is_int(data["schema_version"]) or data["schema_version"] != TRACE_SCHEMA_VERSION:
            raise PlacementError(
                f"trace schema_version {data['schema_version']!r} not supported (expected {TRACE_SCHEMA_VERSION})"
            )
        _check_meta_types(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def shape(self) -> ModelShape:
        layers = self.layer_identity()
        first = layers.first_moe_layer if layers else 0
        return ModelShape(
            name=self.model_name,
            num_moe_layers=self.num_moe_layers,
            num_experts=self.num_experts,
            top_k=self.top_k,
            hidden_size=self.hidden_size,
            expert_intermediate_size=self.expert_intermediate_size,
            shared_experts=self.shared_experts,
            dispatch_bytes_per_elem=self.dispatch_bytes_per_elem,
            combine_bytes_per_elem=self.combine_bytes_per_elem,
            first_moe_layer=first,
            moe_layer_ids=layers.moe_layer_ids if layers else None,
            total_layers=layers.total_layers if layers else None,
        )

    @classmethod
    def from_shape(cls, shape: ModelShape, source: str, **extra: Any) -> TraceMeta:
        """Metadata for ``shape``; its layer identity is recorded unless ``extra`` names one."""
        layers = shape.layer_identity()
        if layers is not None and "moe_layer_ids" not in extra:
            extra = {"moe_layer_ids": list(layers.moe_layer_ids), **extra}
        if layers is not None and "total_layers" not in extra:
            extra = {"total_layers": layers.total_layers, **extra}
        return cls(
            model_name=shape.name,
            num_moe_layers=shape.num_moe_layers,
            num_experts=shape.num_experts,
            top_k=shape.top_k,
            hidden_size=shape.hidden_size,
            expert_intermediate_size=shape.expert_intermediate_size,
            shared_experts=shape.shared_experts,
            dispatch_bytes_per_elem=shape.dispatch_bytes_per_elem,
            combine_bytes_per_elem=shape.combine_bytes_per_elem,
            source=source,
            **extra,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta_types(data: dict[str, Any]) -> None:
    """Each metadata field of the type and range it must have, checked where the file is read, so that
    ``num_experts: "sixteen"`` is refused naming the field instead of failing in some reader later."""

    def bad(key: str, want: str) -> PlacementError:
        return PlacementError(f"trace metadata: {key} must be {want}, got {data[key]!r}")

    for key in (
        "num_moe_layers",
        "num_experts",
        "top_k",
        "hidden_size",
        "expert_intermediate_size",
    ):
        if not _is_int(data[key]) or data[key] < 1:
            raise bad(key, "an integer >= 1")
    if not _is_int(data["shared_experts"]) or data["shared_experts"] < 0:
        raise bad("shared_experts", "an integer >= 0")
    for key in ("dispatch_bytes_per_elem", "combine_bytes_per_elem"):
        value = data[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad(key, "a number")
        if not math.isfinite(value) or value <= 0:
            raise bad(key, "a finite number > 0")
    for key in ("model_name", "source"):
        if not isinstance(data[key], str):
            raise bad(key, "a string")
    if data.get("extra") is not None and not isinstance(data["extra"], dict):
        raise bad("extra", "an object")
    ids = data.get("moe_layer_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
            raise bad("moe_layer_ids", "a list of model layer indices >= 0")
        if len(ids) != data["num_moe_layers"]:
            raise bad("moe_layer_ids", f"{data['num_moe_layers']} indices (one per MoE layer)")
        if len(set(ids)) != len(ids):
            raise bad("moe_layer_ids", "distinct")


def arrow_schema(meta: TraceMeta, with_domain: bool) -> pa.Schema:
    fields = [
        pa.field("step", pa.int32(), nullable=False),
        pa.field("seq_id", pa.int64(), nullable=False),
        pa.field("pos", pa.int32(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("expert_ids", pa.list_(pa.int16(), meta.top_k), nullable=False),
        pa.field("weights", pa.list_(pa.float32(), meta.top_k), nullable=False),
    ]
    if with_domain:
        fields.append(pa.field("domain", pa.string()))
    return pa.schema(fields, metadata={META_KEY: meta.to_json()})


# ---- load-only counts ------------------------------------------------------------------------------

LOAD_SCHEMA_VERSION = 1
LOAD_META_KEY = b"moe_placement.load"
LOAD_COLUMNS = ("layer", "expert", "count")


@dataclass(frozen=True)
class LoadMeta:
    """What a load-only file says: its shape, the model layer of each row, the model if known."""

    num_moe_layers: int
    num_experts: int
    moe_layer_ids: list[int]
    model_name: str | None = None
    source: str = "unknown"
    schema_version: int = LOAD_SCHEMA_VERSION
    kind: str = "load-only"
    total_layers: int | None = None  # model layers, dense ones included; None: unknown

    def __post_init__(self) -> None:
        if self.num_moe_layers < 1 or self.num_experts < 1:
            raise PlacementError("load-only metadata: num_moe_layers and num_experts must be >= 1")
        if len(self.moe_layer_ids) != self.num_moe_layers:
            raise PlacementError(
                f"load-only metadata: {len(self.moe_layer_ids)} moe_layer_ids for "
                f"{self.num_moe_layers} layers"
            )
        self.layer_identity()  # ids increasing and inside the model

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        if data["total_layers"] is None:  # unknown: left out, as older writers did
            del data["total_layers"]
        return json.dumps(data).encode()

    def layer_identity(self) -> LayerIdentity:
        return LayerIdentity.of(self.moe_layer_ids, self.total_layers)

    @classmethod
    def from_json(cls, raw: bytes) -> LoadMeta:
        """Parse and check the metadata; files that omit ``moe_layer_ids`` number rows from 0."""
        try:
            data = json.loads(raw)
            version = int(data.get("schema_version", 0))
            layers, experts = int(data["num_moe_layers"]), int(data["num_experts"])
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise PlacementError("load-only metadata is not a valid JSON object") from None
        except KeyError as exc:
            raise PlacementError(f"load-only metadata missing: {exc.args[0]}") from None
        if version != LOAD_SCHEMA_VERSION:
            raise PlacementError(
                f"load-only schema_version {data.get('schema_version')} not supported "
                f"(expected {LOAD_SCHEMA_VERSION})"
            )
        name = data.get("model_name")
        total = data.get("total_layers")
        if total is not None and not isinstance(total, int):
            raise PlacementError("load-only metadata: total_layers must be an integer")
        return cls(
            num_moe_layers=layers,
            num_experts=experts,
            moe_layer_ids=[int(i) for i in data.get("moe_layer_ids") or range(layers)],
            model_name=None if name is None else str(name),
            source=str(data.get("source", "unknown")),
            total_layers=total,
        )


def load_arrow_schema(meta: LoadMeta) -> pa.Schema:
    """Columns of a load-only file, with ``meta`` under :data:`LOAD_META_KEY`."""
    fields = [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("expert", pa.int32(), nullable=False),
        pa.field("count", pa.float64(), nullable=False),
    ]
    return pa.schema(fields, metadata={LOAD_META_KEY: meta.to_json()})
