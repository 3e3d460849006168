"""``placement export``: a plan as the maps SGLang (``--init-expert-location``), vLLM's EPLB or DeepSeek
EPLB use."""

from __future__ import annotations

import argparse

from moe_placement.atomic import write_json
from moe_placement.cli.commands._common import Command, print_json
from moe_placement.plan import Plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True)
    p.add_argument("--format", default="sglang", choices=("sglang", "vllm", "eplb"))
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument(
        "--total-layers",
        type=int,
        default=None,
        help="model layers including dense ones (engines index maps by model layer)",
    )
    p.add_argument(
        "--first-moe-layer",
        type=int,
        default=None,
        help="model index of the first MoE layer (default: from the plan, else 0)",
    )
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    first = args.first_moe_layer
    if first is None:
        first = int(plan.provenance.extra.get("first_moe_layer", 0))
    maps = plan.export(args.format, total_layers=args.total_layers, first_moe_layer=first)
    write_json(args.out, maps)
    info = {
        "out": args.out,
        "format": args.format,
        "keys": sorted(maps),
        "layers": len(next(iter(maps.values()))),
        "physical_slots": plan.num_slots,
    }
    if args.json:
        print_json(info)
    else:
        print(
            f"wrote {args.format} maps ({', '.join(info['keys'])}) for {info['layers']} layers x "
            f"{plan.num_slots} physical slots to {args.out}"
        )
    return 0


COMMAND = Command("export", "export a plan to SGLang / vLLM / EPLB expert maps", add_arguments, run)
