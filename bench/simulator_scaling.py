"""Simulator speed: one uneven direct all-to-all at growing GPU counts (event-exact), and optionally a
58-layer DeepSeek-V3 forward at EP64. Prints a table: GPUs, flows, events, classes refilled per event, regroupings, CPU and wall seconds.

    .venv/bin/python bench/simulator_scaling.py           # 16, 32, 64 GPUs (< 1 min)
    .venv/bin/python bench/simulator_scaling.py --full    # adds 128, 256 GPUs and the 58-layer forward
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moe_placement.cli.commands._common import table
from moe_placement.cluster import load_cluster
from moe_placement.plan import Plan, Provenance
from moe_placement.shapes import model_shape
from moe_placement.simulator import simulate_moe
from moe_placement.simulator.collectives import PhasePlan
from moe_placement.simulator.moe import _Runner
from moe_placement.workload import Workload


def alltoall(gpus: int, seed: int = 0) -> dict[str, float]:
    """One direct all-to-all over h800-mpft (PXN), per-pair sizes uniform in [0.5, 1.5] MB."""
    cluster = load_cluster("h800-mpft").with_counts(gpus, 8)
    rng = np.random.default_rng(seed)
    sizes = rng.uniform(0.5e6, 1.5e6, (gpus, gpus))
    np.fill_diagonal(sizes, 0.0)
    t0, c0 = time.perf_counter(), time.process_time()
    runner = _Runner(cluster, routing="spray", pxn=True, seed=seed, chunks=8)
    env = runner.env
    go = env.event()
    go.succeed()
    out: dict[str, float] = {}

    def proc():  # type: ignore[no-untyped-def]
        run = runner.phase(PhasePlan("a2a", sizes), [go] * gpus, "a2a")
        yield env.all_of(run.done)
        out["sim_us"] = run.span_us

    env.process(proc())
    env.run()
    net = runner.net
    return {
        "gpus": gpus,
        "flows": net.num_flows,
        "events": net.events,
        "recomputes": net.recomputes,
        "refilled_per_event": net.refilled / max(net.recomputes, 1),
        "rounds": net.rounds,
        "regroups": net.regroups,
        "sim_us": out["sim_us"],
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


def forward_ep64(layers: int = 58) -> dict[str, float]:
    """A DeepSeek-V3 forward step (58 MoE layers) at EP64 from a load-only workload (log-normal loads)."""
    shape = model_shape("deepseek-v3")
    rng = np.random.default_rng(0)
    load = rng.lognormal(0.0, 0.6, (layers, shape.num_experts)) * 1000.0
    tokens = int(load.sum(axis=1).mean() / shape.top_k)
    workload = Workload(
        shape=shape.replace(num_moe_layers=layers), load=load, num_tokens=tokens, source="bench"
    )
    phy2log = np.tile(np.arange(shape.num_experts), (layers, 1))
    plan = Plan(
        64,
        8,
        shape.num_experts // 64,
        phy2log,
        provenance=Provenance("round-robin"),
    )
    cluster = load_cluster("h800-mpft").with_counts(64, 8)
    t0, c0 = time.perf_counter(), time.process_time()
    res = simulate_moe(plan, cluster, workload, algo="deepep", progress=True)
    return {
        "layers": layers,
        "events": res.stats["events"],
        "flows": res.stats["flows"],
        "sim_us": res.total_us,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="also 128 and 256 GPUs and the 58-layer forward"
    )
    parser.add_argument("--gpus", default=None, help="comma-separated GPU counts (multiples of 8)")
    parser.add_argument(
        "--forward-layers", type=int, default=0, help="also a forward of this many layers"
    )
    args = parser.parse_args()
    alltoall(16)  # load the compiled kernels once, outside the timings
    sizes = [16, 32, 64] + ([128, 256] if args.full else [])
    if args.gpus:
        sizes = [int(x) for x in args.gpus.split(",")]
    rows = []
    for g in sizes:
        r = alltoall(g)
        rows.append(
            [
                g,
                r["flows"],
                r["events"],
                r["refilled_per_event"],
                r["regroups"],
                r["sim_us"],
                r["cpu_s"],
                r["wall_s"],
            ]
        )
        print(f"  {g} GPUs: {r['cpu_s']:.2f} s cpu, {r['wall_s']:.2f} s wall", flush=True)
    print(
        table(
            [
                "GPUs",
                "flows",
                "events",
                "classes refilled/event",
                "regroups",
                "simulated us",
                "cpu s",
                "wall s",
            ],
            rows,
        )
    )
    if len(rows) >= 3:
        g = np.log([r[0] for r in rows])
        c = np.log([r[6] for r in rows])
        slope = np.polyfit(g[-2:], c[-2:], 1)[0]
        print(f"cpu time grows ~ GPUs^{slope:.2f} between the two largest sizes")
    layers = 58 if args.full else args.forward_layers
    if layers:
        f = forward_ep64(layers)
        print(
            table(
                ["MoE layers (EP64, deepep)", "flows", "events", "simulated us", "cpu s", "wall s"],
                [[f["layers"], f["flows"], f["events"], f["sim_us"], f["cpu_s"], f["wall_s"]]],
            )
        )


if __name__ == "__main__":
    main()
