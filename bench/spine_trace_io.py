"""Benchmark: trace writing, streaming derivation and evaluation throughput, and peak memory.

Peak memory is measured with tracemalloc (NumPy and Arrow buffers allocated through Python's allocator
are counted), to show that derivation is bounded by the row group, not by the file.

    python bench/spine_trace_io.py            # 200k tokens x 8 layers (1.6 M rows)
    python bench/spine_trace_io.py --full     # 2 M tokens x 8 layers (16 M rows)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

from moe_placement.cluster import load_cluster
from moe_placement.metrics import evaluate
from moe_placement.solvers import PlacementProblem, run_solver
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    sizes = [50_000, 200_000] + ([2_000_000] if args.full else [])
    layers, experts, k, gpus = 8, 64, 8, 16
    cluster = load_cluster("h100-multirail").with_counts(gpus, 8)
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}; {layers} layers x {experts} experts, top-{k}, {gpus} GPUs"
    )
    print(
        f"{'tokens':>10} {'rows':>11} {'MB':>7} {'write s':>8} {'derive s':>9} {'rows/s':>11} {'peak MiB':>9} {'eval s':>7} {'rows/s':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in sizes:
            path = Path(tmp) / f"t{tokens}.parquet"
            start = time.perf_counter()
            generate(
                SynthConfig(num_layers=layers, num_experts=experts, top_k=k, num_tokens=tokens),
                path,
                seed=0,
            )
            write_s = time.perf_counter() - start
            tracemalloc.start()
            start = time.perf_counter()
            workload = derive_workload(TraceFile(path), num_gpus=gpus)
            derive_s = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            plan = run_solver("greedy", PlacementProblem((workload,), cluster))
            start = time.perf_counter()
            evaluate(plan, cluster, workload)
            eval_s = time.perf_counter() - start
            rows = tokens * layers
            print(
                f"{tokens:>10,} {rows:>11,} {path.stat().st_size / 1e6:>7.1f} {write_s:>8.2f} {derive_s:>9.2f} "
                f"{rows / derive_s:>11,.0f} {peak / 2**20:>9.0f} {eval_s:>7.2f} {rows / eval_s:>11,.0f}"
            )


if __name__ == "__main__":
    main()
