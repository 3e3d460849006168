"""MoE layers on the simulated network: dispatch, expert compute, combine, with overlap modes.

:func:`simulate_moe` takes the evaluator's per-pair copies and per-GPU expert compute times
(:func:`moe_placement.metrics.evaluate`) and plays every MoE layer out on a :class:`~moe_placement.simulator.topology.Topology`
with a :class:`~moe_placement.simulator.engine.FluidNetwork`:

* ``overlap="none"``: attention, dispatch, expert FFN (+ shared expert), combine, one after another; a GPU
  starts its experts once everything addressed to it has landed, and sends its combine when done;
* ``"two-batch"``: the step is split into two micro-batches that share each GPU's compute stream (a SimPy
  resource), so one computes while the other communicates (DeepSeek's dual micro-batch overlap);
* ``"chunked"``: attention once, then ``chunks`` pieces whose dispatches go out back to back; chunk i's
  GEMM starts on a GPU when chunk i has landed there (Comet / FlashDMoE style fine-grained pipelining).

When communication overlaps compute its kernels hold ``cluster.comm_sm_fraction`` of the SMs, so compute
runs ``1 / (1 - comm_sm_fraction)`` slower in the overlapped modes (a stated fraction, not a fit).

:func:`simulate_uniform` is the microbenchmark of DeepEP's tests: T tokens per GPU, each choosing top-k
experts uniformly at random (optionally within its top ``node_limit`` nodes), experts split evenly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy
from tqdm import tqdm

from moe_placement.atomic import atomic_open
from moe_placement.cluster import ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU, Evaluation, evaluate
from moe_placement.plan import Plan
from moe_placement.simulator.collectives import (
    ALGOS,
    LL_ALGOS,
    LL_DISPATCH_HEADER_BYTES,
    PhasePlan,
    PhaseRun,
    build_phase,
    hybrid_ep_prob_bytes,
    run_phase,
    sm_message_bytes,
    when,
)
from moe_placement.simulator.decompose import layer_terms, phase_shape
from moe_placement.simulator.engine import FluidNetwork
from moe_placement.simulator.fast import FastModel
from moe_placement.simulator.moe_compiled import play_layers
from moe_placement.simulator.phaseloop import play_phases
from moe_placement.simulator.routing import uniform_routing
from moe_placement.simulator.topology import Topology
from moe_placement.timing import TIME_KEYS, LayerTime, StepTime
from moe_placement.workload import Workload

OVERLAPS = ("none", "two-batch", "chunked")


@dataclass
class Span:
    """One interval on one GPU's timeline (for the Chrome trace)."""

    name: str
    cat: str
    gpu: int
    start_us: float
    end_us: float


@dataclass
class SimResult:
    """The outcome of a simulation. ``per_layer``: one dict per simulated MoE layer; times in us: the
    :class:`~moe_placement.timing.LayerTime` fields (:meth:`step_time`), ``attention_us``,
    ``comm_lower_bound_us``, ``flows``, and the named terms of the gap to the evaluator
    (:mod:`moe_placement.simulator.decompose`: ``evaluator_us`` + ``routing_us`` + ``latency_us`` +
    ``pipeline_us`` + ``congestion_us`` + ``compute_model_us`` + ``attention_us`` + ``overlap_us`` =
    ``layer_us``)."""

    per_layer: list[dict[str, Any]]
    total_us: float
    link_names: list[str]
    link_kinds: list[str]
    link_bytes: np.ndarray
    link_cap_bytes_per_us: np.ndarray
    sim_end_us: float
    spans: list[Span] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    gpus_per_node: int = 8

    def step_time(self) -> StepTime:
        """Per-layer times as the one timing type (:mod:`moe_placement.timing`)."""
        return StepTime.of(
            (LayerTime(**{k: float(r[k]) for k in TIME_KEYS}) for r in self.per_layer), "simulator"
        )

    @property
    def lower_bound_us(self) -> float:
        """Communication lower bound summed over layers: each layer's busiest link bytes over its bandwidth."""
        return float(sum(r["comm_lower_bound_us"] for r in self.per_layer))

    def per_gpu_bytes(self, kind_prefix: str) -> np.ndarray:
        """Bytes each GPU sent on links named ``{kind_prefix}/{gpu}...`` (``nvl-tx``, ``nic-tx``)."""
        return _per_gpu_bytes(
            self.link_names, self.link_bytes, kind_prefix, self.config.get("num_gpus", 0)
        )

    def link_table(self) -> list[dict[str, Any]]:
        span = max(self.sim_end_us, 1e-9)
        return [
            {
                "link": n,
                "kind": k,
                "bytes": float(b),
                "gbytes_per_s": float(c / 1e3),
                "utilisation": float(b / (c * span)),
            }
            for n, k, b, c in zip(
                self.link_names,
                self.link_kinds,
                self.link_bytes,
                self.link_cap_bytes_per_us,
                strict=True,
            )
            if b > 0
        ]

    def summary(self) -> dict[str, Any]:
        comm = float(sum(r["dispatch_us"] + r["combine_us"] for r in self.per_layer))
        lb = self.lower_bound_us
        return {
            "total_us": self.total_us,
            "dispatch_us": float(sum(r["dispatch_us"] for r in self.per_layer)),
            "compute_us": float(sum(r["compute_us"] for r in self.per_layer)),
            "combine_us": float(sum(r["combine_us"] for r in self.per_layer)),
            "exposed_comm_us": float(sum(r["exposed_comm_us"] for r in self.per_layer)),
            "comm_lower_bound_us": lb,
            "comm_vs_lower_bound": comm / lb if lb > 0 else None,
            "nvlink_bytes_sent": float(self.per_gpu_bytes("nvl-tx").sum()),
            "nic_bytes_sent": float(self.per_gpu_bytes("nic-tx").sum()),
            **self.stats,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "summary": self.summary(),
            "per_layer": self.per_layer,
            "per_gpu": {
                "nvlink_bytes_sent": self.per_gpu_bytes("nvl-tx").tolist(),
                "nic_bytes_sent": self.per_gpu_bytes("nic-tx").tolist(),
            },
            "links": self.link_table(),
            "lower_bound_us": self.lower_bound_us,
        }

    def write_chrome_trace(self, path: str | Path) -> None:
        """Chrome / Perfetto trace: one process per node, one thread per GPU, ``X`` events in us."""
        gpn = max(1, self.gpus_per_node)
        events: list[dict[str, Any]] = []
        for gpu in sorted({s.gpu for s in self.spans}):
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": gpu // gpn,
                    "tid": gpu,
                    "args": {"name": f"gpu {gpu}"},
                }
            )
        for s in self.spans:
            events.append(
                {
                    "name": s.name,
                    "cat": s.cat,
                    "ph": "X",
                    "pid": s.gpu // gpn,
                    "tid": s.gpu,
                    "ts": s.start_us,
                    "dur": max(s.end_us - s.start_us, 0.0),
                }
            )
        with atomic_open(path) as handle:
            json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, handle)


def _per_gpu_bytes(
    link_names: Sequence[str], link_bytes: np.ndarray, kind_prefix: str, num_gpus: int
) -> np.ndarray:
    """``[gpus]`` bytes on links named ``{kind_prefix}/{gpu}...``: what each GPU sent over that kind."""
    out = np.zeros(num_gpus)
    for name, b in zip(link_names, link_bytes, strict=True):
        if name.startswith(kind_prefix + "/"):
            out[int(name.split("/")[1].split(".")[0])] += b
    return out


def _expert_pairs(pairs: np.ndarray, received: np.ndarray, axis: int) -> np.ndarray:
    """(token, expert) copies per GPU pair from the per-GPU-deduplicated ``pairs``: each expert GPU's
    pairs scaled so that they total its ``received`` assignments (exact totals per expert GPU; within one
    expert GPU the share of a token's repeat visits is taken as the same for every home GPU)."""
    got = pairs.sum(axis=axis)
    factor = np.divide(received, got, out=np.zeros_like(got), where=got > 0)
    return pairs * (factor[None, :] if axis == 0 else factor[:, None])


def _layer_phases(
    ev: Any, layer: int, algo: str, scale: float, sm_message_bytes: float = 0.0
) -> tuple[PhasePlan, PhasePlan]:
    gpn = ev.gpus_per_node
    d = ev.dispatch[layer]
    c = ev.combine[layer]
    low_latency = algo in LL_ALGOS
    # deepep-ll(-rdma): one message per (token, expert): the evaluator's per-GPU copies, scaled to its per-GPU
    # assignments (gpu_load); dispatch messages carry DeepEP's 16-byte header
    header = LL_DISPATCH_HEADER_BYTES if low_latency else 0.0
    load = ev.gpu_load[layer]
    dispatch = build_phase(
        algo,
        "dispatch",
        pairs=ev.dispatch_pairs[layer],
        nic=d.nic,
        nvlink=d.nvlink,
        bytes_per_copy=(ev.dispatch_bytes_per_copy + header) * scale,
        gpus_per_node=gpn,
        expert_pairs=_expert_pairs(ev.dispatch_pairs[layer], load, axis=0) if low_latency else None,
        sm_message_bytes=sm_message_bytes,
    )
    combine = build_phase(
        algo,
        "combine",
        pairs=ev.combine_pairs[layer],
        nic=c.nic,
        nvlink=c.nvlink,
        bytes_per_copy=ev.combine_bytes_per_copy * scale,
        gpus_per_node=gpn,
        expert_pairs=_expert_pairs(ev.combine_pairs[layer], load, axis=1) if low_latency else None,
        sm_message_bytes=sm_message_bytes,
    )
    return dispatch, combine


# How a uniform phase is played exactly: the compiled event loop, or SimPy processes (the reference)
EVENT_LOOPS = ("compiled", "simpy")
# ``finish_window`` (``--finish-window``): finishes due within this share of the simulated time end in
# one event. The exact simulation batches only float ties (engine.FINISH_TOL); a wider window plays
# fewer events and ends each flow up to half of it early or late (early: its last bytes counted as
# sent; see phaseloop.FINISH_WINDOW). Measured on
# the uniform DeepEP command (64-512 GPUs, docs/simulator.md) and tested (tests/test_simulator_window.py):
# at COARSE_FINISH_WINDOW every phase within FINISH_WINDOW_ERROR_BOUND of the exact simulation.
COARSE_FINISH_WINDOW = 3e-3
FINISH_WINDOW_ERROR_BOUND = 0.015
MAX_FINISH_WINDOW = 0.01
# A plan's layers (simulate_moe, no overlap) at COARSE_FINISH_WINDOW: each layer's time within
# PLAN_WINDOW_LAYER_BOUND, the whole step within FINISH_WINDOW_ERROR_BOUND. A layer's combine alone
# can move more (up to 5% measured): its GPUs start it apart, as their experts finish.
PLAN_WINDOW_LAYER_BOUND = 0.03


def _topology_for(
    cluster: ClusterSpec, algo: str, *, routing: str, pxn: bool, seed: int
) -> Topology:
    """The topology one all-to-all algorithm needs: NICs on a single node for the pure-RDMA
    low-latency kernels, a per-GPU SM link for Hybrid-EP."""
    return Topology(
        cluster,
        routing=routing,
        pxn=pxn,
        seed=seed,
        rdma_nics=algo == "deepep-ll-rdma",
        sm_links=algo == "hybrid-ep",
    )


def _route_all(topo: Topology, *, rdma: bool, rdma_in_node: bool) -> None:
    """Every GPU-to-GPU route up front, so that every link exists before the network is built (the
    same links, in the same order, whichever event loop plays)."""
    G, gpn = topo.cluster.num_gpus, topo.cluster.gpus_per_node
    for s in range(G):
        for d in range(G):
            topo.route(s, d)
            if s % gpn == d % gpn:
                topo.route(s, d, direct_nic=True)
            if rdma and (rdma_in_node or s // gpn != d // gpn):
                topo.route(s, d, rdma=True)


class _Runner:
    """Plays layers on one network; keeps spans and per-layer link byte snapshots."""

    @classmethod
    def for_algo(
        cls, cluster: ClusterSpec, algo: str, *, routing: str, pxn: bool, seed: int, chunks: int
    ) -> _Runner:
        """The runner for one all-to-all algorithm: low-latency kernels get NIC-to-NIC routes, and
        the February 2025 pure-RDMA ones also between GPUs of one node."""
        return cls(
            cluster,
            routing=routing,
            pxn=pxn,
            seed=seed,
            chunks=chunks,
            rdma=algo in LL_ALGOS,
            rdma_in_node=algo == "deepep-ll-rdma",
            sm_links=algo == "hybrid-ep",
        )

    def __init__(
        self,
        cluster: ClusterSpec,
        *,
        routing: str,
        pxn: bool,
        seed: int,
        chunks: int,
        rdma: bool = False,
        rdma_in_node: bool = False,
        sm_links: bool = False,
    ) -> None:
        """``rdma``: build the NIC-to-NIC routes of the low-latency kernels; ``rdma_in_node``: those
        routes also join GPUs of one node (pure-RDMA kernels), so even one node needs its NICs;
        ``sm_links``: a per-GPU link for the SMs that copy (Hybrid-EP)."""
        self.cluster = cluster
        self.env = simpy.Environment()
        self.topo = Topology(
            cluster,
            routing=routing,
            pxn=pxn,
            seed=seed,
            rdma_nics=rdma and rdma_in_node,
            sm_links=sm_links,
        )
        _route_all(self.topo, rdma=rdma, rdma_in_node=rdma_in_node)
        G = cluster.num_gpus
        self.net = FluidNetwork(
            self.env, self.topo.capacity(), max_flows=max(1024, G * G), binding=self.topo.binding()
        )
        self.spans: list[Span] = []
        self.chunks = chunks
        self.flows = 0

    def compute(
        self, gpu: int, stream: simpy.Resource, dur_us: float, name: str, after: simpy.Event
    ) -> simpy.Event:
        """Run ``dur_us`` of compute on ``gpu``'s stream once ``after`` fired; returns the finish event."""
        env = self.env
        finished = env.event()

        def proc() -> Any:
            yield after
            with stream.request() as req:
                yield req
                start = env.now
                if dur_us > 0:
                    yield env.timeout(dur_us)
                if dur_us > 0:
                    self.spans.append(Span(name, "compute", gpu, start, env.now))
            finished.succeed()

        env.process(proc())
        return finished

    def phase(self, plan: PhasePlan, ready: Sequence[simpy.Event], label: str) -> PhaseRun:
        run = run_phase(self.env, self.net, self.topo, plan, ready, chunks=self.chunks)
        for g in range(len(ready)):
            when(run.done[g], lambda g=g, run=run: self._phase_span(run, g, label))
        return run

    def _phase_span(self, run: PhaseRun, gpu: int, label: str) -> None:
        start = run.start_us[gpu] if np.isfinite(run.start_us[gpu]) else run.end_us[gpu]
        self.spans.append(
            Span(label, "comm", gpu, float(min(start, run.end_us[gpu])), float(run.end_us[gpu]))
        )


def _sm_message_bytes(cluster: ClusterSpec) -> float:
    """The cluster's GPU type's per-message SM cost in bytes (``hybrid-ep``'s SM link)."""
    return sm_message_bytes(cluster.gpu.sm_copy_gbytes_per_s, cluster.gpu.sm_message_us)


def _check_algo(algo: str) -> None:
    if algo not in ALGOS:
        raise PlacementError(f"unknown algo {algo!r}; known: {', '.join(ALGOS)}")


def _fired(env: simpy.Environment) -> simpy.Event:
    """An event that has already succeeded: the start signal of GPUs that wait on nothing."""
    go = env.event()
    go.succeed()
    return go


def _network_stats(net: FluidNetwork) -> dict[str, Any]:
    """The fluid network's own counters, for the run's statistics."""
    return {
        "events": net.events,
        "recomputes": net.recomputes,
        "flows": net.num_flows,
        "worst_link_utilisation": net.worst_utilisation,
    }


@dataclass
class _MoeRun:
    """What every layer of one :func:`simulate_moe` call shares, and the rows written so far."""

    ev: Evaluation  # evaluated with gpu_pairs=True: per-GPU-pair copies and compute times
    runner: _Runner
    algo: str
    overlap: str
    micro: int  # micro-batches (two-batch) or chunks (chunked) per layer; 1 without overlap
    slow: float  # compute slow-down while communication kernels hold SMs (1 without overlap)
    attention_us: float
    shared_expert_us: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def env(self) -> simpy.Environment:
        return self.runner.env

    @property
    def num_gpus(self) -> int:
        return self.runner.cluster.num_gpus

    @property
    def frac(self) -> float:
        """Share of the layer's tokens in one micro-batch."""
        return 1.0 / self.micro


@dataclass
class _LayerPlay:
    """One layer in flight: each GPU's compute stream, its busy time (us), and the phases started."""

    streams: list[simpy.Resource]
    go: simpy.Event
    busy_us: np.ndarray  # [gpus]
    d_runs: list[PhaseRun] = field(default_factory=list)
    c_runs: list[PhaseRun] = field(default_factory=list)
    ends: list[simpy.Event] = field(default_factory=list)


def _check_moe_args(
    algo: str,
    overlap: str,
    attention_us: float,
    shared_expert_us: float,
    chunks: int,
    relay_chunks: int,
) -> None:
    _check_algo(algo)
    if overlap not in OVERLAPS:
        raise PlacementError(f"unknown overlap {overlap!r}; known: {', '.join(OVERLAPS)}")
    if attention_us < 0 or shared_expert_us < 0:
        raise PlacementError("attention_us and shared_expert_us must be >= 0")
    if chunks < 1 or relay_chunks < 1:
        raise PlacementError("chunks and relay_chunks must be >= 1")


def _chosen_layers(num_layers: int, layers: list[int] | None) -> list[int]:
    chosen = list(range(num_layers)) if layers is None else list(layers)
    for layer in chosen:
        if not 0 <= layer < num_layers:
            raise PlacementError(
                f"layer {layer} out of range (the plan has {num_layers} MoE layers)"
            )
    return chosen


def _chunked_attention(run: _MoeRun, play: _LayerPlay) -> list[simpy.Event]:
    """Chunked overlap: attention runs once, whole, before the chunks; returns its per-GPU finish."""
    attn_us = run.attention_us * run.slow
    done = [
        run.runner.compute(g, play.streams[g], attn_us, "attention", play.go)
        for g in range(run.num_gpus)
    ]
    play.busy_us += attn_us
    return done


def _micro_ready(
    run: _MoeRun,
    play: _LayerPlay,
    tag: str,
    attn_done: list[simpy.Event] | None,
    prev_dispatch: simpy.Event | None,
) -> list[simpy.Event]:
    """When each GPU may send micro-batch ``tag``'s dispatch. Chunked: once attention is done there and
    the previous chunk's dispatch has landed everywhere (dispatches go out back to back); otherwise after
    the micro-batch's own share of attention on the GPU's stream."""
    env, G = run.env, run.num_gpus
    if attn_done is not None:
        gate = prev_dispatch if prev_dispatch is not None else play.go
        return [env.all_of([attn_done[g], gate]) for g in range(G)]
    attn_us = run.attention_us * run.frac * run.slow
    ready = [
        run.runner.compute(g, play.streams[g], attn_us, f"attention {tag}", play.go)
        for g in range(G)
    ]
    play.busy_us += attn_us
    return ready


def _micro_batch(
    run: _MoeRun,
    play: _LayerPlay,
    layer: int,
    tag: str,
    ready: list[simpy.Event],
    phases: tuple[PhasePlan, PhasePlan],
) -> simpy.Event:
    """Dispatch, expert compute (routed + shared expert) and combine of one micro-batch; returns the
    event of its dispatch having landed on every GPU."""
    env, runner, frac = run.env, run.runner, run.frac
    dispatch, combine = phases
    d_run = runner.phase(dispatch.scaled(frac), ready, f"dispatch {tag}")
    dispatched = env.all_of(d_run.done)
    comp_done = []
    for g in range(run.num_gpus):
        dur_us = (run.ev.compute_us[layer, g] + run.shared_expert_us) * frac * run.slow
        play.busy_us[g] += dur_us
        comp_done.append(
            runner.compute(g, play.streams[g], dur_us, f"experts {tag}", d_run.done[g])
        )
    c_run = runner.phase(combine.scaled(frac), comp_done, f"combine {tag}")
    play.d_runs.append(d_run)
    play.c_runs.append(c_run)
    play.ends.extend(c_run.done)
    return dispatched


def _layer_row(
    run: _MoeRun, play: _LayerPlay, layer: int, layer_us: float, moved: np.ndarray
) -> dict[str, Any]:
    """One row of :attr:`SimResult.per_layer`; ``moved``: bytes each link carried in the layer."""
    net = run.runner.net
    lb = float((moved / net.cap).max()) if moved.any() else 0.0
    compute_max = float((run.ev.compute_us[layer] + run.shared_expert_us).max() * run.slow)
    attention_us = float(run.attention_us * run.slow)
    phase_runs = play.d_runs + play.c_runs
    terms = layer_terms(
        float(layer_us),
        [phase_shape(r, net) for r in phase_runs],
        ev=run.ev,
        layer=layer,
        cluster=run.runner.cluster,
        compute_us=compute_max,
        attention_us=attention_us,
    )
    return {
        "layer": layer,
        "dispatch_us": float(sum(r.collective_us for r in play.d_runs)),
        "compute_us": compute_max,
        "combine_us": float(sum(r.collective_us for r in play.c_runs)),
        "layer_us": float(layer_us),
        "exposed_comm_us": float(max(layer_us - play.busy_us.max(), 0.0)),
        "attention_us": attention_us,
        "comm_lower_bound_us": lb,
        "flows": int(sum(r.flows for r in phase_runs)),
        **terms,
    }


def _layer_proc(run: _MoeRun, layer: int) -> Any:
    """SimPy process of one MoE layer: start its micro-batches, wait for every combine, write its row."""
    env, net, G = run.env, run.runner.net, run.num_gpus
    t0 = env.now
    bytes_before = net.link_bytes.copy()
    phases = _layer_phases(
        run.ev, layer, run.algo, run.ev.scale, _sm_message_bytes(run.runner.cluster)
    )
    play = _LayerPlay([simpy.Resource(env, capacity=1) for _ in range(G)], _fired(env), np.zeros(G))
    attn_done = _chunked_attention(run, play) if run.overlap == "chunked" else None
    prev_dispatch: simpy.Event | None = None
    for m in range(run.micro):
        tag = f"L{layer}" + (f".mb{m}" if run.micro > 1 else "")
        ready = _micro_ready(run, play, tag, attn_done, prev_dispatch)
        prev_dispatch = _micro_batch(run, play, layer, tag, ready, phases)
    yield env.all_of(play.ends)
    run.rows.append(_layer_row(run, play, layer, env.now - t0, net.link_bytes - bytes_before))


def _play_layers(run: _MoeRun, layers: list[int], progress: bool) -> None:
    """Play ``layers`` one after another on the run's network, to the end of the simulation."""
    env = run.env

    def main() -> Any:
        bar = tqdm(
            layers, desc="simulate", unit="layer", disable=None if progress else True, leave=False
        )
        for layer in bar:
            yield env.process(_layer_proc(run, layer))
        bar.close()

    env.process(main())
    env.run()


def _moe_result(run: _MoeRun, config: dict[str, Any], wall_s: float) -> SimResult:
    runner, rows = run.runner, run.rows
    return SimResult(
        per_layer=rows,
        total_us=float(sum(r["layer_us"] for r in rows)),
        link_names=list(runner.topo.link_names),
        link_kinds=list(runner.topo.link_kinds),
        link_bytes=runner.net.link_bytes.copy(),
        link_cap_bytes_per_us=runner.net.cap.copy(),
        sim_end_us=float(run.env.now),
        spans=runner.spans,
        stats={**_network_stats(runner.net), "wall_s": wall_s},
        config=config,
        gpus_per_node=runner.cluster.gpus_per_node,
    )


def _moe_config(run: _MoeRun, *, mode: str, tokens_per_gpu: int, routing: str) -> dict[str, Any]:
    """The run's settings, written next to its results (:attr:`SimResult.config`)."""
    cluster = run.runner.cluster
    return {
        "cluster": cluster.name,
        "num_gpus": cluster.num_gpus,
        "gpus_per_node": cluster.gpus_per_node,
        "fabric": cluster.fabric,
        "algo": run.algo,
        "overlap": run.overlap,
        "mode": mode,
        "tokens_per_gpu": tokens_per_gpu,
        "routing": routing,
        "pxn": run.runner.topo.pxn,
        "bytes_model": run.ev.bytes_model,
        "comm_sm_fraction": cluster.comm_sm_fraction,
        "attention_us": run.attention_us,
        "shared_expert_us": run.shared_expert_us,
    }


def _compiled_moe(
    ev: Evaluation,
    cluster: ClusterSpec,
    chosen: list[int],
    algo: str,
    attention_us: float,
    shared_expert_us: float,
    routing: str,
    pxn: bool,
    seed: int,
    relay_chunks: int,
    progress: bool,
    *,
    config: dict[str, Any],
    wall0: float,
    finish_window: float | None = None,
) -> SimResult:
    """:func:`simulate_moe` without overlap in the compiled event loop (:mod:`.moe_compiled`)."""
    topo = _topology_for(cluster, algo, routing=routing, pxn=pxn, seed=seed)
    _route_all(topo, rdma=algo in LL_ALGOS, rdma_in_node=algo == "deepep-ll-rdma")
    sm = _sm_message_bytes(cluster)
    phases = {layer: _layer_phases(ev, layer, algo, ev.scale, sm) for layer in chosen}
    run = play_layers(
        ev,
        topo,
        cluster,
        chosen,
        phases,
        attention_us=attention_us,
        shared_expert_us=shared_expert_us,
        relay_chunks=relay_chunks,
        progress=progress,
        finish_window=finish_window,
    )
    return SimResult(
        per_layer=run.rows,
        total_us=float(sum(r["layer_us"] for r in run.rows)),
        link_names=list(topo.link_names),
        link_kinds=list(topo.link_kinds),
        link_bytes=run.link_bytes,
        link_cap_bytes_per_us=run.caps,
        sim_end_us=run.sim_end_us,
        spans=[Span(*s) for s in run.spans],
        stats={**run.stats, "wall_s": time.perf_counter() - wall0},
        config={
            "cluster": cluster.name,
            "num_gpus": cluster.num_gpus,
            "gpus_per_node": cluster.gpus_per_node,
            "fabric": cluster.fabric,
            "algo": algo,
            "overlap": "none",
            **config,
            "routing": routing,
            "pxn": topo.pxn,
            "bytes_model": ev.bytes_model,
            "comm_sm_fraction": cluster.comm_sm_fraction,
            "attention_us": attention_us,
            "shared_expert_us": shared_expert_us,
        },
        gpus_per_node=cluster.gpus_per_node,
    )


def _fast_moe(
    ev: Evaluation,
    cluster: ClusterSpec,
    chosen: list[int],
    algo: str,
    attention_us: float,
    shared_expert_us: float,
    routing: str,
    pxn: bool,
    relay_chunks: int,
    *,
    config: dict[str, Any],
    wall0: float,
) -> SimResult:
    """:func:`simulate_moe` on the fast path: per layer attention, then dispatch, the slowest GPU's
    experts and combine, each phase from its busiest link (a barrier between phases)."""
    model = FastModel(cluster, routing=routing, pxn=pxn, rdma_nics=algo == "deepep-ll-rdma")
    G = cluster.num_gpus
    nvl_sent, nic_sent = np.zeros(G), np.zeros(G)
    rows: list[dict[str, Any]] = []
    for layer in chosen:
        dispatch, combine = _layer_phases(ev, layer, algo, ev.scale, _sm_message_bytes(cluster))
        d_us, _ = model.phase_us(dispatch, relay_chunks)
        c_us, _ = model.phase_us(combine, relay_chunks)
        loads = model.plan_loads(dispatch) + model.plan_loads(combine)
        nvl_sent += loads.nvl_tx
        nic_sent += loads.nic_tx
        compute_us = float((ev.compute_us[layer] + shared_expert_us).max())
        layer_us = attention_us + d_us + compute_us + c_us
        rows.append(
            {
                "layer": layer,
                "dispatch_us": d_us,
                "compute_us": compute_us,
                "combine_us": c_us,
                "layer_us": layer_us,
                "exposed_comm_us": d_us + c_us,
                "attention_us": attention_us,
                "comm_lower_bound_us": loads.busiest_us(),
                "flows": 0,
            }
        )
    names = [f"nvl-tx/{g}" for g in range(G)] + [f"nic-tx/{g}.0" for g in range(G)]
    caps = np.concatenate([np.full(G, max(model.nvl_cap, 1e-9)), np.full(G, model.nic_cap)])
    total_us = float(sum(r["layer_us"] for r in rows))
    return SimResult(
        per_layer=rows,
        total_us=total_us,
        link_names=names,
        link_kinds=["nvlink"] * G + ["nic"] * G,
        link_bytes=np.concatenate([nvl_sent, nic_sent]),
        link_cap_bytes_per_us=caps,
        sim_end_us=total_us,
        stats={
            "events": 0,
            "recomputes": 0,
            "flows": 0,
            "worst_link_utilisation": 1.0,
            "wall_s": time.perf_counter() - wall0,
        },
        config={
            "cluster": cluster.name,
            "num_gpus": G,
            "gpus_per_node": cluster.gpus_per_node,
            "fabric": cluster.fabric,
            "algo": algo,
            "overlap": "none",
            "routing": routing,
            "fast": True,
            "attention_us": attention_us,
            "shared_expert_us": shared_expert_us,
            **config,
        },
        gpus_per_node=cluster.gpus_per_node,
    )


def simulate_moe(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    mode: str = "standard",
    algo: str = "deepep",
    overlap: str = "none",
    tokens_per_gpu: int = DEFAULT_TOKENS_PER_GPU,
    layers: list[int] | None = None,
    attention_us: float = 0.0,
    shared_expert_us: float = 0.0,
    seed: int = 0,
    routing: str = "spray",
    pxn: bool = True,
    chunks: int = 4,
    relay_chunks: int = 8,
    progress: bool = True,
    fast: bool = False,
    event_loop: str | None = None,
    finish_window: float | None = None,
) -> SimResult:
    """Simulate every MoE layer of ``plan`` on ``cluster`` for ``workload`` (see the module docstring).

    ``layers``: which MoE layers (default all); ``attention_us`` / ``shared_expert_us``: per-GPU times of
    the full step's attention and shared expert; ``chunks``: pieces in ``overlap="chunked"``;
    ``relay_chunks``: pieces DeepEP's forwarder pipeline cuts the NIC stage into. ``fast``: each phase
    by the analytical path (:mod:`moe_placement.simulator.fast`) with a barrier between phases, no
    flows played (``overlap="none"`` only; no spans, no difference terms). ``event_loop``: without
    overlap the layers play in the compiled event loop (``"compiled"``, the default there; the same
    events as SimPy, :mod:`moe_placement.simulator.moe_compiled`), the overlapped modes as SimPy
    processes (``"simpy"``, also available without overlap as the reference). ``finish_window``: as in
    :func:`simulate_uniform` (the compiled loop, layers without overlap).
    """
    _check_moe_args(algo, overlap, attention_us, shared_expert_us, chunks, relay_chunks)
    if event_loop is None:
        event_loop = "compiled" if overlap == "none" else "simpy"
    if event_loop not in EVENT_LOOPS:
        raise PlacementError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}")
    if event_loop == "compiled" and overlap != "none":
        raise PlacementError("the compiled event loop plays layers without overlap; use simpy")
    if fast and overlap != "none":
        raise PlacementError("the fast path times layers without overlap; drop --fast or --overlap")
    check_finish_window(finish_window, fast, event_loop)
    wall0 = time.perf_counter()
    ev = evaluate(plan, cluster, workload, mode=mode, tokens_per_gpu=tokens_per_gpu, gpu_pairs=True)
    chosen = _chosen_layers(ev.num_layers, layers)
    if fast:
        return _fast_moe(
            ev,
            cluster,
            chosen,
            algo,
            attention_us,
            shared_expert_us,
            routing,
            pxn,
            relay_chunks,
            config={"mode": mode, "tokens_per_gpu": tokens_per_gpu},
            wall0=wall0,
        )
    if event_loop == "compiled":
        return _compiled_moe(
            ev,
            cluster,
            chosen,
            algo,
            attention_us,
            shared_expert_us,
            routing,
            pxn,
            seed,
            relay_chunks,
            progress,
            config={"mode": mode, "tokens_per_gpu": tokens_per_gpu, "finish_window": finish_window},
            wall0=wall0,
            finish_window=finish_window,
        )
    runner = _Runner.for_algo(
        cluster, algo, routing=routing, pxn=pxn, seed=seed, chunks=relay_chunks
    )
    micro = {"none": 1, "two-batch": 2, "chunked": chunks}[overlap]
    slow = 1.0 / (1.0 - cluster.comm_sm_fraction) if micro > 1 else 1.0
    run = _MoeRun(ev, runner, algo, overlap, micro, slow, attention_us, shared_expert_us)
    _play_layers(run, chosen, progress)
    config = _moe_config(run, mode=mode, tokens_per_gpu=tokens_per_gpu, routing=routing)
    return _moe_result(run, config, time.perf_counter() - wall0)


@dataclass
class _UniformTraffic:
    """Uniformly routed tokens as :func:`uniform_routing` counts them (``[gpus, gpus]`` copies, and per
    sending GPU its (token, node) pairs), and the bytes of one copy in each phase."""

    pairs: np.ndarray
    nic: np.ndarray
    nvlink: np.ndarray
    node_pairs: np.ndarray
    expert_pairs: np.ndarray
    dispatch_bytes_per_copy: float
    combine_bytes_per_copy: float
    # bytes of one dispatch copy as the published tests count them, when not all it sends (hybrid-ep's
    # test counts the token, not the probability row sent with it); 0: dispatch_bytes_per_copy
    dispatch_counted_bytes: float = 0.0


def check_uniform_args(
    algo: str,
    num_gpus: int,
    tokens: int,
    hidden: int,
    top_k: int,
    num_experts: int,
    node_limit: int | None,
) -> int:
    """Raise on arguments DeepEP's test would reject; returns the experts kept (a multiple of the GPUs)."""
    _check_algo(algo)
    if tokens < 1 or hidden < 1 or top_k < 1:
        raise PlacementError("tokens, hidden and top_k must be >= 1")
    experts = (num_experts // num_gpus) * num_gpus
    if experts < top_k:
        raise PlacementError(
            f"{num_experts} experts over {num_gpus} GPUs leaves fewer than top_k={top_k}"
        )
    if node_limit is not None and node_limit < 1:
        raise PlacementError("node_limit must be >= 1")
    return experts


def _uniform_phases(
    algo: str, traffic: _UniformTraffic, gpus_per_node: int, sm_message_bytes: float = 0.0
) -> tuple[PhasePlan, PhasePlan]:
    """Dispatch and combine plans; combine is dispatch's traffic reversed."""
    t = traffic
    dispatch = build_phase(
        algo,
        "dispatch",
        pairs=t.pairs,
        nic=t.nic,
        nvlink=t.nvlink,
        bytes_per_copy=t.dispatch_bytes_per_copy,
        gpus_per_node=gpus_per_node,
        expert_pairs=t.expert_pairs,
        sm_message_bytes=sm_message_bytes,
    )
    combine = build_phase(
        algo,
        "combine",
        pairs=t.pairs.T,
        nic=t.nic.T,
        nvlink=t.nvlink.T,
        bytes_per_copy=t.combine_bytes_per_copy,
        gpus_per_node=gpus_per_node,
        expert_pairs=t.expert_pairs.T,
        sm_message_bytes=sm_message_bytes,
    )
    return dispatch, combine


def _play_uniform(
    runner: _Runner, phases: tuple[PhasePlan, PhasePlan]
) -> tuple[list[float], list[np.ndarray]]:
    """Each phase on every GPU at once, the next once the last has landed everywhere; returns each
    phase's span (us) and the links' cumulative bytes after it."""
    env, G = runner.env, runner.cluster.num_gpus
    spans_us: list[float] = []
    snaps: list[np.ndarray] = []

    def main() -> Any:
        for plan in phases:
            run = runner.phase(plan, [_fired(env)] * G, plan.name)
            yield env.all_of(run.done)
            spans_us.append(run.span_us)
            snaps.append(runner.net.link_bytes.copy())

    env.process(main())
    env.run()
    return spans_us, snaps


def _sent_bytes(topo: Topology, link_bytes: np.ndarray) -> dict[str, list[float]]:
    """Bytes each GPU sent over NVLink and over its NIC, out of per-link ``link_bytes``."""
    names, G = topo.link_names, topo.cluster.num_gpus
    return {
        "nvlink_bytes_sent": _per_gpu_bytes(names, link_bytes, "nvl-tx", G).tolist(),
        "nic_bytes_sent": _per_gpu_bytes(names, link_bytes, "nic-tx", G).tolist(),
    }


def _deepep_bandwidths(
    traffic: _UniformTraffic, algo: str, gpus_per_node: int, d_us: float, c_us: float
) -> dict[str, float | None]:
    """Bandwidths (GB/s) counted the way DeepEP's tests count them (see :func:`simulate_uniform`)."""
    t = traffic
    d_bpc = t.dispatch_counted_bytes or t.dispatch_bytes_per_copy
    c_bpc = t.combine_bytes_per_copy
    # DeepEP's counting: copies received per GPU including its own, (token, node) pairs per sender
    recv_copies = t.pairs.sum(axis=0)
    # RDMA "units" per sending GPU: (token, node) pairs for the normal kernels (internode only),
    # (token, expert) selections for the low-latency ones (what test_low_latency.py counts)
    rdma_units: float | None = None
    if algo in LL_ALGOS:
        rdma_units = float(t.expert_pairs.sum(axis=1).mean())
    elif gpus_per_node < t.pairs.shape[0]:
        rdma_units = float(t.node_pairs.mean())
    return {
        "dispatch_nvl_gbytes_per_s": float(recv_copies.mean() * d_bpc / d_us / 1e3),
        "combine_nvl_gbytes_per_s": float(recv_copies.mean() * c_bpc / c_us / 1e3),
        "dispatch_rdma_gbytes_per_s": None
        if rdma_units is None
        else rdma_units * d_bpc / d_us / 1e3,
        "combine_rdma_gbytes_per_s": None
        if rdma_units is None
        else rdma_units * c_bpc / c_us / 1e3,
    }


def _uniform_measures(
    topo: Topology,
    traffic: _UniformTraffic,
    algo: str,
    spans_us: list[float],
    phase_bytes: list[np.ndarray],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Phase times (us), per-GPU bytes sent per phase and in all, DeepEP's bandwidths, and the
    network's counters (``stats``), out of the phases' spans and per-link bytes."""
    (d_us, c_us), (d_bytes, c_bytes) = spans_us, phase_bytes
    cap = topo.capacity()
    return {
        "dispatch_us": d_us,
        "combine_us": c_us,
        "dispatch": {
            **_sent_bytes(topo, d_bytes),
            "lower_bound_us": float((d_bytes / cap).max()),
        },
        "combine": {**_sent_bytes(topo, c_bytes), "lower_bound_us": float((c_bytes / cap).max())},
        **_sent_bytes(topo, d_bytes + c_bytes),
        **_deepep_bandwidths(traffic, algo, topo.cluster.gpus_per_node, d_us, c_us),
        **stats,
    }


def simulate_uniform(
    cluster: ClusterSpec,
    *,
    tokens: int = 4096,
    hidden: int = 7168,
    top_k: int = 8,
    node_limit: int | None = None,
    dispatch_bytes: float = 1.0 + 4.0 / 128.0,
    combine_bytes: float = 2.0,
    algo: str = "deepep",
    seed: int = 0,
    num_experts: int = 256,
    routing: str = "spray",
    pxn: bool = True,
    relay_chunks: int = 8,
    fast: bool = False,
    event_loop: str = "compiled",
    progress: bool = False,
    finish_window: float | None = None,
) -> dict[str, Any]:
    """Dispatch then combine of uniformly routed tokens (``tokens`` per GPU), as DeepEP's tests do.

    Returns times (us), per-GPU bytes sent over NVLink and NIC, and the bandwidths the way DeepEP counts
    them: ``nvl_gbytes_per_s`` = received token copies (own GPU included) x hidden x bytes / time per GPU,
    ``rdma_gbytes_per_s`` = (token, destination node) pairs (own node included) x hidden x bytes / time;
    with ``algo="deepep-ll"`` or ``"deepep-ll-rdma"`` (tests/test_low_latency.py) ``rdma_gbytes_per_s`` = (token, selected expert)
    pairs, own rank included, x message bytes (dispatch: hidden x ``dispatch_bytes`` + a 16-byte header,
    combine: hidden x ``combine_bytes``) / time, for any node count.

    ``fast``: the analytical path (:mod:`moe_placement.simulator.fast`, within its stated error of the
    event simulation) instead of playing the flows; ``events`` and ``flows`` are then 0.
    ``event_loop``: ``"compiled"`` (:mod:`moe_placement.simulator.phaseloop`) or ``"simpy"``, the same
    event simulation as SimPy processes (the reference; several times slower). ``progress``: a bar
    per phase on stderr (compiled loop, on a terminal). ``finish_window``: flows that finish within this
    share of the simulated time end in one event (compiled loop only; at most
    :data:`MAX_FINISH_WINDOW`): fewer events, within :data:`FINISH_WINDOW_ERROR_BOUND` of the exact
    simulation at the window :data:`COARSE_FINISH_WINDOW`; ``None``, the exact simulation.
    """
    if event_loop not in EVENT_LOOPS:
        raise PlacementError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}")
    check_finish_window(finish_window, fast, event_loop)
    G, gpn = cluster.num_gpus, cluster.gpus_per_node
    experts = check_uniform_args(algo, G, tokens, hidden, top_k, num_experts, node_limit)
    wall0 = time.perf_counter()
    traffic, phases = _uniform_traffic_phases(
        cluster,
        algo,
        tokens,
        hidden,
        top_k,
        experts,
        node_limit,
        dispatch_bytes,
        combine_bytes,
        seed,
    )
    if fast:
        measures = _fast_measures(cluster, traffic, algo, phases, routing, pxn, relay_chunks)
    else:
        measures = _exact_measures(
            cluster,
            traffic,
            algo,
            phases,
            routing,
            pxn,
            seed,
            relay_chunks,
            event_loop,
            progress,
            finish_window,
        )
    return {
        "num_gpus": G,
        "gpus_per_node": gpn,
        "algo": algo,
        "tokens_per_gpu": tokens,
        "hidden": hidden,
        "top_k": top_k,
        "num_experts": experts,
        "node_limit": node_limit,
        "fast": fast,
        "finish_window": finish_window,
        **measures,
        "wall_s": time.perf_counter() - wall0,
    }


def check_finish_window(finish_window: float | None, fast: bool, event_loop: str) -> None:
    """Refuse a finish window out of range, or one given to a path that plays no window."""
    if finish_window is None:
        return
    if not (0.0 < finish_window <= MAX_FINISH_WINDOW):
        raise PlacementError(
            f"the finish window must be above 0 and at most {MAX_FINISH_WINDOW:g} (a share of the "
            f"simulated time), got {finish_window:g}"
        )
    if fast:
        raise PlacementError("the fast path plays no flows: drop --fast or --finish-window")
    if event_loop != "compiled":
        raise PlacementError(
            "the finish window is a setting of the compiled event loop (no --overlap), not simpy"
        )


def _uniform_traffic_phases(
    cluster: ClusterSpec,
    algo: str,
    tokens: int,
    hidden: int,
    top_k: int,
    experts: int,
    node_limit: int | None,
    dispatch_bytes: float,
    combine_bytes: float,
    seed: int,
    compiled_routing: bool = True,
) -> tuple[_UniformTraffic, tuple[PhasePlan, PhasePlan]]:
    """The routed traffic and the (dispatch, combine) plans of :func:`simulate_uniform`
    (``compiled_routing=False``: drawn by the routing's numpy reference, the same counts)."""
    G, gpn = cluster.num_gpus, cluster.gpus_per_node
    routed = uniform_routing(
        G,
        gpn,
        tokens=tokens,
        top_k=top_k,
        num_experts=experts,
        node_limit=node_limit,
        rng=np.random.default_rng(seed),
        compiled=compiled_routing,
    )
    header = LL_DISPATCH_HEADER_BYTES if algo in LL_ALGOS else 0.0
    if algo == "hybrid-ep":  # its dispatch carries a routing-probability row with every token copy
        header = hybrid_ep_prob_bytes(experts, G, gpn)
    traffic = _UniformTraffic(
        *routed,
        hidden * dispatch_bytes + header,
        hidden * combine_bytes,
        hidden * dispatch_bytes if algo == "hybrid-ep" else 0.0,
    )
    return traffic, _uniform_phases(algo, traffic, gpn, _sm_message_bytes(cluster))


def uniform_phase_pair(
    cluster: ClusterSpec, *, tokens: int, hidden: int, top_k: int, num_experts: int, algo: str
) -> tuple[Topology, tuple[PhasePlan, PhasePlan]]:
    """The network and the (dispatch, combine) plans that :func:`simulate_uniform`'s event simulation
    plays (default routing, seed 0, no node limit): what the warm-up needs to compile the compiled
    loop's kernels for the types they get. The routing is drawn by its numpy reference: the warm-up's
    workers each call this, and none should wait for the routing kernel's compile."""
    experts = check_uniform_args(algo, cluster.num_gpus, tokens, hidden, top_k, num_experts, None)
    _, phases = _uniform_traffic_phases(
        cluster, algo, tokens, hidden, top_k, experts, None, 1.0 + 4.0 / 128.0, 2.0, 0, False
    )
    return _topology_for(cluster, algo, routing="spray", pxn=True, seed=0), phases


def _exact_measures(
    cluster: ClusterSpec,
    traffic: _UniformTraffic,
    algo: str,
    phases: tuple[PhasePlan, PhasePlan],
    routing: str,
    pxn: bool,
    seed: int,
    relay_chunks: int,
    event_loop: str = "compiled",
    progress: bool = False,
    finish_window: float | None = None,
) -> dict[str, Any]:
    """The phases played flow by flow on the event simulation: in the compiled event loop
    (:mod:`moe_placement.simulator.phaseloop`) or, ``event_loop="simpy"``, as SimPy processes (the
    reference: the same events and times)."""
    if event_loop == "simpy":
        runner = _Runner.for_algo(
            cluster, algo, routing=routing, pxn=pxn, seed=seed, chunks=relay_chunks
        )
        spans_us, (after_d, after_c) = _play_uniform(runner, phases)
        return _uniform_measures(
            runner.topo,
            traffic,
            algo,
            spans_us,
            [after_d, after_c - after_d],
            _network_stats(runner.net),
        )
    topo = _topology_for(cluster, algo, routing=routing, pxn=pxn, seed=seed)
    outcomes, loop = play_phases(
        topo,
        phases,
        chunks=relay_chunks,
        progress=progress,
        finish_window=finish_window,
    )
    stats = {
        "events": loop.events,
        "recomputes": loop.recomputes,
        "flows": loop.flows,
        "worst_link_utilisation": loop.worst_utilisation,
    }
    return _uniform_measures(
        topo, traffic, algo, [o.span_us for o in outcomes], [o.link_bytes for o in outcomes], stats
    )


def _fast_measures(
    cluster: ClusterSpec,
    traffic: _UniformTraffic,
    algo: str,
    phases: tuple[PhasePlan, PhasePlan],
    routing: str,
    pxn: bool,
    relay_chunks: int,
) -> dict[str, Any]:
    """The phases estimated from their busiest links (:mod:`moe_placement.simulator.fast`)."""
    model = FastModel(cluster, routing=routing, pxn=pxn, rdma_nics=algo == "deepep-ll-rdma")
    out: dict[str, Any] = {}
    sent = {
        "nvlink_bytes_sent": np.zeros(cluster.num_gpus),
        "nic_bytes_sent": np.zeros(cluster.num_gpus),
    }
    for plan in phases:
        phase_us, bound_us = model.phase_us(plan, relay_chunks)
        loads = model.plan_loads(plan)
        out[f"{plan.name}_us"] = phase_us
        out[plan.name] = {
            "nvlink_bytes_sent": loads.nvl_tx.tolist(),
            "nic_bytes_sent": loads.nic_tx.tolist(),
            "lower_bound_us": bound_us,
        }
        sent["nvlink_bytes_sent"] += loads.nvl_tx
        sent["nic_bytes_sent"] += loads.nic_tx
    bandwidths = _deepep_bandwidths(
        traffic, algo, cluster.gpus_per_node, out["dispatch_us"], out["combine_us"]
    )
    return {
        **out,
        **{k: v.tolist() for k, v in sent.items()},
        **bandwidths,
        "events": 0,
        "recomputes": 0,
        "flows": 0,
        "worst_link_utilisation": 1.0,
    }
