"""``placement import``: convert another tool's routing dump into a trace (the module is not called
``import.py`` because that is a Python keyword; the command is ``import``).

Engines' own dumps close the loop (capture -> solve -> export -> serve -> import): SGLang's
expert-distribution recorder (per_token, per_pass, stat), vLLM's routed experts, TensorRT-LLM's expert
statistics. Each records which model layers are MoE layers when the dump says (SGLang's rows and
TensorRT-LLM's keys are model layers), else the model shape's, else ``--first-moe-layer`` /
``--total-layers``.
"""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command, human_bytes, print_json

FORMATS = ("logical-count", "sglang", "vllm", "trtllm", "csv", "exflow-npy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Listed here (not imported from traces.importers) so building the CLI parser stays cheap;
    # a test checks the two lists agree.
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="input format: logical-count (JSON/.pt), sglang (recorder .pt dumps, any mode), vllm "
        "(routed experts .npy/.npz/.jsonl), trtllm (expert-statistic folder), csv, exflow-npy",
    )
    p.add_argument(
        "input",
        metavar="IN",
        help="input file, or folder (sglang, vllm, trtllm: the folder of per-rank dumps)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output Parquet trace (load-only inputs: a load-only Parquet, or a logical_count JSON with --out X.json)",
    )
    p.add_argument(
        "--model", default=None, help="named model shape (deepseek-v3, ...) when the input has none"
    )
    p.add_argument(
        "--experts", type=int, default=None, help="expert count (default: largest id + 1)"
    )
    p.add_argument("--hidden", type=int, default=1024, help="hidden size when the shape is unknown")
    p.add_argument(
        "--intermediate", type=int, default=512, help="expert intermediate size when unknown"
    )
    p.add_argument(
        "--first-moe-layer",
        type=int,
        default=None,
        help="model layer of the first MoE layer, the others following (default: what the dump or "
        "the model shape says; vLLM dumps index MoE layers only)",
    )
    p.add_argument(
        "--total-layers",
        type=int,
        default=None,
        help="model layers, dense ones included (default: what the dump or the model shape says)",
    )
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from moe_placement.traces.importers import ImportOptions, load

    options = ImportOptions(
        model=args.model,
        num_experts=args.experts,
        hidden_size=args.hidden,
        expert_intermediate_size=args.intermediate,
        first_moe_layer=args.first_moe_layer,
        total_layers=args.total_layers,
    )
    imported = load(args.format, args.input, options)
    layers = imported.layer_identity(options)
    out = imported.write(args.out, options)
    size = out.stat().st_size
    summary = {
        "out": str(out),
        "format": args.format,
        "load_only": imported.load_only,
        "tokens": imported.num_tokens,
        "moe_layers": len(imported.layer_ids),
        "moe_layer_ids": list(layers.moe_layer_ids),
        "total_layers": layers.total_layers,
        "experts": imported.num_experts,
        "bytes": size,
    }
    where = f"model layers {layers.first_moe_layer}..{layers.moe_layer_ids[-1]} of {layers.total_layers}"
    if args.json:
        print_json(summary)
    elif imported.load_only:
        print(
            f"imported load-only counts: {len(imported.layer_ids)} MoE layers ({where}) x "
            f"{imported.num_experts} experts -> {out} ({human_bytes(size)})"
        )
    else:
        assert imported.expert_ids is not None
        print(
            f"imported {imported.num_tokens} tokens x {len(imported.layer_ids)} MoE layers ({where}; "
            f"{imported.num_experts} experts, top-{imported.expert_ids.shape[2]}) -> {out} "
            f"({human_bytes(size)})"
        )
    return 0


COMMAND = Command(
    "import",
    "convert SGLang, vLLM, TensorRT-LLM, EPLB, CSV or ExFlow routing dumps into a trace",
    add_arguments,
    run,
)
