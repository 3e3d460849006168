"""``placement calibrate``: fit a cluster spec (bandwidth, latency, compute) on the executor's workers."""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command, print_json, table
from moe_placement.cli.commands.validate import add_exec_args, exec_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_exec_args(p)
    p.add_argument(
        "--out", required=True, help="cluster spec to write (YAML; load it with --cluster)"
    )
    p.add_argument("--trace", default=None, help="take hidden and expert sizes from this trace")
    p.add_argument(
        "--hidden", type=int, default=1024, help="hidden size of the benchmarks (before scaling)"
    )
    p.add_argument(
        "--intermediate", type=int, default=512, help="expert intermediate size (before scaling)"
    )
    p.add_argument("--reps", type=int, default=5)


def run(args: argparse.Namespace) -> int:
    from moe_placement import progress
    from moe_placement.errors import PlacementError
    from moe_placement.executor.calibrate import run_calibration, save_calibrated
    from moe_placement.executor.driver import executed_shape, worker_group
    from moe_placement.shapes import ModelShape

    config = exec_config(args)
    if args.trace:
        from moe_placement.traces.reader import TraceFile

        base = TraceFile(args.trace).meta.shape()
    else:
        if args.hidden < 1 or args.intermediate < 1:
            raise PlacementError("--hidden and --intermediate must be >= 1")
        base = ModelShape("benchmark", 1, 1, 1, args.hidden, args.intermediate)
    if args.reps < 1:
        raise PlacementError("--reps must be >= 1")
    shape = executed_shape(base, config)
    with worker_group(config) as group, progress.step("calibrating the links and experts"):
        cal = run_calibration(
            group,
            hidden=shape.hidden_size,
            inter=shape.expert_intermediate_size,
            dtype=config.torch_dtype,
            reps=args.reps,
        )
    save_calibrated(cal, args.out)
    rep = cal.report()
    if args.json:
        print_json({"out": args.out, **rep})
        return 0
    a2a, gemm = rep["all_to_all"], rep["gemm"]
    print(
        table(
            ["all-to-all bytes/rank", "measured us", "fitted us"],
            [[int(p["bytes"]), p["measured_us"], p["fitted_us"]] for p in a2a["points"]],
        )
    )
    print(
        table(
            ["GEMM FLOPs/rank", "weight bytes", "measured us", "fitted us"],
            [
                [p["flops"], p["weight_bytes"], p["measured_us"], p["fitted_us"]]
                for p in gemm["points"]
            ],
        )
    )
    print(
        f"fitted: all-to-all {a2a['gbytes_per_s']:.3f} GB/s per rank + {a2a['latency_us']:.0f} us "
        f"(mean error {a2a['mean_abs_rel_error']:.1%}); GEMMs {gemm['tflops'] * 1e3:.2f} GFLOP/s per rank, "
        f"weights {gemm['mem_gbytes_per_s']:.2f} GB/s (mean error {gemm['mean_abs_rel_error']:.1%})"
    )
    if cal.host is not None:
        h = cal.host
        print(
            f"host model (CPU ranks sharing cores; validate predicts with it): {h.cores:g} effective "
            f"cores, {h.external_threads:g} busy threads of other jobs, sharing exponent "
            f"{h.thrash_exponent:g}; compute {h.expert_us:.0f} us/expert + {h.us_per_mflop:.2f} us/MFLOP "
            f"+ {h.compute_fixed_us:.0f} us (mean error {h.compute_fit_error:.1%}); all-to-all "
            f"{h.comm_latency_us:.0f} us + {h.comm_us_per_kbyte:.3f} us/kB sent+received per rank "
            f"(mean error {h.comm_fit_error:.1%}); written to {args.out}.host.json"
        )
    print(f"wrote {args.out} (use it with --cluster {args.out})")
    return 0


COMMAND = Command(
    "calibrate",
    "fit a cluster spec on the executor's workers (all-to-all, GEMM throughput)",
    add_arguments,
    run,
)
