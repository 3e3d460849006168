"""Synthetic workloads for what-if sweeps: a named model shape plus a seeded synthetic routing profile.

When no trace of the model exists (or the sweep changes the expert count, which a trace fixes), each
expert count gets its own seeded synthetic trace (:mod:`moe_placement.traces.synth`) with the model's top-k, hidden and
expert sizes. The generator is deterministic, so the same profile gives the same bytes, the same
fingerprint and hence the same cache keys on every run; files are reused when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moe_placement.atomic import atomic_path
from moe_placement.errors import PlacementError
from moe_placement.shapes import ModelShape


@dataclass(frozen=True)
class SyntheticProfile:
    """Routing profile knobs (see :class:`moe_placement.traces.synth.SynthConfig`). ``layers`` MoE layers are generated
    (fewer than the model's keeps the simulation short; per-layer results are what the report shows)."""

    layers: int = 4
    tokens: int = 4096
    zipf_s: float = 0.8
    affinity: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers < 1 or self.tokens < 1:
            raise PlacementError("synthetic profile: layers and tokens must be >= 1")
        if self.zipf_s < 0 or not 0 <= self.affinity <= 1:
            raise PlacementError("synthetic profile: zipf must be >= 0 and affinity in [0, 1]")


def synthetic_trace(
    shape: ModelShape, num_experts: int, profile: SyntheticProfile, folder: str | Path
) -> Path:
    """The path of the synthetic trace for ``shape`` with ``num_experts`` experts (generated if absent)."""
    from moe_placement.traces.synth import SynthConfig, generate

    if num_experts < shape.top_k:
        raise PlacementError(
            f"{num_experts} experts is fewer than {shape.name}'s top-{shape.top_k}"
        )
    name = (
        f"{shape.name}-e{num_experts}-l{profile.layers}-t{profile.tokens}-z{profile.zipf_s:g}"
        f"-a{profile.affinity:g}-s{profile.seed}.parquet"
    )
    path = Path(folder) / name
    if path.exists():
        return path
    config = SynthConfig(
        num_layers=profile.layers,
        num_experts=num_experts,
        top_k=shape.top_k,
        num_tokens=profile.tokens,
        zipf_s=profile.zipf_s,
        affinity=profile.affinity,
        hidden_size=shape.hidden_size,
        expert_intermediate_size=shape.expert_intermediate_size,
        model_name=shape.name,
    )
    with atomic_path(path, suffix=".parquet") as tmp:
        generate(config, tmp, seed=profile.seed)
    return path
