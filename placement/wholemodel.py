"""Whole-model figures of a MoE model: what surrounds the MoE layers, and what a GPU must hold.

The MoE shape (:mod:`moe_placement.shapes`) covers the routed experts. A capacity question is about the
whole model, so this module adds, per named model, the layer counts (MoE and dense), the attention and
the dense FFN, and the figures of a memory model:

* **time** of the parts outside the routed experts, per layer and per step of ``tokens_per_gpu`` tokens
  on every GPU, each a roofline ``max(FLOPs / (peak x efficiency), bytes read / HBM bandwidth)``:
  attention (projections plus the score and value products over the context), the shared expert, and the
  dense FFN of the dense layers. Embedding and LM head are left out (one of each per step, under 1% of a
  58-layer model's FLOPs);
* **memory** per GPU under expert parallelism with data-parallel attention (as DeepSeek and SGLang serve):
  every GPU holds all non-routed weights, its expert slots (``slots_per_gpu x moe_layers x bytes of one
  expert``), and the KV cache of the tokens it keeps (``kv_tokens x kv bytes per token``).

Figures come from each model's published ``config.json`` (Hugging Face); the KV cache is BF16 unless a
model's entry says otherwise. DeepSeek-V3's MLA caches the compressed latent and the rope key per layer:
(512 + 64) x 2 B = 1,152 B per token per layer, 70,272 B per token over its 61 layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moe_placement.cluster import ClusterSpec, GPUSpec
from moe_placement.errors import PlacementError
from moe_placement.shapes import ModelShape, model_shape

PHASES = ("prefill", "decode")
GIB = 1024.0**3

# Tokens per GPU per step when none is given: a prefill step of DeepSeek's serving (4096 tokens per
# GPU, as DeepEP's normal kernels are benchmarked) and a decode step of 128 sequences per GPU (as
# DeepEP's low-latency kernels are benchmarked).
DEFAULT_TOKENS_PER_GPU_BY_PHASE = {"prefill": 4096, "decode": 128}
DEFAULT_CONTEXT_TOKENS = 4096
# Share of GPU memory kept free for activations, CUDA graphs and fragmentation (SGLang's default
# ``mem_fraction_static`` leaves about this much).
DEFAULT_RESERVE_FRACTION = 0.1


@dataclass(frozen=True)
class WholeModel:
    """The non-routed parts of a MoE model, per layer unless named otherwise."""

    name: str
    num_layers: int  # every transformer layer, dense and MoE
    num_moe_layers: int
    attention_params: float  # weights of one layer's attention (projections)
    score_flops_per_context_token: float  # QK^T and PV FLOPs of one query token per context token
    kv_bytes_per_token_layer: float  # KV cache bytes of one token in one layer
    dense_intermediate_size: int  # FFN width of the dense layers (0: none)
    other_params: float  # embeddings, LM head, norms: held by every GPU, not timed
    weight_bytes_per_elem: float  # of the non-routed weights

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes of one token over the whole model."""
        return self.kv_bytes_per_token_layer * self.num_layers

    def non_expert_weight_bytes(self, shape: ModelShape) -> float:
        """Bytes of every weight but the routed experts: attention, dense FFNs, shared experts, others."""
        dense_ffn = 3.0 * shape.hidden_size * self.dense_intermediate_size * self.num_dense_layers
        shared = 3.0 * shape.hidden_size * shape.expert_intermediate_size * shape.shared_experts
        params = (
            self.attention_params * self.num_layers
            + dense_ffn
            + shared * self.num_moe_layers
            + self.other_params
        )
        return params * self.weight_bytes_per_elem


def _gqa(hidden: int, heads: int, kv_heads: int, head_dim: int) -> tuple[float, float, float]:
    """(attention params, score FLOPs per context token, KV bytes per token-layer in BF16) of GQA."""
    params = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    return float(params), 4.0 * heads * head_dim, 2.0 * kv_heads * head_dim * 2.0


def _deepseek_v3() -> WholeModel:
    # MLA (config.json): hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, qk_nope 128,
    # qk_rope 64, v_head 128; 61 layers, the first 3 dense (intermediate 18432); vocab 129280.
    hidden, heads, q_rank, kv_rank, nope, rope, v_dim = 7168, 128, 1536, 512, 128, 64, 128
    params = (
        hidden * q_rank  # q_a
        + q_rank * heads * (nope + rope)  # q_b
        + hidden * (kv_rank + rope)  # kv_a (with the rope key)
        + kv_rank * heads * (nope + v_dim)  # kv_b
        + heads * v_dim * hidden  # o
    )
    return WholeModel(
        name="deepseek-v3",
        num_layers=61,
        num_moe_layers=58,
        attention_params=float(params),
        score_flops_per_context_token=2.0 * heads * (nope + rope + v_dim),
        kv_bytes_per_token_layer=(kv_rank + rope) * 2.0,
        dense_intermediate_size=18432,
        other_params=2.0 * 129280 * hidden,
        weight_bytes_per_elem=1.0,  # FP8 weights, as released
    )


def _from_gqa(
    name: str, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int, wbytes: float
) -> WholeModel:
    shape = model_shape(name)
    params, score, kv = _gqa(shape.hidden_size, heads, kv_heads, head_dim)
    return WholeModel(
        name=name,
        num_layers=layers,
        num_moe_layers=shape.num_moe_layers,
        attention_params=params,
        score_flops_per_context_token=score,
        kv_bytes_per_token_layer=kv,
        dense_intermediate_size=0,
        other_params=2.0 * vocab * shape.hidden_size,
        weight_bytes_per_elem=wbytes,
    )


WHOLE_MODELS: dict[str, WholeModel] = {
    "deepseek-v3": _deepseek_v3(),
    # config.json figures: heads, KV heads, head dim, vocabulary
    "qwen3-30b-a3b": _from_gqa("qwen3-30b-a3b", 48, 32, 4, 128, 151936, 2.0),
    "mixtral-8x7b": _from_gqa("mixtral-8x7b", 32, 32, 8, 128, 32000, 2.0),
    "olmoe-1b-7b": _from_gqa("olmoe-1b-7b", 16, 16, 16, 128, 50304, 2.0),
    # gpt-oss alternates sliding-window (128) and full attention; counted as full (an upper bound).
    "gpt-oss-120b": _from_gqa("gpt-oss-120b", 36, 64, 8, 64, 201088, 2.0),
}


def whole_model(name: str) -> WholeModel | None:
    """The whole-model figures of a named model, or None when only its MoE shape is known."""
    return WHOLE_MODELS.get(name.lower())


def _roofline_us(
    flops: float, read_bytes: float, peak_tflops: float, cluster: ClusterSpec
) -> float:
    t_flops = flops / (peak_tflops * 1e12 * cluster.compute_efficiency)
    t_bytes = read_bytes / (cluster.gpu.hbm_gbytes_per_s * 1e9)
    return max(t_flops, t_bytes) * 1e6


def _peak(shape: ModelShape, gpu: GPUSpec) -> float:
    return gpu.fp8_tflops if shape.compute_dtype == "fp8" else gpu.bf16_tflops


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer times (us) of one step outside the routed experts, on one GPU."""

    attention_us: float
    shared_expert_us: float
    dense_ffn_us: float

    @property
    def dense_layer_us(self) -> float:
        """One dense layer: its attention and its dense FFN, one after the other."""
        return self.attention_us + self.dense_ffn_us


def layer_costs(
    model: WholeModel,
    shape: ModelShape,
    cluster: ClusterSpec,
    *,
    phase: str,
    tokens_per_gpu: int,
    context_tokens: int,
) -> LayerCosts:
    """Roofline times of attention, shared expert and dense FFN per layer, for ``tokens_per_gpu`` tokens
    on one GPU. Prefill: causal attention over on average half the context, KV written once; decode: one
    new token per sequence attending to the whole context, whose KV cache is read from HBM. Projections
    run at the model's GEMM precision (FP8 for DeepSeek-V3), the score products at BF16."""
    if phase not in PHASES:
        raise PlacementError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if tokens_per_gpu < 1 or context_tokens < 1:
        raise PlacementError("tokens per GPU and context tokens must be >= 1")
    gpu = cluster.gpu
    peak = _peak(shape, gpu)
    tokens = float(tokens_per_gpu)
    weights = model.attention_params * model.weight_bytes_per_elem
    if phase == "prefill":
        mean_context = context_tokens / 2.0
        kv_read = 0.0
    else:
        mean_context = float(context_tokens)
        kv_read = tokens * context_tokens * model.kv_bytes_per_token_layer
    attention = _roofline_us(
        2.0 * model.attention_params * tokens, weights, peak, cluster
    ) + _roofline_us(
        model.score_flops_per_context_token * mean_context * tokens,
        kv_read,
        gpu.bf16_tflops,
        cluster,
    )
    expert_bytes = shape.expert_weight_bytes
    shared = (
        _roofline_us(
            tokens * shape.flops_per_token_per_expert * shape.shared_experts,
            expert_bytes * shape.shared_experts,
            peak,
            cluster,
        )
        if shape.shared_experts
        else 0.0
    )
    dense_flops_per_token = 6.0 * shape.hidden_size * model.dense_intermediate_size
    dense = (
        _roofline_us(
            tokens * dense_flops_per_token,
            3.0 * shape.hidden_size * model.dense_intermediate_size * shape.weight_bytes_per_elem,
            peak,
            cluster,
        )
        if model.dense_intermediate_size
        else 0.0
    )
    return LayerCosts(attention_us=attention, shared_expert_us=shared, dense_ffn_us=dense)


@dataclass(frozen=True)
class MemoryModel:
    """Per-GPU memory of expert parallelism with data-parallel attention (every figure in bytes)."""

    gpu_memory_bytes: float
    reserve_bytes: float  # kept free for activations and the runtime
    non_expert_weight_bytes: float  # on every GPU
    expert_slot_bytes: float  # one expert slot in every MoE layer
    kv_cache_bytes: float  # the KV cache of the tokens each GPU keeps

    @property
    def free_for_slots_bytes(self) -> float:
        return (
            self.gpu_memory_bytes
            - self.reserve_bytes
            - self.non_expert_weight_bytes
            - self.kv_cache_bytes
        )

    def max_slots_per_gpu(self) -> int:
        """Most expert slots per GPU (each across all MoE layers) that fit beside weights and KV cache."""
        return max(0, math.floor(self.free_for_slots_bytes / self.expert_slot_bytes))

    def used_bytes(self, slots_per_gpu: int) -> float:
        return (
            self.reserve_bytes
            + self.non_expert_weight_bytes
            + slots_per_gpu * self.expert_slot_bytes
            + self.kv_cache_bytes
        )

    def max_redundant(self, num_experts: int, num_gpus: int) -> int | None:
        """Most redundant experts per layer that fit on ``num_gpus`` GPUs, keeping every GPU's slot count
        equal (so experts + redundant is a multiple of the GPU count); None when not even the experts
        without redundancy fit."""
        total = self.max_slots_per_gpu() * num_gpus
        if total < num_experts:
            return None
        return total - num_experts


def memory_model(
    model: WholeModel,
    shape: ModelShape,
    gpu: GPUSpec,
    *,
    kv_tokens_per_gpu: float,
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
) -> MemoryModel:
    """The memory model of ``model`` on one ``gpu`` keeping ``kv_tokens_per_gpu`` tokens of KV cache."""
    if kv_tokens_per_gpu < 0 or not 0 <= reserve_fraction < 1:
        raise PlacementError("KV tokens must be >= 0 and the reserve fraction in [0, 1)")
    memory = gpu.memory_gib * GIB
    return MemoryModel(
        gpu_memory_bytes=memory,
        reserve_bytes=memory * reserve_fraction,
        non_expert_weight_bytes=model.non_expert_weight_bytes(shape),
        expert_slot_bytes=shape.expert_weight_bytes * model.num_moe_layers,
        kv_cache_bytes=kv_tokens_per_gpu * model.kv_bytes_per_token,
    )


def kv_tokens_per_gpu(phase: str, tokens_per_gpu: int, context_tokens: int) -> int:
    """Tokens of KV cache each GPU keeps: a prefill step's own tokens; a decode step's sequences each
    with its whole context."""
    return tokens_per_gpu if phase == "prefill" else tokens_per_gpu * context_tokens
