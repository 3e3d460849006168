"""Model shapes by name, for inputs that carry no shape (such as a load-only ``logical_count`` JSON).

Figures from the models' published configs. ``dispatch_bytes_per_elem`` counts FP8 with its per-128
scales as 1 + 4/128 bytes (as DeepEP does); combine is BF16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moe_placement.errors import PlacementError

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
    ),
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 128, 8, 2048, 768),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 8, 2, 4096, 14336),
    "olmoe-1b-7b": ModelShape("olmoe-1b-7b", 16, 64, 8, 2048, 1024),
    "gpt-oss-120b": ModelShape(
        "gpt-oss-120b",
        36,
        128,
        4,
        2880,
        2880,
        weight_bytes_per_elem=0.53125,
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
