"""Where each transformers 5.x MoE architecture keeps its router, and tiny random configs for tests.

A :class:`RouterSite` is one MoE layer's capture point: the module to hook and how to read the real
top-k selection from it. Three kinds:

* ``tuple3``: a forward hook on a router returning ``(router_logits, top_k_weights, top_k_index)``
  (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, gpt-oss, GraniteMoE, PhiMoE and most newer models);
* ``jetmoe``: JetMoE's gate returns ``(index_sorted_experts, batch_index, batch_gates, expert_size,
  logits)``; the per-token selection is rebuilt exactly from the sort permutation and group sizes;
* ``experts_pre``: a forward *pre*-hook on the fused experts module, reading the ``(hidden, top_k_index,
  top_k_weights)`` arguments it is called with (DBRX, whose router returns logits only and whose FFN
  selects the experts in a method of its own).

Reading the selection the model actually uses (never recomputing it from logits) is what makes
DeepSeek-V3's biased, group-limited routing come out right.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moe_placement.errors import PlacementError

SITE_KINDS = ("tuple3", "jetmoe", "experts_pre")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)\.")


@dataclass(frozen=True)
class RouterSite:
    """One MoE layer: its model layer index, the module path to hook, and how to read it."""

    layer: int
    path: str
    kind: str
    num_experts: int


# model_type -> (regex on module names, kind). The regexes name the MoE router of each decoder layer
# (not, for JetMoE, the mixture-of-attention router, whose path is ``self_attention.experts.router``).
ROUTER_PATTERNS: dict[str, tuple[str, str]] = {
    "mixtral": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "qwen2_moe": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "qwen3_moe": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "olmoe": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "deepseek_v3": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "deepseek_v2": (r"layers\.\d+\.mlp\.gate$", "tuple3"),
    "gpt_oss": (r"layers\.\d+\.mlp\.router$", "tuple3"),
    "phimoe": (r"layers\.\d+\.mlp\.router$", "tuple3"),
    "granitemoe": (r"layers\.\d+\.block_sparse_moe\.router$", "tuple3"),
    "jetmoe": (r"layers\.\d+\.mlp\.router$", "jetmoe"),
    "dbrx": (r"blocks\.\d+\.ffn\.experts$", "experts_pre"),
}
# Router classes of architectures not listed above that follow the common 3-tuple convention.
_GENERIC_ROUTER_CLASS = re.compile(r"(TopK|Topk|TopK_)Router$|MoeRouter$|MoEGate$")


def _experts_of(module: Any) -> int:
    for attr in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    weight = getattr(module, "weight", None)
    if weight is None:
        layer = getattr(module, "layer", None)
        weight = getattr(layer, "weight", None)
    if weight is not None and getattr(weight, "ndim", 0) == 2:
        return int(weight.shape[0])
    gate_up = getattr(module, "gate_up_proj", None)
    if gate_up is not None and getattr(gate_up, "ndim", 0) == 3:
        return int(gate_up.shape[0])
    raise PlacementError(f"cannot tell the expert count of router module {type(module).__name__}")


def find_router_sites(model: Any) -> list[RouterSite]:
    """The MoE layers of ``model`` in layer order; raises if it has none."""
    model_type = str(getattr(model.config, "model_type", ""))
    pattern, kind = ROUTER_PATTERNS.get(model_type, ("", "tuple3"))
    sites: list[RouterSite] = []
    for name, module in model.named_modules():
        if pattern:
            hit = re.search(pattern, name) is not None
        else:
            hit = _GENERIC_ROUTER_CLASS.search(type(module).__name__) is not None
        if not hit:
            continue
        match = _LAYER_INDEX.search(name + ".")
        if match is None:
            continue
        sites.append(RouterSite(int(match.group(1)), name, kind, _experts_of(module)))
    if not sites:
        raise PlacementError(
            f"model {model_type or type(model).__name__} has no MoE layers (no router module found); "
            f"known architectures: {', '.join(sorted(ROUTER_PATTERNS))}"
        )
    sites.sort(key=lambda s: s.layer)
    if len({s.layer for s in sites}) != len(sites):
        raise PlacementError(
            f"model {model_type}: more than one router per layer; cannot map layers"
        )
    if len({s.num_experts for s in sites}) != 1:
        raise PlacementError(
            f"model {model_type}: MoE layers differ in expert count; not supported"
        )
    return sites


def _tiny_common(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 1,
        "eos_token_id": 0,
        "bos_token_id": None,
    }


def _untyped(**kwargs: Any) -> dict[str, Any]:
    """Config keywords the configs accept but their typed signatures omit (such as ``head_dim``)."""
    return kwargs


def _mixtral(v: int) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        **_tiny_common(v), intermediate_size=64, num_local_experts=8, num_experts_per_tok=2
    )


def _qwen2_moe(v: int) -> Any:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **_tiny_common(v),
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def _qwen3_moe(v: int) -> Any:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        **_tiny_common(v),
        **_untyped(head_dim=16),
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def _olmoe(v: int) -> Any:
    from transformers import OlmoeConfig

    return OlmoeConfig(
        **_tiny_common(v), intermediate_size=32, num_experts=16, num_experts_per_tok=4
    )


def _deepseek_v3(v: int) -> Any:
    from transformers import DeepseekV3Config

    common = _tiny_common(v)
    common["num_key_value_heads"] = 4
    return DeepseekV3Config(
        **common,
        intermediate_size=128,
        moe_intermediate_size=32,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _gpt_oss(v: int) -> Any:
    from transformers import GptOssConfig

    common = _tiny_common(v)
    return GptOssConfig(
        **common,
        head_dim=16,
        intermediate_size=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


def _granitemoe(v: int) -> Any:
    from transformers import GraniteMoeConfig

    return GraniteMoeConfig(
        **_tiny_common(v), intermediate_size=32, num_local_experts=8, num_experts_per_tok=2
    )


def _phimoe(v: int) -> Any:
    from transformers import PhimoeConfig

    return PhimoeConfig(
        **_tiny_common(v),
        intermediate_size=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        router_jitter_noise=0.01,
        input_jitter_noise=0.0,
    )


def _dbrx(v: int) -> Any:
    from transformers import DbrxConfig

    return DbrxConfig(
        vocab_size=v,
        d_model=64,
        n_heads=4,
        n_layers=3,
        max_seq_len=512,
        pad_token_id=1,
        eos_token_id=0,
        bos_token_id=None,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 32, "moe_num_experts": 8, "moe_top_k": 2},
    )


def _jetmoe(v: int) -> Any:
    from transformers import JetMoeConfig

    return JetMoeConfig(
        vocab_size=v,
        hidden_size=64,
        num_hidden_layers=3,
        num_key_value_heads=2,
        kv_channels=16,
        intermediate_size=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        pad_token_id=1,
        eos_token_id=0,
        bos_token_id=None,
    )


TINY_CONFIGS: dict[str, Callable[[int], Any]] = {
    "mixtral": _mixtral,
    "qwen2-moe": _qwen2_moe,
    "qwen3-moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek-v3": _deepseek_v3,
    "gpt-oss": _gpt_oss,
    "granitemoe": _granitemoe,
    "phimoe": _phimoe,
    "dbrx": _dbrx,
    "jetmoe": _jetmoe,
}


def tiny_config(arch: str, vocab_size: int) -> Any:
    """A tiny random configuration of a named architecture (for tests and smoke runs)."""
    key = arch.lower().replace("_", "-")
    if key not in TINY_CONFIGS:
        raise PlacementError(f"unknown architecture {arch!r}; known: {', '.join(TINY_CONFIGS)}")
    return TINY_CONFIGS[key](vocab_size)
