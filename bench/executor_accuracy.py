"""Executor bench: calibrate on the workers, then measure held-out plans and sizes against the simulator.

Calibration uses synthetic all-to-alls and expert-compute patterns only; the validation runs replay
synthetic traces (token counts, routings and plans never used in the fit) and compare per-layer measured
time with the prediction from the calibration: the host-sharing model (CPU ranks), and for comparison the
simulator with the calibrated spec. Target: |predicted / measured - 1| <= 20% per layer. Report the
machine's load average with the figures: other jobs on a shared host move them.

Robustness: the run is cut into ``--rounds`` rounds (16); each round runs the calibration benchmarks
once and replays every (size, plan) once, in a fresh shuffled order. The fit and each layer's time are
trimmed means over all rounds' repetitions (placement.executor.timing), so a change of the host's load
hits calibration, plans and sizes alike instead of one of them; short rounds follow the load closely.
``--clock`` and ``--trim`` switch the per-phase timing and the statistic, for side-by-side runs.

    .venv/bin/python bench/executor_accuracy.py            # default: 4 gloo workers, ~100 s
    .venv/bin/python bench/executor_accuracy.py --full     # more sizes and plans
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from moe_placement.cli.commands._common import table
from moe_placement.cli.main import main as cli
from moe_placement.executor import timing
from moe_placement.executor.calibrate import (
    CalibrationSamples,
    collect_calibration,
    fit_calibration,
)
from moe_placement.executor.driver import (
    ExecConfig,
    Measurement,
    load_replay_input,
    measure,
    pool_measurements,
)
from moe_placement.executor.group import WorkerGroup
from moe_placement.executor.validate import compare
from moe_placement.plan import Plan


def make_inputs(
    root: Path, tokens: int, hidden: int, inter: int, workers: int, solvers: list[str], seed: int
) -> tuple[str, dict[str, str]]:
    trace = str(root / f"t{tokens}_{hidden}.parquet")
    assert (
        cli(
            [
                "synth",
                "--out",
                trace,
                "--layers",
                "4",
                "--experts",
                "16",
                "--top-k",
                "2",
                "--tokens",
                str(tokens),
                "--seed",
                str(seed),
                "--hidden",
                str(hidden),
                "--intermediate",
                str(inter),
                "--json",
            ]
        )
        == 0
    )
    plans = {}
    for solver in solvers:
        out = str(root / f"{Path(trace).stem}_{solver}.json")
        assert (
            cli(
                [
                    "solve",
                    "--trace",
                    trace,
                    "--gpus",
                    str(workers),
                    "--gpus-per-node",
                    str(workers),
                    "--solver",
                    solver,
                    "--out",
                    out,
                    "--json",
                ]
            )
            == 0
        )
        plans[solver] = out
    return trace, plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="more token counts, shapes and plans")
    parser.add_argument("--reps", type=int, default=4, help="repetitions per round")
    parser.add_argument(
        "--rounds", type=int, default=16, help="interleaved calibration + replay rounds"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print calibration points and per-phase times"
    )
    parser.add_argument("--seed", type=int, default=0, help="order of the replays in each round")
    parser.add_argument(
        "--clock",
        choices=("span", "own"),
        default="own",
        help="phase time across ranks: last release to last end on the host's shared clock (span) "
        "or the slowest rank's own duration (own)",
    )
    parser.add_argument(
        "--trim",
        type=float,
        default=timing.TRIM,
        help="trimmed mean over repetitions: fraction dropped on each side (0.5: median)",
    )
    args = parser.parse_args()
    timing.SPAN_ON_SHARED_CLOCK = args.clock == "span"
    timing.TRIM = args.trim
    import contextlib
    import io

    sizes = [(1024, 256, 128), (4096, 256, 128)]
    solvers = ["contiguous", "greedy"]
    if args.full:
        sizes += [(2048, 512, 256), (8192, 256, 128)]
        solvers += ["round-robin", "random"]
    rows = []
    errors: list[float] = []
    sim_errors: list[float] = []
    phase_errors: dict[str, list[float]] = {}
    tmp = tempfile.TemporaryDirectory()
    with contextlib.redirect_stdout(io.StringIO()):
        inputs = [
            make_inputs(Path(tmp.name), t, h, i, args.workers, solvers, seed=11 + n)
            for n, (t, h, i) in enumerate(sizes)
        ]
    import os

    load_before = os.getloadavg()[0]
    start = time.monotonic()
    cal_hidden, cal_inter = 256, 128
    config = ExecConfig(workers=args.workers, reps=args.reps, warmup=1, chunks=4)
    datas = [load_replay_input(trace, args.workers, config) for trace, _ in inputs]
    jobs = [(s, solver) for s, (_, plans) in enumerate(inputs) for solver in plans]
    plans = {(s, solver): Plan.load(inputs[s][1][solver]) for s, solver in jobs}
    parts: dict[tuple[int, str], list[Measurement]] = {job: [] for job in jobs}
    rng = np.random.default_rng(args.seed)
    with tmp, WorkerGroup(args.workers, timeout_s=120) as group:
        samples: CalibrationSamples | None = None
        for _ in range(args.rounds):
            got = collect_calibration(
                group, hidden=cal_hidden, inter=cal_inter, dtype="float32", warmup=1, reps=args.reps
            )
            samples = got if samples is None else samples.merge(got)
            for j in rng.permutation(len(jobs)):
                s, solver = jobs[j]
                parts[(s, solver)].append(measure(group, plans[(s, solver)], datas[s], config))
        assert samples is not None
        cal = fit_calibration(group, samples, hidden=cal_hidden, inter=cal_inter, dtype="float32")
    rep = cal.report()
    for s, solver in jobs:
        tokens, hidden, _inter = sizes[s]
        plan = plans[(s, solver)]
        meas = pool_measurements(parts[(s, solver)])
        res = compare(plan, meas, cal.spec, datas[s], config.chunks, cal.host)
        sim = compare(plan, meas, cal.spec, datas[s], config.chunks)
        layer_err = [r["error"]["layer_us"] for r in res["layers"]]
        if args.verbose:
            for r in res["layers"]:
                print(
                    f"{tokens} {solver} layer {r['layer']}: "
                    + ", ".join(
                        f"{k} {r['measured'][k]:.0f}/{r['simulated'][k]:.0f}"
                        for k in ("notify_us", "dispatch_us", "compute_us", "combine_us")
                        if k in r["simulated"]
                    )
                    + " (measured/predicted us)"
                )
        errors += layer_err
        sim_errors += [r["error"]["layer_us"] for r in sim["layers"]]
        for r in res["layers"]:
            for k in ("dispatch_us", "compute_us", "combine_us"):
                phase_errors.setdefault(k, []).append(r["error"][k])
        rows.append(
            [
                tokens,
                hidden,
                solver,
                res["measured_us"] / 4,
                res["simulated_us"] / 4,
                f"{res['mean_abs_layer_error']:.1%}",
                f"{max(abs(e) for e in layer_err):.1%}",
                sim["simulated_us"] / 4,
                f"{sim['mean_abs_layer_error']:.1%}",
                f"{res.get('overlap_speedup', float('nan')):.2f}x",
                "yes" if res["copies_match_evaluator"] else "NO",
            ]
        )

    load = os.getloadavg()[0]  # 1-minute, at the end of the run
    print(f"load average before: {load_before:.1f}, after: {load:.1f}")
    print(
        f"machine: {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f}), {args.workers} gloo workers, {args.rounds} rounds x {args.reps} reps, "
        f"phase clock {args.clock}, trim {args.trim:g}, predictor: {res['predictor']}, "
        f"{time.monotonic() - start:.0f} s"
    )
    print(
        f"calibration (hidden {cal_hidden}, inter {cal_inter}): all-to-all {rep['all_to_all']['gbytes_per_s']:.3f} "
        f"GB/s + {rep['all_to_all']['latency_us']:.0f} us (fit error {rep['all_to_all']['mean_abs_rel_error']:.1%}); "
        f"GEMM {rep['gemm']['tflops'] * 1e3:.2f} GFLOP/s, weights {rep['gemm']['mem_gbytes_per_s']:.2f} GB/s "
        f"(fit error {rep['gemm']['mean_abs_rel_error']:.1%})"
    )
    print(
        table(
            [
                "tokens",
                "hidden",
                "plan",
                "measured us/layer",
                "simulated us/layer",
                "mean |err|",
                "max |err|",
                "simulator us/layer",
                "simulator mean |err|",
                "overlap",
                "rows = evaluator",
            ],
            rows,
        )
    )
    if args.verbose and rep["host"] is not None:
        for pt in rep["host"]["all_to_all_points"] + rep["host"]["compute_points"]:
            what = pt.get("rank_bytes") or pt.get("experts_tokens_per_rank")
            print(
                f"calibration {what}: measured {pt['measured_us']:.0f} us, fitted {pt['fitted_us']:.0f} us"
            )
    err = np.abs(np.array(errors))
    sim_err = np.abs(np.array(sim_errors))

    print(
        f"held-out layers: {err.size}, host model: mean |error| {err.mean():.1%}, median "
        f"{np.median(err):.1%}, within 20%: {(err <= 0.2).mean():.0%} (target: all); simulator alone: "
        f"mean |error| {sim_err.mean():.1%}, within 20%: {(sim_err <= 0.2).mean():.0%}"
    )
    print(
        "host model per phase, mean |error|: "
        + ", ".join(f"{k} {np.nanmean(np.abs(v)):.1%}" for k, v in phase_errors.items())
    )
    if cal.host is not None:
        h = cal.host
        print(
            f"host model: {h.cores:g} cores, {h.external_threads:g} external busy threads, "
            f"{h.expert_us:.0f} us/expert + {h.us_per_mflop:.2f} us/MFLOP + {h.compute_fixed_us:.0f} us "
            f"(fit error {h.compute_fit_error:.1%}); all-to-all {h.comm_latency_us:.0f} us + "
            f"{h.comm_us_per_kbyte:.3f} us/kB per rank (fit error {h.comm_fit_error:.1%})"
        )


if __name__ == "__main__":
    main()
