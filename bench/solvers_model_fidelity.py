"""How faithful the solvers' time model is to the project's one metrics module.

For many plans (seeded random plans, every baseline, ``best``) on the bundled trace and on a synthetic
2-node trace, with and without redundant slots, on one and two nodes, compares the solvers' model
objective (``solvers.objective.score_plan``, the sum over layers of ``solvers.cpsat.objective_us``) with
``placement.metrics.evaluate(...).summary()["moe_time_us"]``, and prints the rank correlation
(Spearman) and the relative error; then, per case, ``best`` against the baselines by the evaluator.

    .venv/bin/python bench/solvers_model_fidelity.py            # short run (about a minute)
    .venv/bin/python bench/solvers_model_fidelity.py --random 40 --time-limit 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from moe_placement.cli.commands._common import table
from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.objective import score_plan
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]

BUNDLED = ROOT / "traces" / "data" / "tiny_moe_trace.parquet"
BASELINES = ("contiguous", "round-robin", "greedy", "eplb", "eplb-global")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # ties share their average rank
            same = v == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def run_case(
    label: str, trace: Path, gpus: int, gpn: int, redundant: int, args: argparse.Namespace
) -> tuple[list[object], list[object]]:
    cluster = load_cluster("h100-multirail").with_counts(gpus, gpn)
    wl = derive_workload(TraceFile(trace), num_gpus=gpus)
    problem = PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=redundant)
    config = SolverConfig(time_limit_s=args.time_limit, seed=0)
    names = [f"random:{s}" for s in range(args.random)] + list(BASELINES) + ["best"]
    model, truth, moe = [], [], {}
    for name in names:
        solver, _, seed = name.partition(":")
        cfg = SolverConfig(time_limit_s=args.time_limit, seed=int(seed or 0))
        plan = run_solver(solver, problem, cfg)
        objective, _ = score_plan(problem, config, plan)
        us = evaluate(plan, cluster, wl).summary()["moe_time_us"]
        model.append(objective)
        truth.append(us)
        moe[name] = us
    m, t = np.array(model), np.array(truth)
    rel = np.abs(m - t) / t
    fidelity = [
        label,
        f"{gpus}/{gpus // gpn}",
        redundant,
        len(names),
        spearman(m, t),
        float(rel.mean()),
        float(rel.max()),
        float(m[-1]),
        float(t[-1]),
    ]
    worst_base = min(moe[b] for b in ("greedy", "eplb", "eplb-global", "contiguous"))
    versus = [
        label,
        f"{gpus}/{gpus // gpn}",
        redundant,
        moe["best"],
        moe["greedy"],
        moe["eplb"],
        moe["eplb-global"],
        moe["contiguous"],
        "yes" if moe["best"] <= worst_base * (1 + 1e-9) else "NO",
    ]
    return fidelity, versus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=12, help="random plans per case")
    ap.add_argument("--time-limit", type=float, default=2.0, help="best's time limit (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synth.parquet"
        generate(
            SynthConfig(
                num_layers=4,
                num_experts=32,
                top_k=4,
                num_tokens=8192,
                coactivation=3.0,
                group_size=4,
            ),
            synth,
            seed=3,
        )
        cases = [
            ("bundled", BUNDLED, 8, 4, 0),
            ("bundled", BUNDLED, 8, 4, 8),
            ("bundled", BUNDLED, 4, 4, 0),
            ("bundled", BUNDLED, 4, 4, 4),
            ("synthetic 32x4 top-4", synth, 8, 4, 0),
            ("synthetic 32x4 top-4", synth, 8, 4, 8),
            ("synthetic 32x4 top-4", synth, 16, 8, 16),
        ]
        fid, vs = [], []
        for case in cases:
            f, v = run_case(*case, args)
            fid.append(f)
            vs.append(v)
    print("model (score_plan) vs evaluator (moe_time_us) over random + baseline + best plans")
    print(
        table(
            [
                "trace",
                "GPUs/nodes",
                "R",
                "plans",
                "spearman",
                "mean |rel err|",
                "max |rel err|",
                "best model us",
                "best MoE us",
            ],
            fid,
        )
    )
    print()
    print("evaluator MoE time (us): best against the baselines")
    print(
        table(
            [
                "trace",
                "GPUs/nodes",
                "R",
                "best",
                "greedy",
                "eplb",
                "eplb-global",
                "contiguous",
                "best <= all",
            ],
            vs,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
