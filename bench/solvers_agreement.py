"""Agreement of every registered solver's reported objective with the evaluator's MoE time.

Issue 12 part 3: on a top-4 and a top-8 synthetic trace with redundant slots over several nodes, the
objective a plan reports (``provenance.objective``) should be within 2% of
``moe_placement.metrics.evaluate(...).summary()["moe_time_us"]``, and both should rank the solvers the
same way. Prints, per trace, one row per solver (objective, evaluator us, error %, and the error of the
linear search model the solvers optimise) and the Spearman rank correlation of objective and evaluator.

    .venv/bin/python bench/solvers_agreement.py                 # about a minute
    .venv/bin/python bench/solvers_agreement.py --time-limit 3
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from solvers_model_fidelity import spearman  # the bench folder is first on sys.path

from moe_placement.cli.commands._common import table
from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate
from moe_placement.solvers import REGISTRY, PlacementProblem, SolverConfig, run_solver
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate


@dataclass(frozen=True)
class Case:
    """One synthetic trace and the cluster it is placed on."""

    label: str
    experts: int
    top_k: int
    gpus: int
    gpus_per_node: int
    redundant: int


CASES = (
    Case("32 experts top-4, 16 GPUs / 2 nodes, R=16", 32, 4, 16, 8, 16),
    Case("64 experts top-8, 32 GPUs / 4 nodes, R=32", 64, 8, 32, 8, 32),
)


def run_case(case: Case, tmp: Path, time_limit_s: float) -> tuple[list[list[object]], float]:
    """Rows ``[solver, objective us, evaluator us, error %, search model error %]`` and the Spearman of
    the reported objective against the evaluator."""
    path = tmp / f"synth-{case.experts}-{case.top_k}.parquet"
    synth = SynthConfig(num_layers=4, num_experts=case.experts, top_k=case.top_k, num_tokens=4096)
    generate(synth, path, seed=1)
    cluster = load_cluster(None).with_counts(case.gpus, case.gpus_per_node)
    wl = derive_workload(TraceFile(path), num_gpus=case.gpus)
    problem = PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=case.redundant)
    config = SolverConfig(time_limit_s=time_limit_s, seed=0)
    rows: list[list[object]] = []
    objective, truth = [], []
    for name in sorted(REGISTRY):
        plan = run_solver(name, problem, config)
        us = float(evaluate(plan, cluster, wl).summary()["moe_time_us"])
        obj = float(plan.provenance.objective or 0.0)
        # the linear search model's own objective, where the plan keeps it beside the reported one
        search = float(plan.provenance.extra.get("search_objective", obj))
        objective.append(obj)
        truth.append(us)
        rows.append([name, obj, us, 100.0 * (obj - us) / us, 100.0 * (search - us) / us])
    return rows, spearman(np.array(objective), np.array(truth))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=2.0, help="each solver's time limit (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            rows, rho = run_case(case, Path(tmp), args.time_limit)
            print(f"\n{case.label}")
            print(
                table(["solver", "objective us", "evaluator us", "error %", "search error %"], rows)
            )
            errors = [abs(float(r[3])) for r in rows]  # type: ignore[arg-type]
            print(f"Spearman {rho:.3f}   max |error| {max(errors):.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
