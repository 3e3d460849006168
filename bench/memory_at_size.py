"""Peak memory and wall time of ``placement stats``, ``solve`` and ``evaluate`` at several trace sizes.

Each command runs as its own process; its peak resident set size is the kernel's ``ru_maxrss`` for that
one child (``os.wait4``), so imports count too (the baseline row, ``placement --help``, shows them).
Traces are made with ``placement synth`` when absent (seeded, so the same sizes give the same files):

    .venv/bin/python bench/memory_at_size.py --rows 1000000 10000000 50000000 --folder /tmp/mem

``--rows`` counts (token, layer) rows: ``tokens = rows / layers``. The table is what docs/hardening.md
shows; ``--json`` prints the records instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PLACEMENT = [sys.executable, "-m", "moe_placement.cli.main"]


def run_measured(args: list[str]) -> tuple[int, float, float]:
    """``(exit code, peak RSS in MB, wall s)`` of ``placement ARGS`` run as one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        PLACEMENT + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        sys.stderr.write(f"placement {' '.join(args)} -> exit {proc.returncode}: {err[-500:]}\n")
    return proc.returncode, usage.ru_maxrss / 1024.0, wall_s  # ru_maxrss is in KB on Linux


def ensure_trace(folder: Path, rows: int, layers: int, experts: int, top_k: int) -> Path:
    path = folder / f"synth_{rows}.parquet"
    if not path.exists():
        tokens = max(rows // layers, 1)
        code, _, wall_s = run_measured(
            [
                "synth",
                "--out",
                str(path),
                "--layers",
                str(layers),
                "--experts",
                str(experts),
                "--top-k",
                str(top_k),
                "--tokens",
                str(tokens),
            ]
        )
        if code != 0:
            raise SystemExit(f"synth of {rows} rows failed")
        sys.stderr.write(f"made {path} ({rows:,} rows) in {wall_s:.0f} s\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--folder", default="/tmp/moe-memory-at-size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--commands", default="stats,solve,evaluate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    commands = args.commands.split(",")
    records = []
    code, rss_mb, wall_s = run_measured(["--help"])
    records.append({"rows": 0, "command": "--help (imports)", "rss_mb": rss_mb, "wall_s": wall_s})
    for rows in args.rows:
        trace = ensure_trace(folder, rows, args.layers, args.experts, args.top_k)
        plan = folder / f"plan_{rows}.json"
        for command in commands:
            if command == "stats":
                argv = ["stats", "--trace", str(trace)]
            elif command == "solve":
                argv = ["solve", "--trace", str(trace), "--gpus", str(args.gpus)]
                argv += ["--time-limit", str(args.time_limit), "--out", str(plan)]
            elif command == "evaluate":
                if not plan.exists():
                    continue
                argv = ["evaluate", "--trace", str(trace), "--plan", str(plan)]
            else:
                raise SystemExit(f"unknown command {command!r}")
            code, rss_mb, wall_s = run_measured(argv)
            records.append(
                {"rows": rows, "command": command, "exit": code, "rss_mb": rss_mb, "wall_s": wall_s}
            )
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'(token, layer) rows':>20}  {'command':>16}  {'peak RSS MB':>11}  {'wall s':>8}")
    for r in records:
        print(f"{r['rows']:>20,}  {r['command']:>16}  {r['rss_mb']:>11.0f}  {r['wall_s']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
