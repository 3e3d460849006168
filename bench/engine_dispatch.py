"""Predicted against engine-emulated balance, per serving engine, for plans solved with and without
``--engine`` (issue 13's closing-note table).

For each shared DeepSeek-V3 load file (``../shared/data/dsv3-expert-loads``, 58 MoE layers x 256 experts)
at 64 GPUs with 64 redundant slots and at 32 GPUs with 32 (8 GPUs per node, h100-multirail), the ``best``
solver places the experts four times: for the share-aware router (the default, no ``--engine``) and for
each engine. Each plan then gets

* **predicted**: the mean over layers of max/mean GPU load that ``placement solve`` reports for it (the
  evaluator under the dispatch it was solved for);
* **emulated, per engine**: the same figure when that engine's own discrete rule routes the tokens:
  SGLang's static table (own-GPU replica, else its seeded fair deal, ``random.Random(42)``), vLLM's
  position modulo and TensorRT-LLM's per-rank round-robin dealt over whole (token, k) entries
  (:func:`moe_placement.dispatch.emulated_shares`), each rank sending ``load / G`` of every expert
  (load-only input: tokens spread evenly over the ranks).

Usage: ``.venv/bin/python bench/engine_dispatch.py [--time-limit S] [--jobs N] [--files a,b] [--gpus 64,32]``
(prints a Markdown table). Measured on the shared 2-core VM with 2 processes: 1,123 s with the defaults
(32 solves), 812 s with ``--time-limit 1``: most of it is the greedy layout and the solver's baseline
safeguard at 64 GPUs, which the time limit does not bound; ``--gpus 32`` alone takes about a third.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from moe_placement.cluster import load_cluster
from moe_placement.dispatch import SERVING_ENGINES, SHARE, emulated_shares, engine_table, gpu_load
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.traces.loadjson import load_logical_count
from moe_placement.workload import Workload

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsv3-expert-loads"
FILES = ("prefill_in1024", "prefill_in4096", "decode_in1000out1000", "decode_in2000out100")
CONFIGS = {64: 64, 32: 32}  # GPUs -> redundant slots
GPUS_PER_NODE = 8


def emulated_max_over_mean(plan: Plan, workload: Workload, engine: str) -> float:
    """Mean over layers of max/mean GPU load when ``engine``'s own rule routes every rank's tokens."""
    G = plan.num_gpus
    table = engine_table(plan, engine)
    ratios = []
    for layer in range(plan.num_layers):
        demand = np.broadcast_to(workload.load[layer] / G, (G, plan.num_experts))
        D = emulated_shares(plan, layer, engine, demand, table)
        loads = gpu_load(plan, layer, D, demand)
        ratios.append(loads.max() / loads.mean() if loads.mean() > 0 else 1.0)
    return float(np.mean(ratios))


def measure(name: str, gpus: int, time_limit_s: float) -> list[list[object]]:
    """The rows of one file at one cluster size: one per engine the plan is solved for."""
    workload = load_logical_count(DATA / f"{name}.json")
    cluster = load_cluster("h100-multirail").with_counts(gpus, GPUS_PER_NODE)
    config = SolverConfig(time_limit_s=time_limit_s)
    rows: list[list[object]] = []
    for solved_for in (SHARE, *SERVING_ENGINES):
        start = time.perf_counter()
        problem = PlacementProblem((workload,), cluster, CONFIGS[gpus], engine=solved_for)
        plan = run_solver("best", problem, config)
        solve_s = time.perf_counter() - start
        predicted = evaluate(plan, cluster, workload).summary()
        emulated = [emulated_max_over_mean(plan, workload, e) for e in SERVING_ENGINES]
        engine_us = [
            evaluate(plan, cluster, workload, engine=e).summary()["moe_time_us"]
            for e in SERVING_ENGINES
        ]
        rows.append(
            [
                name,
                gpus,
                CONFIGS[gpus],
                "none (share router)" if solved_for == SHARE else f"--engine {solved_for}",
                predicted["mean_max_over_mean"],
                *emulated,
                predicted["moe_time_us"],
                *engine_us,
                solve_s,
            ]
        )
    return rows


def _cell(value: object) -> str:
    """Ratios with 4 decimals, times in whole microseconds, the rest as written."""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=10.0, help="solver time limit, s")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one per file and size)")
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--gpus", default="64,32")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} absent: nothing to measure")
    tasks = [
        (name, int(g), args.time_limit)
        for name in args.files.split(",")
        for g in args.gpus.split(",")
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(measure, *zip(*tasks, strict=True)))
    header = (
        "| file | GPUs | redundant | plan solved with | predicted max/mean | SGLang emulated | "
        "vLLM emulated | TRT-LLM emulated | predicted MoE us | SGLang MoE us | vLLM MoE us | "
        "TRT-LLM MoE us | solve s |"
    )
    print(
        "max/mean: mean over the 58 MoE layers of the busiest GPU's (token, expert) assignments over "
        "the mean GPU's; MoE us: the evaluator's MoE time per step of 4096 tokens per GPU, all layers"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for rows in results:
        for row in rows:
            cells = [_cell(v) for v in row]
            cells[-1] = f"{row[-1]:.1f}"
            print("| " + " | ".join(cells) + " |")
    print(f"bench wall time {time.perf_counter() - start:.0f} s with {args.jobs} processes")


if __name__ == "__main__":
    main()
