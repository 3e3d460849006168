"""Run a transformers MoE model on text and stream its routing into a trace.

Prefill mode runs batches of sequences (right-padded; padding is masked out of the trace). Decode mode
runs ``generate`` (greedy, a fixed number of new tokens per prompt): the prompt pass is recorded as
``step`` 0 and each later one-token pass as ``step`` 1, 2, ... Every forward pass becomes one
:meth:`TraceWriter.write` of complete tokens, so memory stays bounded by the writer's row group.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.layers import layers_from_hf_config
from moe_placement.traces.capture.archs import find_router_sites, tiny_config
from moe_placement.traces.capture.hooks import RouterRecorder
from moe_placement.traces.capture.inputs import Sequence, make_sequences, read_documents
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter

MODES = ("prefill", "decode")
BUNDLED_NAME = "tiny-moe"


@dataclass(frozen=True)
class CaptureOptions:
    """``tokens``: how many tokens to record (prefill: input tokens; decode: prompt plus generated)."""

    tokens: int = 4096
    mode: str = "prefill"
    batch: int = 8
    seq_len: int = 256
    new_tokens: int = 32
    prompt_len: int = 32
    device: str = "auto"
    dtype: str = "auto"
    row_group_tokens: int = 32768

    def validate(self) -> None:
        if self.mode not in MODES:
            raise PlacementError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if min(self.tokens, self.batch, self.new_tokens, self.prompt_len) < 1 or self.seq_len < 2:
            raise PlacementError(
                "capture: tokens, batch, new tokens, prompt length must be >= 1, seq len >= 2"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise PlacementError(f"unknown device {self.device!r}; use auto, cpu or cuda")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise PlacementError(
                f"unknown dtype {self.dtype!r}; use auto, float32, bfloat16 or float16"
            )


@dataclass
class LoadedModel:
    """A model ready to run, its tokenizer, a display name and its device."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    dtype: str
    origin: str


@dataclass
class CaptureResult:
    path: Path
    tokens: int
    seconds: float
    file_bytes: int
    meta: TraceMeta
    domains: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def bytes_per_token(self) -> float:
        return self.file_bytes / max(self.tokens, 1)


def _pick_device(device: str, dtype: str) -> tuple[str, Any]:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PlacementError("--device cuda asked for, but CUDA is not available")
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if dtype == "auto":
        # bf16 where the GPU supports it; fp32 on CPU (CPU bf16 kernels are slower and change routing ties).
        use_bf16 = dev == "cuda" and torch.cuda.is_bf16_supported()
        return dev, torch.bfloat16 if use_bf16 else torch.float32
    return dev, getattr(torch, dtype)


def _bundled_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from moe_placement.traces.tinymoe import CHECKPOINT_DIR

    if not (CHECKPOINT_DIR / "tokenizer.json").exists():
        raise PlacementError(
            f"bundled tokenizer missing at {CHECKPOINT_DIR}; retrain: python -m traces.tinymoe.train"
        )
    return AutoTokenizer.from_pretrained(CHECKPOINT_DIR, local_files_only=True)


def load_model(
    model_path: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
) -> LoadedModel:
    """A local checkpoint, a tiny random ``arch`` config (seeded), or the bundled tiny MoE."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PlacementError(f"capture needs torch and transformers ({exc.name} missing)") from None
    if model_path is not None and arch is not None:
        raise PlacementError("give --model or --arch, not both")
    dev, torch_dtype = _pick_device(device, dtype)
    if arch is not None:
        tokenizer = _bundled_tokenizer()
        config = tiny_config(arch, len(tokenizer))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        if config.model_type == "deepseek_v3":
            # A trained DeepSeek-V3 has a non-zero load-balancing bias; give the random model one so the
            # biased, group-limited selection really differs from a plain top-k of the scores.
            for name, buffer in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    buffer.copy_(torch.rand(buffer.shape) * 0.5)
        torch.random.set_rng_state(generator_state)
        name, origin = f"tiny-{arch.lower()}", f"arch:{arch.lower()}"
    else:
        if model_path is None:
            from moe_placement.traces.tinymoe import CHECKPOINT_DIR

            path = CHECKPOINT_DIR
            name, origin = BUNDLED_NAME, "bundled"
            if not (path / "config.json").exists():
                raise PlacementError(
                    f"bundled model missing at {path}; retrain: python -m traces.tinymoe.train"
                )
        else:
            path = Path(model_path)
            if not path.exists():
                raise PlacementError(f"model path not found: {path}")
            if not (path / "config.json").exists():
                raise PlacementError(
                    f"{path}: no config.json (expected a transformers checkpoint folder)"
                )
            name, origin = path.resolve().name, f"path:{path}"
        try:
            _quiet_transformers()
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch_dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PlacementError(f"cannot load model from {path}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Capture reads the routers through hooks; router-logit outputs and the aux loss would only cost time
    # (and transformers' aux-loss path fails under generate with an attention mask).
    if getattr(model.config, "output_router_logits", False):
        model.config.output_router_logits = False
    model = model.to(device=dev, dtype=torch_dtype)
    model.eval()
    return LoadedModel(model, tokenizer, name, dev, str(torch_dtype).replace("torch.", ""), origin)


def _quiet_transformers() -> None:
    """transformers draws a weight-loading bar on every load (under a second for the bundled model):
    noise in a capture's output. Its warnings stay."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    sources = [config, getattr(config, "ffn_config", None), getattr(config, "text_config", None)]
    for source in sources:
        if source is None:
            continue
        for name in names:
            value = getattr(source, name, None)
            if value:
                return value
    return default


def _trace_meta(
    loaded: LoadedModel,
    recorder: RouterRecorder,
    top_k: int,
    options: CaptureOptions,
    inputs: list[str],
    domains: list[str],
) -> TraceMeta:
    config = loaded.model.config
    hidden = int(_config_value(config, "hidden_size", "d_model", default=1))
    inter = int(
        _config_value(
            config, "moe_intermediate_size", "ffn_hidden_size", "intermediate_size", default=1
        )
    )
    shared = _config_value(config, "n_shared_experts", "num_shared_experts", default=0)
    if not shared and _config_value(config, "shared_expert_intermediate_size", default=0):
        shared = 1
    hooked = [s.layer for s in recorder.sites]
    declared = layers_from_hf_config(config)
    # The hooked routers are the MoE layers; the config gives the model's layer count (dense layers
    # included) and, from first_k_dense_replace / mlp_only_layers / decoder_sparse_step, which layers it
    # declares MoE: recorded beside the hooked ids so a disagreement is visible.
    total = declared.total_layers if declared is not None else None
    if total is not None and max(hooked) >= total:
        total = None
    layer_note = {
        "config_moe_layer_ids": list(declared.moe_layer_ids) if declared is not None else None
    }
    return TraceMeta(
        model_name=loaded.name,
        num_moe_layers=len(recorder.sites),
        num_experts=recorder.num_experts,
        top_k=top_k,
        hidden_size=hidden,
        expert_intermediate_size=inter,
        shared_experts=int(shared),
        source=f"capture:{loaded.origin}",
        moe_layer_ids=hooked,
        total_layers=total,
        extra={
            **layer_note,
            "model_type": str(getattr(config, "model_type", "")),
            "mode": options.mode,
            "batch": options.batch,
            "seq_len": options.seq_len,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "inputs": inputs,
            "domains": domains,
        },
    )


class _Sink:
    """Creates the writer on the first pass (when top-k is known) and keeps count per domain."""

    def __init__(
        self,
        out: Path,
        loaded: LoadedModel,
        recorder: RouterRecorder,
        options: CaptureOptions,
        inputs: list[str],
        domains: list[str],
        bar: Any,
    ) -> None:
        self.out, self.loaded, self.recorder, self.options = out, loaded, recorder, options
        self.inputs, self.domains, self.bar = inputs, domains, bar
        self.writer: TraceWriter | None = None
        self.tokens = 0
        self.per_domain: dict[str, int] = {}

    def write(
        self,
        keep: np.ndarray,
        step: np.ndarray,
        seq: np.ndarray,
        pos: np.ndarray,
        domain: np.ndarray,
    ) -> None:
        """Write the kept tokens (a mask over the pass's flattened tokens) of the last forward pass."""
        ids, weights = self.recorder.pop()
        if ids.shape[1] != keep.shape[0]:
            raise PlacementError(f"routers saw {ids.shape[1]} tokens, expected {keep.shape[0]}")
        room = self.options.tokens - self.tokens
        keep = keep & (np.cumsum(keep) <= room)
        n = int(keep.sum())
        if n == 0:
            return
        if self.writer is None:
            meta = _trace_meta(
                self.loaded, self.recorder, ids.shape[2], self.options, self.inputs, self.domains
            )
            self.writer = TraceWriter(
                self.out, meta, with_domain=True, row_group_tokens=self.options.row_group_tokens
            )
        self.writer.write(
            step[keep], seq[keep], pos[keep], ids[:, keep], weights[:, keep], domain[keep]
        )
        self.tokens += n
        for name, count in zip(*np.unique(domain[keep], return_counts=True), strict=True):
            self.per_domain[str(name)] = self.per_domain.get(str(name), 0) + int(count)
        self.bar.update(n)

    @property
    def full(self) -> bool:
        return self.tokens >= self.options.tokens


def _prefill(
    loaded: LoadedModel, seqs: list[Sequence], sink: _Sink, options: CaptureOptions
) -> None:
    import torch

    pad = int(loaded.tokenizer.pad_token_id)
    for start in range(0, len(seqs), options.batch):
        if sink.full:
            break
        batch = seqs[start : start + options.batch]
        width = max(len(s.ids) for s in batch)
        ids = np.full((len(batch), width), pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, s in enumerate(batch):
            ids[row, : len(s.ids)] = s.ids
            mask[row, : len(s.ids)] = 1
        with torch.inference_mode():
            loaded.model(
                input_ids=torch.from_numpy(ids).to(loaded.device),
                attention_mask=torch.from_numpy(mask).to(loaded.device),
                use_cache=False,
            )
        seq_id = np.repeat(np.arange(start, start + len(batch)), width)
        pos = np.tile(np.arange(width), len(batch))
        domain = np.repeat(np.asarray([s.domain for s in batch], dtype=object), width)
        sink.write(
            mask.ravel().astype(bool), np.zeros(seq_id.size, dtype=np.int32), seq_id, pos, domain
        )


def _decode(
    loaded: LoadedModel, seqs: list[Sequence], sink: _Sink, options: CaptureOptions
) -> None:
    for start in range(0, len(seqs), options.batch):
        if sink.full:
            break
        _decode_batch(loaded, seqs[start : start + options.batch], start, sink, options)


def _decode_batch(
    loaded: LoadedModel, batch: list[Sequence], first_seq: int, sink: _Sink, options: CaptureOptions
) -> None:
    """``generate`` on one batch of prompts; a hook on the whole model writes each forward pass."""
    import torch

    pad = int(loaded.tokenizer.pad_token_id)
    prompts = [s.ids[: options.prompt_len] for s in batch]
    lengths = np.asarray([len(p) for p in prompts])
    width = int(lengths.max())
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, p in enumerate(prompts):  # left padding, as generate expects for decoder-only models
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    seq_ids = np.arange(first_seq, first_seq + len(prompts))
    domains = np.asarray([s.domain for s in batch], dtype=object)
    state = {"step": 0}

    def after_forward(_module: Any, _inputs: Any, _output: Any) -> None:
        step = state["step"]
        if step == 0:  # the prompt pass: real (unpadded) positions 0..len-1
            keep = mask.ravel().astype(bool)
            pos = (np.cumsum(mask, axis=1) - 1).ravel()
            seq = np.repeat(seq_ids, width)
            dom = np.repeat(domains, width)
        else:  # one new token per sequence: the token generated at the previous step
            keep = np.ones(len(prompts), dtype=bool)
            pos = lengths + step - 1
            seq, dom = seq_ids, domains
        sink.write(keep, np.full(keep.size, step, dtype=np.int32), seq, pos, dom)
        state["step"] = step + 1

    handle = loaded.model.register_forward_hook(after_forward)
    try:
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=torch.from_numpy(ids).to(loaded.device),
                attention_mask=torch.from_numpy(mask).to(loaded.device),
                max_new_tokens=options.new_tokens,
                min_new_tokens=options.new_tokens,  # no early stop: every sequence decodes every step
                do_sample=False,
                pad_token_id=pad,
            )
    finally:
        handle.remove()


def capture(
    loaded: LoadedModel,
    inputs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: CaptureOptions | None = None,
    *,
    progress: bool = True,
) -> CaptureResult:
    """Run ``loaded`` over ``inputs`` and write the routing trace to ``out`` (atomically)."""
    from tqdm import tqdm

    options = options or CaptureOptions()
    options.validate()
    sites = find_router_sites(loaded.model)  # a model without MoE layers fails before any work
    docs = read_documents(list(inputs))
    seq_len = options.seq_len if options.mode == "prefill" else options.prompt_len
    # Decode needs fewer prompt tokens than it records, but tokenising a surplus is cheap and the sink
    # stops at the budget; so both modes ask for the full budget of input tokens.
    seqs = make_sequences(docs, loaded.tokenizer, seq_len, options.tokens)
    domains = sorted({s.domain for s in seqs})
    recorder = RouterRecorder(loaded.model, sites)
    bar = tqdm(
        total=options.tokens,
        desc=f"capture {loaded.name}",
        unit="tok",
        disable=None if progress else True,
    )
    sink = _Sink(Path(out), loaded, recorder, options, [str(p) for p in inputs], domains, bar)
    start = time.perf_counter()
    try:
        with recorder:
            (_prefill if options.mode == "prefill" else _decode)(loaded, seqs, sink, options)
        seconds = time.perf_counter() - start
        if sink.writer is None:
            raise PlacementError("capture recorded no tokens")
        path = sink.writer.close()
    except BaseException:
        if sink.writer is not None:
            sink.writer.abort()
        raise
    finally:
        bar.close()
    return CaptureResult(
        path, sink.tokens, seconds, path.stat().st_size, sink.writer.meta, sink.per_domain
    )
