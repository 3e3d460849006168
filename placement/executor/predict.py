"""The prediction side of validation: the simulator's per-layer times for a run (the evaluator's
analytic times while the simulator package is not importable).

The executor sits above the simulator in the import order (core <- simulator <- executor), so it may
import it; nothing below imports the executor.
"""

from __future__ import annotations

import contextlib
from typing import Any

from placement.cluster import ClusterSpec
from placement.metrics import evaluate
from placement.plan import Plan
from placement.workload import Workload


def simulator_available() -> bool:
    try:
        from simulator import simulate_moe  # noqa: F401
    except ImportError:
        return False
    return True


def predict_layers(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    overlap: str = "none",
    chunks: int = 4,
    tokens_per_gpu: float | None = None,
) -> tuple[list[dict[str, float]], str]:
    """Per-layer ``dispatch_us``, ``compute_us``, ``combine_us``, ``layer_us`` for exactly the replayed
    tokens (``tokens_per_gpu`` None: the workload's own tokens, no rescaling) and which model said so.

    The simulator runs its ``deepep`` algorithm: the replay forwards across nodes exactly as DeepEP does
    (on one node it is the same as ``direct``). ``overlap="chunked"`` predicts the pipelined run; the
    evaluator fallback has no overlap model and returns None there."""
    tpg: float = (
        tokens_per_gpu if tokens_per_gpu is not None else workload.num_tokens / plan.num_gpus
    )
    if float(tpg).is_integer():
        tpg = int(tpg)
    simulate_moe: Any = None
    with contextlib.suppress(ImportError):
        from simulator import simulate_moe
    if simulate_moe is not None:
        res: Any = simulate_moe(
            plan,
            cluster,
            workload,
            mode="standard",
            algo="deepep",
            overlap=overlap,
            tokens_per_gpu=tpg,
            chunks=chunks,
            progress=False,
        )  # type: ignore[arg-type]
        rows = [
            {k: float(row[k]) for k in ("dispatch_us", "compute_us", "combine_us", "layer_us")}
            for row in res.per_layer
        ]
        return rows, "simulator"
    if overlap != "none":
        return [], "evaluator (no overlap model)"
    ev = evaluate(
        plan,
        cluster,
        workload,
        mode="standard",
        tokens_per_gpu=None if tokens_per_gpu is None else int(tokens_per_gpu),
    )
    rows = [
        {k: float(row[k]) for k in ("dispatch_us", "compute_us", "combine_us", "layer_us")}
        for row in ev.per_layer()
    ]
    return rows, "evaluator (simulator not importable)"
