"""``placement export``: a plan as the files serving engines load (SGLang ``--init-expert-location``,
TensorRT-LLM's MoE load-balancer YAML, vLLM's EPLB maps, DeepSeek EPLB tensors).

SGLang and TensorRT-LLM index by model layer: the plan's recorded layer ids place each MoE layer (a plan
solved from the DeepSeek-V3 loads, whose three dense rows are zero, exports 61 SGLang rows with no flag);
``--first-moe-layer`` / ``--total-layers`` set them for plans that do not record them.
"""

from __future__ import annotations

import argparse
import sys

from moe_placement.cli.commands._common import Command, print_json
from moe_placement.exporters import (
    EXPORT_FORMATS,
    check_out_path,
    engine_warning,
    export_plan,
    write_export,
)
from moe_placement.layers import resolve_layers
from moe_placement.plan import Plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="plan JSON (placement solve --out)")
    p.add_argument(
        "--format",
        default="sglang",
        choices=EXPORT_FORMATS,
        help="sglang (--init-expert-location .json or .pt), trtllm (MoE load-balancer .yaml), "
        "vllm (EplbState maps .json), eplb (DeepSeek EPLB tensors .json)",
    )
    p.add_argument(
        "--out", required=True, help="output file (.json; .pt for sglang; .yaml for trtllm)"
    )
    p.add_argument(
        "--total-layers",
        type=int,
        default=None,
        help="model layers, dense ones included (default: from the plan, which records it when its "
        "trace or model shape said; else the plan's MoE layer count)",
    )
    p.add_argument(
        "--first-moe-layer",
        type=int,
        default=None,
        help="model index of the first MoE layer, the MoE layers following contiguously (default: the "
        "plan's recorded layer ids; else 0)",
    )
    p.add_argument(
        "--ep-size",
        type=int,
        default=None,
        help="expert-parallel ranks the engine runs (default: the plan's GPU count)",
    )
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    check_out_path(args.format, args.out)
    layers = resolve_layers(
        plan.num_layers,
        plan.layers,
        first_moe_layer=args.first_moe_layer,
        total_layers=args.total_layers,
    )
    export = export_plan(plan, args.format, layers, ep_size=args.ep_size)
    write_export(export, args.out)
    warning = engine_warning(plan, args.format)
    if warning:
        print(warning, file=sys.stderr)
    info = {
        "out": args.out,
        "format": args.format,
        "keys": sorted(export.content),
        "rows": export.rows,
        "indexed_by": export.indexed_by,
        "physical_slots": plan.num_slots,
        "ep_size": export.ep_size,
        "moe_layer_ids": list(layers.moe_layer_ids),
        "total_layers": layers.total_layers,
        "warning": warning,
    }
    if args.json:
        print_json(info)
    else:
        print(
            f"wrote {args.format} maps ({', '.join(info['keys'])}): {export.rows} rows by "
            f"{export.indexed_by} x {plan.num_slots} physical slots per layer over {export.ep_size} EP "
            f"ranks; MoE layers are model layers {_span(layers.moe_layer_ids)} of "
            f"{layers.total_layers} -> {args.out}"
        )
    return 0


def _span(ids: tuple[int, ...]) -> str:
    """``3-60`` for contiguous ids, else the list."""
    if list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
    return ",".join(str(i) for i in ids)


COMMAND = Command(
    "export",
    "export a plan to SGLang / TensorRT-LLM / vLLM / DeepSeek EPLB expert maps",
    add_arguments,
    run,
)
