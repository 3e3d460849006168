"""Model-wide replica budget against the uniform per-layer split of the same total (issue 16 part 2).

For each case, :func:`moe_placement.solvers.budget.solve_with_budget` spreads ``N`` redundant slots over
the layers by marginal benefit, solves each distinct per-layer count with the solver, and times every
layer with the evaluator; the uniform split (``N / layers`` per layer) is solved and timed the same way.
Printed per case: how the budget was spread (layers x redundant slots), the MoE time (us per step of 4096
tokens per GPU, all MoE layers) uneven as solved and uniform, and the gain (%), with the allocation's own
prediction (busiest-GPU compute only) beside it.

    .venv/bin/python bench/replica_budget.py                       # several minutes on 2 cores
    .venv/bin/python bench/replica_budget.py --solver eplb-global --cases tiny
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_placement.cli.commands._common import print_json, table
from moe_placement.cluster import load_cluster
from moe_placement.solvers import PlacementProblem, SolverConfig
from moe_placement.solvers.budget import solve_with_budget
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.loadjson import load_logical_count
from moe_placement.traces.reader import TraceFile
from moe_placement.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "traces" / "data" / "tiny_moe_trace.parquet"
DSV3 = ROOT.parent / "shared" / "data" / "dsv3-expert-loads"


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    make: Callable[[], Workload]
    gpus: int
    gpus_per_node: int
    mean_redundant: int  # the budget is this many slots per layer on average


CASES = (
    Case(
        "tiny",
        "bundled tiny-moe (4 layers, 16 experts), 8 GPUs / 2 nodes, 16 per layer on average",
        lambda: derive_workload(TraceFile(BUNDLED), num_gpus=8),
        8,
        4,
        16,
    ),
    Case(
        "dsv3-prefill",
        "DeepSeek-V3 prefill_in4096 loads, 64 GPUs / 8 nodes, 128 per layer on average",
        lambda: load_logical_count(DSV3 / "prefill_in4096.json"),
        64,
        8,
        128,
    ),
    Case(
        "dsv3-decode",
        "DeepSeek-V3 decode_in1000out1000 loads, 64 GPUs / 8 nodes, 128 per layer on average",
        lambda: load_logical_count(DSV3 / "decode_in1000out1000.json"),
        64,
        8,
        128,
    ),
)


def run_case(case: Case, solver: str, time_limit_s: float) -> dict[str, object]:
    wl = case.make()
    cluster = load_cluster(None).with_counts(case.gpus, case.gpus_per_node)
    problem = PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=case.mean_redundant)
    config = SolverConfig(time_limit_s=time_limit_s, extra={"deterministic": True})
    total = case.mean_redundant * wl.num_layers
    result = solve_with_budget(problem, config, solver, total)
    spread: dict[int, int] = {}
    for r in result.budget.redundant:
        spread[r] = spread.get(r, 0) + 1
    predicted, uniform_predicted = (
        sum(result.budget.predicted_us),
        sum(result.budget.predicted_uniform_us),
    )
    return {
        "case": case.name,
        "label": case.label,
        "solver": solver,
        "total": total,
        "spread": ", ".join(f"{n}x{r}" for r, n in sorted(spread.items())),
        "uneven_us": float(result.uneven_layer_us.sum()),
        "uniform_us": float(result.uniform_layer_us.sum()),
        "gain_pct": 100.0 * result.gain,
        "predicted_gain_pct": 100.0 * (1.0 - predicted / uniform_predicted),
        "padded_slots_per_gpu": result.plan.slots_per_gpu,
        "uniform_slots_per_gpu": (wl.num_experts + result.budget.uniform) // case.gpus,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="best")
    parser.add_argument("--time-limit", type=float, default=3.0, help="per solve (deterministic s)")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for case in CASES:
        if case.name not in args.cases.split(","):
            continue
        if case.name.startswith("dsv3") and not DSV3.is_dir():
            print(f"skipped {case.name}: {DSV3} is absent", file=sys.stderr)
            continue
        print(f"  {case.name} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, args.solver, args.time_limit))
    if args.json:
        print_json({"cases": rows})
        return
    for r in rows:
        print(f"{r['label']}: {r['total']} redundant slots, solver {r['solver']}")
    print(
        table(
            [
                "case",
                "layers x redundant",
                "uneven us/step",
                "uniform us/step",
                "gain %",
                "predicted gain %",
                "padded slots/GPU",
                "uniform slots/GPU",
            ],
            [
                [
                    r["case"],
                    r["spread"],
                    r["uneven_us"],
                    r["uniform_us"],
                    f"{r['gain_pct']:+.2f}",
                    f"{r['predicted_gain_pct']:+.2f}",
                    r["padded_slots_per_gpu"],
                    r["uniform_slots_per_gpu"],
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
