"""Out-of-sample robustness of every registered solver: fit on one part of the traffic, score on another.

Issue 16 part 1. Each case cuts traffic in two by time (or by phase): every solver places the *fit* part,
and its plan is scored by the evaluator (``moe_placement.metrics``) on the fit part (in-sample) and on the
*score* part it has not seen (out-of-sample), against an *oracle*: ``best`` fitted to the score part
itself. Cases:

* the bundled trace (tiny-moe, per-token, code and plays interleaved), first half / second half;
* synthetic top-4 traces, first half / second half: stationary, and with popularity drift;
* the shared DeepSeek-V3 loads (load-only, ``../shared/data/dsv3-expert-loads``, skipped when absent):
  fit on prefill, score on decode, and the reverse;
* ``tiny-coherent``: the bundled trace's halves in coherent mode (issue 16 part 4): hops (tokens that
  change GPU between consecutive layers) in and out of sample, against contiguous's.

Figures per solver: mean max/mean (busiest GPU over the mean, mean over layers) and MoE time (us per MoE
layer, per step of 4096 tokens per GPU, the evaluator's), in and out of sample, and how far the out-of-
sample time is above the oracle's (%). Solvers run on CP-SAT's deterministic time (``--deterministic``),
so the figures are the same on every run.

    .venv/bin/python bench/solvers_robustness.py                      # a few minutes on 2 cores
    .venv/bin/python bench/solvers_robustness.py --time-limit 2 --cases tiny,drift --json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_placement.cli.commands._common import print_json, table
from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate_many
from moe_placement.plan import Plan
from moe_placement.solvers import REGISTRY, PlacementProblem, SolverConfig, run_solver
from moe_placement.traces.loadjson import load_logical_count
from moe_placement.traces.synth import SynthConfig, generate
from moe_placement.traces.windows import split_workloads
from moe_placement.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "traces" / "data" / "tiny_moe_trace.parquet"
DSV3 = ROOT.parent / "shared" / "data" / "dsv3-expert-loads"


@dataclass(frozen=True)
class Case:
    """One time split: how to build (fit, score) workloads, and the cluster they are placed on."""

    name: str
    label: str
    make: Callable[[Path], tuple[Workload, Workload]]
    gpus: int
    gpus_per_node: int
    redundant: int


def _synth(drift: float) -> Callable[[Path], tuple[Workload, Workload]]:
    def make(tmp: Path) -> tuple[Workload, Workload]:
        path = tmp / f"drift{drift}.parquet"
        config = SynthConfig(
            num_layers=4, num_experts=64, top_k=4, num_tokens=8192, seq_len=128, drift=drift
        )
        generate(config, path, seed=7)
        return split_workloads(path, num_gpus=16)

    return make


def _dsv3(fit: str, score: str) -> Callable[[Path], tuple[Workload, Workload]]:
    def make(tmp: Path) -> tuple[Workload, Workload]:
        return load_logical_count(DSV3 / fit), load_logical_count(DSV3 / score)

    return make


CASES = (
    Case(
        "tiny",
        "bundled tiny-moe (16 experts top-2), halves; 16 GPUs / 2 nodes, R=16",
        lambda tmp: split_workloads(BUNDLED, num_gpus=16),
        16,
        8,
        16,
    ),
    Case(
        "stationary",
        "synthetic 64 experts top-4, no drift, halves; 16 GPUs / 2 nodes, R=16",
        _synth(0.0),
        16,
        8,
        16,
    ),
    Case(
        "drift",
        "synthetic 64 experts top-4, drift 0.5, halves; 16 GPUs / 2 nodes, R=16",
        _synth(0.5),
        16,
        8,
        16,
    ),
    Case(
        "dsv3-p2d",
        "DeepSeek-V3 loads: fit prefill_in4096, score decode_in1000out1000; 64 GPUs / 8 nodes, R=64",
        _dsv3("prefill_in4096.json", "decode_in1000out1000.json"),
        64,
        8,
        64,
    ),
    Case(
        "dsv3-d2p",
        "DeepSeek-V3 loads: fit decode_in1000out1000, score prefill_in4096; 64 GPUs / 8 nodes, R=64",
        _dsv3("decode_in1000out1000.json", "prefill_in4096.json"),
        64,
        8,
        64,
    ),
)


def run_case(case: Case, tmp: Path, time_limit_s: float, solvers: list[str]) -> dict[str, object]:
    """Every solver fitted on the fit part, scored in and out of sample, against the oracle."""
    fit, score = case.make(tmp)
    cluster = load_cluster(None).with_counts(case.gpus, case.gpus_per_node)
    config = SolverConfig(time_limit_s=time_limit_s, seed=0, extra={"deterministic": True})

    def problem(wl: Workload) -> PlacementProblem:
        return PlacementProblem(workloads=(wl,), cluster=cluster, num_redundant=case.redundant)

    oracle = run_solver("best", problem(score), config)
    plans: dict[str, Plan] = {}
    for name in solvers:
        print(f"  {case.name}: {name}", file=sys.stderr, flush=True)
        plans[name] = run_solver(name, problem(fit), config)
    names = list(plans)
    layers = fit.num_layers
    inside = evaluate_many([plans[n] for n in names], cluster, fit)
    outside = evaluate_many([*(plans[n] for n in names), oracle], cluster, score)
    oracle_ev = outside.pop().summary()
    oracle_us = float(oracle_ev["moe_time_us"]) / layers
    rows = []
    for name, ev_in, ev_out in zip(names, inside, outside, strict=True):
        s_in, s_out = ev_in.summary(), ev_out.summary()
        out_us = float(s_out["moe_time_us"]) / layers
        rows.append(
            {
                "solver": name,
                "in_max_over_mean": float(s_in["mean_max_over_mean"]),
                "in_us_per_layer": float(s_in["moe_time_us"]) / layers,
                "out_max_over_mean": float(s_out["mean_max_over_mean"]),
                "out_us_per_layer": out_us,
                "out_over_oracle_pct": 100.0 * (out_us / oracle_us - 1.0),
                "method": plans[name].provenance.method,
            }
        )
    return {
        "case": case.name,
        "label": case.label,
        "oracle_max_over_mean": float(oracle_ev["mean_max_over_mean"]),
        "oracle_us_per_layer": oracle_us,
        "rows": rows,
    }


def print_case(result: dict[str, object]) -> None:
    print(
        f"\n{result['label']}\n  oracle (best fitted on the score part): max/mean "
        f"{result['oracle_max_over_mean']:.4f}, {result['oracle_us_per_layer']:.2f} us per layer"
    )
    rows = result["rows"]
    assert isinstance(rows, list)
    print(
        table(
            [
                "solver",
                "in max/mean",
                "in us/layer",
                "out max/mean",
                "out us/layer",
                "out vs oracle %",
            ],
            [
                [
                    r["solver"],
                    r["in_max_over_mean"],
                    r["in_us_per_layer"],
                    r["out_max_over_mean"],
                    r["out_us_per_layer"],
                    f"{r['out_over_oracle_pct']:+.1f}",
                ]
                for r in rows
            ],
        )
    )


COHERENT_SOLVERS = ("contiguous", "eplb-global", "best", "robust")


def run_coherent(time_limit_s: float) -> dict[str, object]:
    """Coherent mode on the bundled trace's halves (issue 16 part 4): each solver fitted with
    ``--mode coherent`` on the first half, its hops (tokens that change GPU between consecutive MoE
    layers, summed over layers, per half of the trace) counted in and out of sample against contiguous's."""
    fit, score = split_workloads(BUNDLED, num_gpus=16)
    cluster = load_cluster(None).with_counts(16, 8)
    config = SolverConfig(time_limit_s=time_limit_s, seed=0, extra={"deterministic": True})
    problem = PlacementProblem(workloads=(fit,), cluster=cluster, num_redundant=16, mode="coherent")
    plans = []
    for name in COHERENT_SOLVERS:
        print(f"  tiny-coherent: {name}", file=sys.stderr, flush=True)
        plans.append(run_solver(name, problem, config))
    inside = [ev.summary() for ev in evaluate_many(plans, cluster, fit, mode="coherent")]
    outside = [ev.summary() for ev in evaluate_many(plans, cluster, score, mode="coherent")]
    base_in, base_out = float(inside[0]["hops"]), float(outside[0]["hops"])
    rows = [
        {
            "solver": name,
            "in_hops": float(s_in["hops"]),
            "in_hops_vs_contiguous_pct": 100.0 * (float(s_in["hops"]) / base_in - 1.0),
            "out_hops": float(s_out["hops"]),
            "out_hops_vs_contiguous_pct": 100.0 * (float(s_out["hops"]) / base_out - 1.0),
            "out_max_over_mean": float(s_out["mean_max_over_mean"]),
            "out_us_per_step": float(s_out["moe_time_us"]),
            "method": plan.provenance.method,
        }
        for name, plan, s_in, s_out in zip(COHERENT_SOLVERS, plans, inside, outside, strict=True)
    ]
    return {
        "case": "tiny-coherent",
        "label": "bundled tiny-moe, --mode coherent, halves; 16 GPUs / 2 nodes, R=16",
        "rows": rows,
    }


def print_coherent(result: dict[str, object]) -> None:
    print(f"\n{result['label']}\n  hops: tokens changing GPU between layers, all layers, per half")
    rows = result["rows"]
    assert isinstance(rows, list)
    print(
        table(
            [
                "solver",
                "in hops",
                "in vs contiguous %",
                "out hops",
                "out vs contiguous %",
                "out max/mean",
                "out MoE us/step",
            ],
            [
                [
                    r["solver"],
                    f"{r['in_hops']:.0f}",
                    f"{r['in_hops_vs_contiguous_pct']:+.1f}",
                    f"{r['out_hops']:.0f}",
                    f"{r['out_hops_vs_contiguous_pct']:+.1f}",
                    f"{r['out_max_over_mean']:.3f}",
                    f"{r['out_us_per_step']:.1f}",
                ]
                for r in rows
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=2.0, help="per solve (deterministic s)")
    parser.add_argument(
        "--cases",
        default=",".join([*(c.name for c in CASES), "tiny-coherent"]),
        help="comma-separated case names",
    )
    parser.add_argument(
        "--solvers", default=None, help="comma-separated solvers (default: every registered one)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    solvers = args.solvers.split(",") if args.solvers else sorted(REGISTRY)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case.name not in wanted:
                continue
            if case.name.startswith("dsv3") and not DSV3.is_dir():
                print(f"skipped {case.name}: {DSV3} is absent", file=sys.stderr)
                continue
            result = run_case(case, Path(tmp), args.time_limit, solvers)
            results.append(result)
            if not args.json:
                print_case(result)
        if "tiny-coherent" in wanted:
            result = run_coherent(args.time_limit)
            results.append(result)
            if not args.json:
                print_coherent(result)
    if args.json:
        print_json({"cases": results})


if __name__ == "__main__":
    main()
