"""``placement synth``: write a seeded synthetic trace."""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output Parquet trace")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--zipf", type=float, default=0.8, help="popularity skew exponent (0 = uniform)")
    p.add_argument(
        "--coactivation", type=float, default=2.0, help="logit bonus for same-group experts"
    )
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument(
        "--affinity", type=float, default=0.6, help="P(top-1 follows its layer successor)"
    )
    p.add_argument("--domains", type=int, default=1)
    p.add_argument(
        "--drift", type=float, default=0.0, help="popularity drift over the trace, 0..1 (0: none)"
    )
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from moe_placement.traces.synth import SynthConfig, generate

    config = SynthConfig(
        num_layers=args.layers,
        num_experts=args.experts,
        top_k=args.top_k,
        num_tokens=args.tokens,
        seq_len=args.seq_len,
        zipf_s=args.zipf,
        coactivation=args.coactivation,
        group_size=args.group_size,
        affinity=args.affinity,
        domains=args.domains,
        drift=args.drift,
        hidden_size=args.hidden,
        expert_intermediate_size=args.intermediate,
    )
    tokens = generate(config, args.out, seed=args.seed, progress=True)
    if args.json:
        print_json(
            {
                "out": args.out,
                "tokens": tokens,
                "layers": args.layers,
                "experts": args.experts,
                "top_k": args.top_k,
                "seed": args.seed,
            }
        )
    else:
        print(
            f"wrote {tokens} tokens x {args.layers} layers ({args.experts} experts, top-{args.top_k}) to {args.out}"
        )
    return 0


COMMAND = Command("synth", "write a seeded synthetic routing trace", add_arguments, run)
