"""A plan as the files serving engines load: SGLang, TensorRT-LLM, vLLM, DeepSeek EPLB.

Each engine indexes its maps its own way (modelled versions in docs/engines.md):

- ``sglang``: ``--init-expert-location`` file, exactly ``{"physical_to_logical_map": [[...]]}`` with one
  row per *model* layer (``ModelConfigForExpertLocation.num_layers`` is the config's
  ``num_hidden_layers``); dense layers get SGLang's own trivial row (``ExpertLocationMetadata.init_trivial``:
  slot s holds expert ``s % num_experts``), so that every logical expert has a slot in every row.
  ``.json``, or ``.pt`` (``torch.save`` of an int64 tensor) when the path ends in ``.pt``.
- ``trtllm``: the MoE load-balancer YAML of TensorRT-LLM's wide-EP example
  (``examples/wide_ep/ep_load_balancer/generate_eplb_config.py``): ``num_slots``,
  ``initial_global_assignments`` keyed by the model layer index of each MoE layer, and
  ``layer_updates_per_iter`` 0 (static).
- ``vllm``: ``EplbState``'s three maps, indexed by MoE layer: ``physical_to_logical_map [L, S]``,
  ``logical_to_physical_map [L, E, S - E + 1]`` (-1 padded, the width ``rebalance_experts`` returns) and
  ``logical_replica_count [L, E]``. No released vLLM loads such a file; see docs/engines.md.
- ``eplb``: DeepSeek EPLB's ``rebalance_experts`` outputs ``phy2log``, ``log2phy`` (width
  ``num_redundant + 1``, -1 padded) and ``logcnt``, indexed by MoE layer.

Every map is checked against the engine's rules before anything is written; a plan that breaks one
raises :class:`PlacementError` (one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moe_placement.atomic import atomic_open, atomic_path, write_json
from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity
from moe_placement.plan import Plan

EXPORT_FORMATS = ("sglang", "trtllm", "vllm", "eplb")
# the serving engine each format is loaded by (DeepSeek EPLB's tensors are an algorithm's output)
FORMAT_ENGINE = {"sglang": "sglang", "trtllm": "trtllm", "vllm": "vllm", "eplb": None}
INDEXED_BY = {
    "sglang": "model layer",
    "trtllm": "model layer",
    "vllm": "MoE layer",
    "eplb": "MoE layer",
}
SUFFIXES = {
    "sglang": (".json", ".pt"),
    "trtllm": (".yaml", ".yml"),
    "vllm": (".json",),
    "eplb": (".json",),
}
# vllm/distributed/eplb/eplb_state.py, EplbState.build: MAX_EXPERT_REDUNDANCY = 1023
VLLM_MAX_EXPERT_REDUNDANCY = 1023


@dataclass(frozen=True)
class EngineExport:
    """What one export holds: ``content`` (JSON- or YAML-ready), the layers it maps, its row count."""

    format: str
    content: dict[str, Any]
    layers: LayerIdentity
    rows: int
    num_slots: int
    ep_size: int

    @property
    def indexed_by(self) -> str:
        return INDEXED_BY[self.format]


def trivial_row(num_slots: int, num_experts: int) -> np.ndarray:
    """SGLang's placement for a layer it has no map for: slot s holds expert ``s % num_experts``."""
    return np.arange(num_slots, dtype=np.int64) % num_experts


def padded_log2phy(plan: Plan) -> np.ndarray:
    """``[layers, experts, num_redundant + 1]``: each expert's slots in slot order, -1 padded (the width
    DeepSeek EPLB's and vLLM's ``rebalance_experts`` return)."""
    compact = plan.log2phy()
    width = plan.num_redundant + 1
    out = np.full((plan.num_layers, plan.num_experts, width), -1, dtype=np.int64)
    out[:, :, : compact.shape[2]] = compact
    return out


def check_engine_rules(plan: Plan, fmt: str, ep_size: int) -> None:
    """The loaders' own checks, applied before writing (each names the rule it enforces)."""
    if ep_size < 1:
        raise PlacementError(f"EP size must be >= 1, got {ep_size}")
    if plan.num_slots % ep_size:
        raise PlacementError(
            f"{fmt}: {plan.num_slots} physical experts per layer are not divisible by the EP size "
            f"{ep_size} (each rank must hold the same number of slots)"
        )
    if plan.num_slots < plan.num_experts:
        raise PlacementError(
            f"{fmt}: {plan.num_slots} physical experts per layer cannot hold {plan.num_experts} logical experts"
        )
    if fmt == "vllm" and plan.num_redundant > VLLM_MAX_EXPERT_REDUNDANCY:
        raise PlacementError(
            f"vllm: {plan.num_redundant} redundant experts exceed vLLM's MAX_EXPERT_REDUNDANCY "
            f"({VLLM_MAX_EXPERT_REDUNDANCY})"
        )


def export_plan(
    plan: Plan, fmt: str, layers: LayerIdentity, ep_size: int | None = None
) -> EngineExport:
    """The maps ``fmt`` loads for ``plan``; ``layers`` places its MoE layers in the model."""
    if fmt not in EXPORT_FORMATS:
        raise PlacementError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    layers.check_fits(plan.num_layers)
    ep = plan.num_gpus if ep_size is None else int(ep_size)
    check_engine_rules(plan, fmt, ep)
    phy2log = plan.phy2log.astype(np.int64)
    content: dict[str, Any]
    if fmt == "sglang":
        full = np.tile(trivial_row(plan.num_slots, plan.num_experts), (layers.total_layers, 1))
        full[list(layers.moe_layer_ids)] = phy2log
        content = {"physical_to_logical_map": full.tolist()}
        rows = layers.total_layers
    elif fmt == "trtllm":
        content = {
            "num_slots": plan.num_slots,
            "initial_global_assignments": {
                int(model_layer): phy2log[moe_layer].tolist()
                for moe_layer, model_layer in enumerate(layers.moe_layer_ids)
            },
            "layer_updates_per_iter": 0,
        }
        rows = plan.num_layers
    elif fmt == "vllm":
        content = {
            "physical_to_logical_map": phy2log.tolist(),
            "logical_to_physical_map": padded_log2phy(plan).tolist(),
            "logical_replica_count": plan.logcnt().tolist(),
        }
        rows = plan.num_layers
    else:
        content = {
            "phy2log": phy2log.tolist(),
            "log2phy": padded_log2phy(plan).tolist(),
            "logcnt": plan.logcnt().tolist(),
        }
        rows = plan.num_layers
    return EngineExport(fmt, content, layers, rows, plan.num_slots, ep)


def check_out_path(fmt: str, path: str | Path) -> None:
    """Refuse an output name the engine would not read as this format (before anything is written)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES[fmt]:
        raise PlacementError(
            f"--format {fmt} is written as {' or '.join(SUFFIXES[fmt])}, not {suffix or 'a name without suffix'}"
        )


class _FlowListDumper(yaml.SafeDumper):
    """Lists inline (``[3, 1, 4]``), as TensorRT-LLM's ``save_eplb_config`` writes them."""


def _represent_flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_FlowListDumper.add_representer(list, _represent_flow_list)


def write_export(export: EngineExport, path: str | Path) -> Path:
    """Write ``export`` atomically: JSON, YAML (trtllm) or ``.pt`` (sglang, needs torch)."""
    path = Path(path)
    check_out_path(export.format, path)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        try:
            import torch
        except ImportError:
            raise PlacementError("writing a .pt map needs torch (pip install torch)") from None
        tensor = torch.tensor(export.content["physical_to_logical_map"], dtype=torch.int64)
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"physical_to_logical_map": tensor}, tmp)
    elif suffix in (".yaml", ".yml"):
        with atomic_open(path) as handle:
            yaml.dump(
                export.content,
                handle,
                Dumper=_FlowListDumper,
                width=float("inf"),
                default_flow_style=False,
                sort_keys=True,
            )
    else:
        write_json(path, export.content)
    return path


def engine_warning(plan: Plan, fmt: str) -> str | None:
    """One line when the plan's predicted balance assumes a dispatch the target engine does not run.

    The plan's ``Provenance.engine`` names the engine whose dispatch it was solved for; absent (older
    plans, or a provenance without the field) means the project's share-aware router, which no engine
    serves: the engine splits each expert's tokens over its replicas by its own rule.
    """
    target = FORMAT_ENGINE[fmt]
    if target is None:
        return None
    solved_for = getattr(plan.provenance, "engine", None) or None
    if solved_for is None:
        return (
            f"warning: plan solved for the share-aware router exported to {target}; {target} dispatches "
            f"by its own rule, so its balance differs from the plan's prediction (solve with --engine {target})"
        )
    if str(solved_for) != target:
        return (
            f"warning: plan solved for {solved_for}'s dispatch exported to {target}; "
            f"solve with --engine {target} for this engine's balance"
        )
    return None
