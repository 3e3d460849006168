"""Model shapes by name, for inputs that carry no shape (such as a load-only ``logical_count`` JSON).

Figures from the models' published configs. ``dispatch_bytes_per_elem`` counts FP8 with its per-128
scales as 1 + 4/128 bytes (as DeepEP does); combine is BF16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity

FP8_WITH_SCALES = 1.0 + 4.0 / 128.0


@dataclass(frozen=True)
class ModelShape:
    """What the evaluator and solvers need to know about a MoE model."""

    name: str
    num_moe_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    shared_experts: int = 0
    dispatch_bytes_per_elem: float = 2.0
    combine_bytes_per_elem: float = 2.0
    weight_bytes_per_elem: float = 2.0
    first_moe_layer: int = 0
    compute_dtype: str = "bf16"
    # Layer identity (moe_placement.layers): the model layer of each MoE layer and the model's layer
    # count. Unset: unknown, unless total_layers is set (then MoE layers run from first_moe_layer).
    moe_layer_ids: tuple[int, ...] | None = None
    total_layers: int | None = None

    def __post_init__(self) -> None:
        for key in (
            "num_moe_layers",
            "num_experts",
            "top_k",
            "hidden_size",
            "expert_intermediate_size",
        ):
            if getattr(self, key) < 1:
                raise PlacementError(f"model shape {self.name}: {key} must be >= 1")
        if self.top_k > self.num_experts:
            raise PlacementError(f"model shape {self.name}: top_k > num_experts")

    @property
    def expert_weight_bytes(self) -> float:
        """Bytes of one routed expert's SwiGLU weights (gate, up, down)."""
        return 3.0 * self.hidden_size * self.expert_intermediate_size * self.weight_bytes_per_elem

    @property
    def flops_per_token_per_expert(self) -> float:
        """FLOPs of one token through one SwiGLU expert (three GEMMs, 2 FLOPs per MAC)."""
        return 6.0 * self.hidden_size * self.expert_intermediate_size

    def layer_identity(self) -> LayerIdentity | None:
        """Which model layers are this shape's MoE layers, when the shape says (None: unknown)."""
        if self.moe_layer_ids is not None:
            return LayerIdentity.of(self.moe_layer_ids, self.total_layers)
        if self.total_layers is not None:
            return LayerIdentity.contiguous(
                self.first_moe_layer, self.num_moe_layers, self.total_layers
            )
        return None

    def with_layers(self, layers: LayerIdentity | None) -> ModelShape:
        """This shape with ``layers`` as its layer identity (``None`` leaves it unchanged)."""
        if layers is None:
            return self
        layers.check_fits(self.num_moe_layers, f"model shape {self.name}")
        return self.replace(
            moe_layer_ids=layers.moe_layer_ids,
            total_layers=layers.total_layers,
            first_moe_layer=layers.first_moe_layer,
        )

    def replace(self, **changes: object) -> ModelShape:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


MODEL_SHAPES: dict[str, ModelShape] = {
    "deepseek-v3": ModelShape(
        "deepseek-v3",
        58,
        256,
        8,
        7168,
        2048,
        shared_experts=1,
        dispatch_bytes_per_elem=FP8_WITH_SCALES,
        combine_bytes_per_elem=2.0,
        weight_bytes_per_elem=1.0,
        first_moe_layer=3,
        compute_dtype="fp8",
        total_layers=61,  # config.json num_hidden_layers; first_k_dense_replace = 3
    ),
    # every layer is a MoE layer in these (mlp_only_layers empty, decoder_sparse_step 1)
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 128, 8, 2048, 768, total_layers=48),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 8, 2, 4096, 14336, total_layers=32),
    "olmoe-1b-7b": ModelShape("olmoe-1b-7b", 16, 64, 8, 2048, 1024, total_layers=16),
    "gpt-oss-120b": ModelShape(
        "gpt-oss-120b",
        36,
        128,
        4,
        2880,
        2880,
        weight_bytes_per_elem=0.53125,
        total_layers=36,
    ),
}


def model_shape(name: str) -> ModelShape:
    key = name.lower()
    if key not in MODEL_SHAPES:
        raise PlacementError(f"unknown model {name!r}; known: {', '.join(MODEL_SHAPES)}")
    return MODEL_SHAPES[key]


def guess_shape(num_moe_layers: int, num_experts: int) -> ModelShape | None:
    """The named shape whose layer and expert counts match, if exactly one does."""
    hits = [
        s
        for s in MODEL_SHAPES.values()
        if s.num_moe_layers == num_moe_layers and s.num_experts == num_experts
    ]
    return hits[0] if len(hits) == 1 else None
