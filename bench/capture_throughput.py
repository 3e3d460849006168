"""Capture throughput (tokens/s) and trace size (bytes per token).

    .venv/bin/python bench/capture_throughput.py          # short run (under 2 minutes on 2 CPU cores)
    .venv/bin/python bench/capture_throughput.py --full   # more tokens, every architecture, larger batches

Rows: the bundled tiny MoE in prefill and decode mode, and tiny random configs of the supported
architectures. Throughput counts recorded tokens over the capture loop (model loading excluded; it is
reported separately for the bundled model; a short warm-up capture precedes each timed one). Uses
CUDA and bf16 when present.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moe_placement.cli.commands._common import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from moe_placement.traces.capture import TINY_CONFIGS, CaptureOptions, capture, load_model
    from moe_placement.traces.data import HELDOUT_DIR

    torch.set_num_threads(args.threads)
    tokens = 16384 if args.full else 4096
    archs = sorted(TINY_CONFIGS) if args.full else ["qwen3-moe", "deepseek-v3", "gpt-oss", "jetmoe"]
    batches = (8, 32) if args.full else (8,)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        bundled = load_model(None, None)
        load_s = time.perf_counter() - start
        cases = [
            ("tiny-moe (bundled)", bundled, CaptureOptions(tokens=tokens, batch=b)) for b in batches
        ]
        cases.append(
            (
                "tiny-moe (bundled)",
                bundled,
                CaptureOptions(
                    tokens=tokens // 4, batch=8, mode="decode", prompt_len=32, new_tokens=32
                ),
            )
        )
        for arch in archs:
            cases.append(
                (
                    f"{arch} (random)",
                    load_model(arch=arch, seed=0),
                    CaptureOptions(tokens=tokens // 2, batch=8),
                )
            )
        for index, (name, loaded, options) in enumerate(cases):
            # A short warm-up capture first, so one-time costs (first kernels, allocator) are not timed.
            capture(
                loaded,
                [HELDOUT_DIR],
                tmp / "warm.parquet",
                CaptureOptions(tokens=256, batch=2),
                progress=False,
            )
            result = capture(
                loaded, [HELDOUT_DIR], tmp / f"{index}.parquet", options, progress=False
            )
            rows.append(
                [
                    name,
                    options.mode,
                    options.batch,
                    result.meta.num_moe_layers,
                    result.meta.num_experts,
                    result.meta.top_k,
                    result.tokens,
                    result.seconds,
                    round(result.tokens_per_s),
                    result.bytes_per_token,
                ]
            )
    print(
        f"device {bundled.device} {bundled.dtype}, {args.threads} threads; bundled model load {load_s:.2f} s"
    )
    print(
        table(
            [
                "model",
                "mode",
                "batch",
                "layers",
                "experts",
                "k",
                "tokens",
                "seconds",
                "tokens/s",
                "bytes/token",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
