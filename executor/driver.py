"""Driver side of a replay: pick the tokens, check the plan fits, ship instructions, collect timings.

Times are per layer: for each repetition each phase's time across ranks (phases start after a
barrier; see :mod:`moe_placement.executor.timing`: from the last rank's release to the last rank's end
when the ranks share a host clock, else the slowest rank's own time), then the trimmed mean over
repetitions. They come back as the one timing type, :class:`moe_placement.timing.StepTime` (source
``measured``), its phases one after the other: layer = dispatch + compute + combine (the count exchange,
``notify_us``, is kept apart, as DeepEP's figures leave their layout/notify step out). The overlapped
schedule is timed as a whole per layer.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.executor.group import WorkerGroup
from moe_placement.executor.routing import Replay, build_replay
from moe_placement.executor.timing import across_ranks, central_us, share_clock
from moe_placement.plan import Plan
from moe_placement.shapes import ModelShape
from moe_placement.timing import StepTime, step_from_columns
from moe_placement.workload import Workload

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MEASURED = "measured"  # the source of a measured StepTime


@dataclass(frozen=True)
class ExecConfig:
    """How to replay: ranks, backend, repetitions, chunks for the overlapped run, CPU scaling."""

    workers: int
    backend: str = "gloo"
    address: str | None = None
    timeout_s: float = 120.0
    warmup: int = 1
    reps: int = 3
    chunks: int = 4
    overlap: bool = True
    hidden_scale: float = 1.0
    dtype: str | None = None  # None: float32 with gloo (CPU), bfloat16 with NCCL
    max_tokens: int | None = None
    seed: int = 0
    home: str = "token"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.reps < 1:
            raise PlacementError("--warmup must be >= 0 and --reps >= 1")
        if self.chunks < 1:
            raise PlacementError("--chunks must be >= 1")
        if not 0 < self.hidden_scale <= 1:
            raise PlacementError("--hidden-scale must be in (0, 1]")
        if self.dtype is not None and self.dtype not in DTYPE_BYTES:
            raise PlacementError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise PlacementError("--tokens must be >= 1")

    @property
    def torch_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "bfloat16" if self.backend == "nccl" else "float32"


def worker_group(config: ExecConfig) -> WorkerGroup:
    """The (not yet started) group of workers the config asks for; use it as a context manager."""
    return WorkerGroup(
        config.workers,
        backend=config.backend,
        address=config.address,
        timeout_s=config.timeout_s,
        threads=config.threads,
    )


def executed_shape(shape: ModelShape, config: ExecConfig) -> ModelShape:
    """The shape the workers really run: hidden and expert sizes scaled, activations in the run's dtype
    (so the evaluator's bytes per copy are the bytes the collectives move)."""
    elem = float(DTYPE_BYTES[config.torch_dtype])
    return shape.replace(
        hidden_size=max(8, round(shape.hidden_size * config.hidden_scale)),
        expert_intermediate_size=max(
            8, round(shape.expert_intermediate_size * config.hidden_scale)
        ),
        dispatch_bytes_per_elem=elem,
        combine_bytes_per_elem=elem,
        weight_bytes_per_elem=elem,
        compute_dtype="bf16",
    )


@dataclass
class ReplayInput:
    """The tokens replayed (``expert_ids[layers, n, k]`` ...) and the workload derived from exactly them."""

    expert_ids: np.ndarray
    weights: np.ndarray
    seq_id: np.ndarray
    pos: np.ndarray
    workload: Workload
    shape: ModelShape


def load_replay_input(trace_path: str, num_gpus: int, config: ExecConfig) -> ReplayInput:
    """The first ``max_tokens`` tokens of the trace, and their workload (home demand for ``num_gpus``)
    derived by the same code path as every other component, from a temporary trace of just those tokens."""
    from moe_placement.traces.derive import derive_workload
    from moe_placement.traces.reader import TraceFile
    from moe_placement.traces.writer import TraceWriter

    if not Path(trace_path).exists():
        raise PlacementError(f"trace file not found: {trace_path}")
    trace = TraceFile(trace_path)
    shape = executed_shape(trace.meta.shape(), config)
    parts: list[Any] = []
    got = 0
    for chunk in trace.iter_chunks():
        parts.append(chunk)
        got += chunk.num_tokens
        if config.max_tokens is not None and got >= config.max_tokens:
            break
    if not parts:
        raise PlacementError(f"trace {trace_path} holds no tokens")
    n = got if config.max_tokens is None else min(got, config.max_tokens)
    ids = np.concatenate([c.expert_ids for c in parts], axis=1)[:, :n]
    wts = np.concatenate([c.weights for c in parts], axis=1)[:, :n]
    seq = np.concatenate([c.seq_id for c in parts])[:n]
    pos = np.concatenate([c.pos for c in parts])[:n]
    step = np.concatenate([c.step for c in parts])[:n]
    with tempfile.TemporaryDirectory(prefix="placement-replay-") as tmp:
        path = Path(tmp) / "replay.parquet"
        meta = dataclasses.replace(trace.meta, source=f"replay of {trace_path}")
        with TraceWriter(path, meta) as writer:
            writer.write(step, seq, pos, ids, wts)
        sub = TraceFile(path)
        workload = derive_workload(sub, num_gpus=num_gpus, home_policy=config.home, shape=shape)
        # Keep the routing in memory: the temporary file goes away with this block.
        first = sub.read_all()
    workload = dataclasses.replace(workload, chunk_source=lambda: [first])
    return ReplayInput(first.expert_ids, first.weights, first.seq_id, first.pos, workload, shape)


def weight_bytes_per_rank(plan: Plan, shape: ModelShape) -> float:
    return plan.num_layers * plan.slots_per_gpu * shape.expert_weight_bytes


def preflight(plan: Plan, config: ExecConfig, shape: ModelShape, num_tokens: int) -> None:
    """Refuse a plan that cannot run on the workers, before any worker starts."""
    if plan.num_gpus != config.workers:
        raise PlacementError(
            f"the plan places experts on {plan.num_gpus} GPUs but --workers is {config.workers}: "
            "run with as many workers as the plan's GPUs"
        )
    need = weight_bytes_per_rank(plan, shape)
    # Activations: the working set and its partial sums, a few times over for temporaries.
    need += (
        8.0
        * num_tokens
        * shape.top_k
        * shape.hidden_size
        * shape.dispatch_bytes_per_elem
        / plan.num_gpus
    )
    if config.backend == "gloo" and config.address is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / config.workers
        if need > 0.8 * avail:
            raise PlacementError(
                f"the plan needs ~{need / 2**30:.2f} GiB per worker (expert weights of "
                f"{plan.slots_per_gpu} slots x {plan.num_layers} layers) but each of {config.workers} "
                f"workers has ~{avail / 2**30:.2f} GiB free; lower --hidden-scale or --tokens"
            )


def check_device_memory(group: WorkerGroup, plan: Plan, shape: ModelShape, num_tokens: int) -> None:
    """After the workers report their free memory, and before any weight is allocated."""
    need = weight_bytes_per_rank(plan, shape)
    need += (
        8.0
        * num_tokens
        * shape.top_k
        * shape.hidden_size
        * shape.dispatch_bytes_per_elem
        / plan.num_gpus
    )
    for info in group.info:
        if need > 0.9 * info["free_bytes"]:
            raise PlacementError(
                f"the plan needs ~{need / 2**30:.2f} GiB on rank {info['rank']} ({info['device']}) but it has "
                f"{info['free_bytes'] / 2**30:.2f} GiB free; lower --hidden-scale or --tokens"
            )


@dataclass
class Measurement:
    """Measured per-layer times of one plan (trimmed means over repetitions of each phase's time)."""

    step: StepTime  # dispatch, compute, combine and layer time per layer, source ``measured``
    notify_us: np.ndarray  # [layers] the count exchange before dispatch (not part of the layer)
    overlap_us: np.ndarray | None  # [layers] the pipelined schedule's layer time, when run
    sent_copies: list[np.ndarray]  # per layer [G, G] rows moved (D1 + D2)
    outputs: list[Any]  # per rank, when asked: (home_tokens, inputs, outputs) per layer
    weight_bytes: int
    # raw [reps, layers, 4] each phase across ranks: notify, dispatch, compute, combine
    slowest_us: np.ndarray | None = None
    overlap_raw_us: np.ndarray | None = None  # raw [reps, layers] slowest rank, pipelined


def summarise(
    slowest_us: np.ndarray, overlap_us: np.ndarray | None
) -> tuple[StepTime, np.ndarray, np.ndarray | None]:
    """(per-layer times, ``notify_us[layers]``, pipelined ``[layers]``) from raw times
    ``[reps, layers, 4]`` (and ``[reps, layers]`` pipelined): the trimmed mean over repetitions of each
    phase's time across ranks."""
    med = central_us(slowest_us, axis=0)  # [layers, 4]
    notify_us, dispatch_us, compute_us, combine_us = med.T
    step = step_from_columns(dispatch_us, compute_us, combine_us, MEASURED)
    over = None if overlap_us is None else central_us(overlap_us, axis=0)
    return step, notify_us, over


def pool_measurements(parts: list[Measurement]) -> Measurement:
    """One measurement from several runs of the same plan and tokens (e.g. rounds interleaved with
    other plans so the host's drift hits them alike): trimmed means over all their repetitions."""
    if not parts or any(p.slowest_us is None for p in parts):
        raise PlacementError("pooling needs measurements with their raw times")
    slowest = np.concatenate([p.slowest_us for p in parts if p.slowest_us is not None])
    overs = [p.overlap_raw_us for p in parts]
    over = (
        None
        if any(o is None for o in overs)
        else np.concatenate([o for o in overs if o is not None])
    )
    step, notify_us, overlap_us = summarise(slowest, over)
    return dataclasses.replace(
        parts[0],
        step=step,
        notify_us=notify_us,
        overlap_us=overlap_us,
        slowest_us=slowest,
        overlap_raw_us=over,
    )


def measure(
    group: WorkerGroup,
    plan: Plan,
    data: ReplayInput,
    config: ExecConfig,
    *,
    fault: dict[str, Any] | None = None,
    return_outputs: bool = False,
) -> Measurement:
    """Replay ``plan`` on the group's workers and collect per-layer times."""
    shape = data.shape
    replay: Replay = build_replay(
        plan,
        data.expert_ids,
        data.weights,
        data.seq_id,
        data.pos,
        data.workload.demand(plan.num_gpus),
        home_policy=config.home,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.expert_intermediate_size,
        chunks=config.chunks,
    )
    check_device_memory(group, plan, shape, replay.num_tokens)
    stage2 = [bool(layer[0].stage2) for layer in replay.layers]
    spg = plan.slots_per_gpu
    per_rank = [
        (replay.for_rank(r), stage2, replay.phy2log[:, r * spg : (r + 1) * spg])
        for r in range(plan.num_gpus)
    ]
    weight_bytes = group.call(
        "load",
        shape.hidden_size,
        shape.expert_intermediate_size,
        config.torch_dtype,
        config.seed,
        per_rank=per_rank,
        what="loading expert weights",
    )
    results = group.call(
        "replay",
        config.warmup,
        config.reps,
        config.overlap,
        fault,
        return_outputs,
        what="replaying layers",
        watch=True,
    )
    stamps = np.stack([r["stamps_us"] for r in results])  # [ranks, reps, layers, 4, 2]
    slowest = across_ranks(stamps, share_clock(group.info))  # [reps, layers, 4]
    over = None
    if config.overlap:
        over = np.stack([r["overlap_us"] for r in results]).max(axis=0)  # [reps, layers]
    step, notify_us, overlap_us = summarise(slowest, over)
    return Measurement(
        step=step,
        notify_us=notify_us,
        overlap_us=overlap_us,
        sent_copies=[replay.sent_copies(layer) for layer in range(plan.num_layers)],
        outputs=[r["outputs"] for r in results],
        weight_bytes=int(max(weight_bytes)),
        slowest_us=slowest,
        overlap_raw_us=over,
    )


def relative_error(simulated: float, measured: float) -> float:
    """(simulated - measured) / measured; NaN when nothing was measured."""
    return (simulated - measured) / measured if measured > 0 else math.nan
