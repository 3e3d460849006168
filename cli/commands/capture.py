"""``placement capture``: record the routing of a real transformers MoE forward pass into a trace.

With no ``--model`` or ``--arch`` it runs the bundled tiny MoE on the held-out text shipped in
``traces/data/heldout/``.
"""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command, human_bytes, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default=None, metavar="PATH", help="local transformers checkpoint folder"
    )
    source.add_argument(
        "--arch",
        default=None,
        metavar="NAME",
        help="tiny random config of an architecture (mixtral, qwen2-moe, qwen3-moe, olmoe, "
        "deepseek-v3, gpt-oss, granitemoe, phimoe, dbrx, jetmoe)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="FILE",
        help="text file, folder or JSONL prompts (repeatable; default: bundled held-out text)",
    )
    p.add_argument("--tokens", type=int, default=4096, help="tokens to record")
    p.add_argument("--mode", default="prefill", choices=("prefill", "decode"))
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--seq-len", type=int, default=256, help="prefill: tokens per sequence")
    p.add_argument("--prompt-len", type=int, default=32, help="decode: prompt tokens per sequence")
    p.add_argument(
        "--new-tokens", type=int, default=32, help="decode: generated tokens per sequence"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--seed", type=int, default=0, help="weight seed for --arch")
    p.add_argument("--out", required=True, help="output Parquet trace")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from moe_placement.traces.capture import CaptureOptions, capture, load_model
    from moe_placement.traces.data import HELDOUT_DIR

    options = CaptureOptions(
        tokens=args.tokens,
        mode=args.mode,
        batch=args.batch,
        seq_len=args.seq_len,
        new_tokens=args.new_tokens,
        prompt_len=args.prompt_len,
        device=args.device,
        dtype=args.dtype,
    )
    options.validate()
    loaded = load_model(args.model, args.arch, seed=args.seed, device=args.device, dtype=args.dtype)
    result = capture(loaded, args.input or [HELDOUT_DIR], args.out, options)
    summary = {
        "out": str(result.path),
        "model": loaded.name,
        "mode": args.mode,
        "tokens": result.tokens,
        "moe_layers": result.meta.num_moe_layers,
        "experts": result.meta.num_experts,
        "top_k": result.meta.top_k,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "file_bytes": result.file_bytes,
        "bytes_per_token": result.bytes_per_token,
        "domains": result.domains,
        "device": loaded.device,
        "dtype": loaded.dtype,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"captured {result.tokens} tokens x {result.meta.num_moe_layers} MoE layers from {loaded.name} "
            f"({result.meta.num_experts} experts, top-{result.meta.top_k}, {args.mode}, {loaded.device} "
            f"{loaded.dtype}) in {result.seconds:.1f} s ({result.tokens_per_s:,.0f} tokens/s); "
            f"{human_bytes(result.file_bytes)} ({result.bytes_per_token:.1f} B/token) -> {result.path}"
        )
    return 0


COMMAND = Command(
    "capture", "record routing from a real transformers MoE forward pass", add_arguments, run
)
