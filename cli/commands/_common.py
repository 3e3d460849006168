"""Shared pieces of the CLI: the Command record, cluster and trace options, tables and JSON output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.cluster import ClusterSpec, load_cluster
from moe_placement.errors import PlacementError
from moe_placement.shapes import model_shape
from moe_placement.workload import HOME_POLICIES, Workload


def parse_finite(text: str, what: str) -> float:
    """``float(text)``, refusing NaN and infinities: a NaN limit compares false against everything, so a
    check built on it would silently always pass."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PlacementError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise PlacementError(f"{what}: expected a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse ``type=`` for floats: NaN and infinities are usage errors (exit 2, one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type=`` for floats (the parser's default for ``type=float``): finite and >= 0; every
    float option of this CLI is a time, a size, a weight, a rate or a probability."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=`` for floats that must be > 0 (time limits, timeouts, scales)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for integers (the parser's default for ``type=int``): every integer option of
    this CLI is a count, a size, an index or a seed, and a negative seed is a ValueError in NumPy."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for integers that must be >= 1 (GPU, worker and token counts)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


class CheckFailed(Exception):  # noqa: N818  (the CLI contract name)
    """A check the user asked for failed (exit code 1)."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=None,
        help="preset ({clusters}) or YAML/TOML/JSON file (default h100-multirail)",
    )
    parser.add_argument("--gpus", type=int, default=None, help="override the cluster's GPU count")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="override GPUs per node")


def resolve_cluster(
    args: argparse.Namespace, default_gpus: int | None = None, default_per_node: int | None = None
) -> ClusterSpec:
    spec = load_cluster(args.cluster)
    gpus = args.gpus if args.gpus is not None else default_gpus
    per_node = args.gpus_per_node if args.gpus_per_node is not None else default_per_node
    if gpus is not None and per_node is None and gpus < spec.gpus_per_node:
        per_node = gpus
    if gpus is not None or per_node is not None:
        spec = spec.with_counts(gpus, per_node)
    return spec


def add_trace_args(
    parser: argparse.ArgumentParser, multiple: bool = True, bundled_default: bool = False
) -> None:
    """``--trace`` (required, unless ``bundled_default``: then absent means the bundled trace, filled
    in by :func:`default_traces`), ``--model`` and ``--home``."""
    parser.add_argument(
        "--trace",
        action="append" if multiple else "store",
        required=not bundled_default,
        metavar="PATH",
        help="trace Parquet file or logical_count JSON"
        + (" (repeatable)" if multiple else "")
        + (
            " (default: the bundled tiny-MoE trace, traces/data/tiny_moe_trace.parquet)"
            if bundled_default
            else ""
        ),
    )
    parser.add_argument(
        "--model", default=None, help="model shape for load-only JSON (deepseek-v3, ...)"
    )
    parser.add_argument(
        "--home", default="token", choices=HOME_POLICIES, help="how tokens map to home GPUs"
    )


def add_engine_arg(parser: argparse.ArgumentParser, default_help: str | None = None) -> None:
    """``--engine``: whose replica dispatch the figures assume and the solver optimises for."""
    from moe_placement.dispatch import SERVING_ENGINES

    parser.add_argument(
        "--engine",
        default=None,
        choices=SERVING_ENGINES,
        help="serving engine whose replica dispatch (which replica a token uses) to optimise for and "
        "report: SGLang static, vLLM EPLB, TensorRT-LLM wide-EP "
        + (
            default_help
            or "(default: the project's share-aware router, which no engine serves today)"
        ),
    )


def engine_line(engine: str) -> str:
    """One line saying which dispatch a report's balance and traffic assume."""
    from moe_placement.dispatch import SHARE, describe

    line = describe(engine)
    if engine == SHARE:
        line += "; served by an engine the balance differs: see --engine"
    return line


def default_traces(args: argparse.Namespace, command: str) -> list[str]:
    """``args.trace``, or the bundled trace (said on stderr) when none was given."""
    if args.trace:
        return list(args.trace)
    from moe_placement.traces.data import DEFAULT_TRACE

    sys.stderr.write(f"placement {command}: no --trace given: the bundled trace {DEFAULT_TRACE}\n")
    return [str(DEFAULT_TRACE)]


def load_workload(
    path: str,
    num_gpus: int | None,
    home: str = "token",
    model: str | None = None,
    progress: bool = True,
) -> Workload:
    """A Parquet trace (derived in one streaming pass) or a load-only logical_count JSON."""
    from moe_placement.traces.derive import derive_workload
    from moe_placement.traces.loadjson import (
        is_load_parquet,
        is_logical_count_file,
        load_load_parquet,
        load_logical_count,
    )
    from moe_placement.traces.reader import TraceFile

    shape = model_shape(model) if model else None
    if is_logical_count_file(path):
        return load_logical_count(path, shape)
    if is_load_parquet(path):
        return load_load_parquet(path, shape)
    if not Path(path).exists():
        raise PlacementError(f"trace file not found: {path}")
    return derive_workload(
        TraceFile(path),
        num_gpus=num_gpus,
        home_policy=home,
        shape=shape,
        progress=progress and sys.stderr.isatty(),
    )


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def print_json(obj: Any) -> None:
    json.dump(to_jsonable(obj), sys.stdout, indent=1)
    sys.stdout.write("\n")


def fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v == 0:
            return "0"
        if abs(v) >= 1e6 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


# ---- the step every time is for ---------------------------------------------------------------------


@dataclass(frozen=True)
class StepScope:
    """The step the printed times are for: tokens on each GPU and the serving phase, with where each
    came from (given, from the input, a default)."""

    tokens_per_gpu: int
    phase: str
    tokens_source: str
    phase_source: str

    def line(self, num_gpus: int, input_tokens: int, load_only: bool, scale: float) -> str:
        """One sentence: what each row and the total are per, and how the input was scaled."""
        held = (
            f"counts of {input_tokens:,} tokens over a whole run (load-only)"
            if load_only
            else f"{input_tokens:,} tokens"
        )
        return (
            f"per MoE layer, per step of {self.tokens_per_gpu:,} tokens per GPU ({self.tokens_source}) "
            f"x {num_gpus} GPUs, phase {self.phase} ({self.phase_source}); the input holds {held}, "
            f"so bytes and hops are scaled by {scale:.4g} to the step"
        )


def add_step_args(parser: argparse.ArgumentParser) -> None:
    """``--phase`` and ``--tokens-per-gpu``: the step every time (and every byte shown) is for."""
    from moe_placement.wholemodel import DEFAULT_TOKENS_PER_GPU_BY_PHASE, PHASES

    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_TOKENS_PER_GPU_BY_PHASE.items())
    parser.add_argument(
        "--phase",
        default=None,
        choices=PHASES,
        help="serving phase of the input (default: a trace's capture mode, or 'prefill'/'decode' in "
        "the file name; else prefill)",
    )
    parser.add_argument(
        "--tokens-per-gpu",
        type=int,
        default=None,
        help=f"tokens on each GPU in one step; times, bytes and hops are per step of this many "
        f"(default by phase: {defaults})",
    )


def resolve_step(args: argparse.Namespace, path: str) -> StepScope:
    """The step of ``args`` (``--tokens-per-gpu``, ``--phase``), inferring what is not given from the
    input ``path``; sets ``args.tokens_per_gpu`` to the resolved figure."""
    from moe_placement.wholemodel import DEFAULT_TOKENS_PER_GPU_BY_PHASE, PHASES

    phase, phase_source = getattr(args, "phase", None), "given"
    if phase is None:
        phase, phase_source = _phase_of_input(path, PHASES)
    tokens = getattr(args, "tokens_per_gpu", None)
    if tokens is not None and tokens < 1:
        raise PlacementError("--tokens-per-gpu must be >= 1")
    source = "given" if tokens is not None else f"default for {phase}"
    tokens = tokens if tokens is not None else DEFAULT_TOKENS_PER_GPU_BY_PHASE[phase]
    args.tokens_per_gpu = tokens
    return StepScope(tokens, phase, source, phase_source)


def _phase_of_input(path: str, phases: Sequence[str]) -> tuple[str, str]:
    """A captured trace's mode, else a phase named in the file name, else prefill (assumed)."""
    from moe_placement.traces.loadjson import is_logical_count_file

    if str(path).lower().endswith(".parquet") and not is_logical_count_file(path):
        try:
            from moe_placement.traces.reader import TraceFile

            extra = TraceFile(path).meta.extra
            mode = extra.get("mode") if isinstance(extra, dict) else None
            if mode in phases:
                return str(mode), "from the trace"
        except (PlacementError, OSError, ValueError, KeyError):
            pass  # a load-only Parquet file or an unreadable one: the name may still say
    name = Path(path).name.lower()
    for phase in phases:
        if phase in name:
            return phase, "from the file name"
    return "prefill", "assumed; --phase to set"
