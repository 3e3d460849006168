"""MoE layers without designed overlap, played in the compiled event loop (``simulate_moe``'s default).

Without overlap a layer is a fixed chain per GPU: attention, then its dispatch sends; its experts once
its own dispatch data has landed; its combine sends once they finish; the next layer once every combine
has landed. Nothing in it waits on anything but the network and these fixed durations, so the whole
layer - dispatch and combine in flight together, each GPU's combine chained to its own dispatch after
its expert time - runs in :mod:`moe_placement.simulator.phaseloop` as one pair of phases. The rows are
built as the SimPy path builds them (:func:`moe_placement.simulator.moe._layer_row`): the same times,
spans and named differences, measured from the loop's flow records; ``tests/test_simulator_phaseloop.py``
compares both paths layer by layer. The overlapped modes (two micro-batches sharing a compute stream,
chunks) stay on SimPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from moe_placement.cluster import ClusterSpec
from moe_placement.metrics import Evaluation
from moe_placement.simulator.collectives import PhasePlan
from moe_placement.simulator.decompose import PhaseShape, layer_terms
from moe_placement.simulator.phaseloop import (
    CHAIN_PER_GPU,
    N_FLOWS,
    OUT_OF_FLOWS,
    OutOfRoomError,
    PhaseOutcome,
    _Loop,
    room,
)
from moe_placement.simulator.topology import Topology


@dataclass
class CompiledRun:
    """What the compiled layers leave for :class:`~moe_placement.simulator.moe.SimResult`."""

    rows: list[dict[str, Any]]
    spans: list[tuple[str, str, int, float, float]]  # (name, category, gpu, start us, end us)
    link_bytes: np.ndarray
    caps: np.ndarray
    sim_end_us: float
    stats: dict[str, Any]


def _collective_us(out: PhaseOutcome) -> float:
    """``PhaseRun.collective_us``: from the moment the last GPU joined to the last completion."""
    started = out.start_us[np.isfinite(out.start_us)]
    return float(max(out.end_us.max() - started.max(), 0.0)) if started.size else 0.0


class _Shapes:
    """``decompose.phase_shape`` from the loop's flow records instead of a FluidNetwork's."""

    def __init__(self, loop: _Loop) -> None:
        eng = loop.eng
        self.latency, self.size, self.start, self.end = eng[5], eng[6], eng[7], eng[9]
        self.route_of, self.rf_ptr, self.rf_link, self.rf_coef = eng[10], eng[12], eng[13], eng[14]
        self.caps = loop.caps
        # the route of every entry of the all-links CSR, to find the routes through one link
        self.entry_route = np.repeat(np.arange(self.rf_ptr.size - 1), np.diff(self.rf_ptr))

    def shape(self, out: PhaseOutcome, ids: np.ndarray) -> PhaseShape:
        span = out.span_us
        if not ids.size:
            return PhaseShape(span, 0.0, 0.0, 0.0)
        # bytes per link summed flow by flow in id order, as phase_shape sums them (so that near-ties
        # for the busiest link break the same way)
        routes = self.route_of[ids]
        lens = self.rf_ptr[routes + 1] - self.rf_ptr[routes]
        entry = np.repeat(self.rf_ptr[routes] - np.cumsum(lens) + lens, lens) + np.arange(
            lens.sum()
        )
        link_bytes = np.zeros(self.caps.size)
        np.add.at(
            link_bytes, self.rf_link[entry], self.rf_coef[entry] * np.repeat(self.size[ids], lens)
        )
        times = link_bytes / self.caps
        busiest = int(np.argmax(times))
        through = np.zeros(self.rf_ptr.size - 1, dtype=bool)
        through[self.entry_route[self.rf_link == busiest]] = True
        on = ids[through[self.route_of[ids]]]
        t_first = float(self.start[on].min())
        ends = self.end[on]
        last = int(on[np.argmax(ends)])
        return PhaseShape(
            span, float(times[busiest]), float(ends.max()) - t_first, float(self.latency[last])
        )


def play_layers(
    ev: Evaluation,
    topo: Topology,
    cluster: ClusterSpec,
    layers: list[int],
    phases: dict[int, tuple[PhasePlan, PhasePlan]],
    *,
    attention_us: float,
    shared_expert_us: float,
    relay_chunks: int,
    progress: bool,
    finish_window: float | None = None,
) -> CompiledRun:
    """Every layer of ``layers`` (``phases[layer]``: its dispatch and combine) one after another on one
    network in the compiled loop; plays again with more room if a bound was too small."""
    plans = [p for layer in layers for p in phases[layer]]
    flows, classes = room(plans, relay_chunks)
    while True:
        loop = _Loop(topo, plans, relay_chunks, flows, classes, False, finish_window)
        try:
            return _play(
                loop, ev, cluster, layers, phases, attention_us, shared_expert_us, progress
            )
        except OutOfRoomError as exc:
            if exc.status == OUT_OF_FLOWS:
                flows *= 2
            classes *= 2


def _play(
    loop: _Loop,
    ev: Evaluation,
    cluster: ClusterSpec,
    layers: list[int],
    phases: dict[int, tuple[PhasePlan, PhasePlan]],
    attention_us: float,
    shared_expert_us: float,
    progress: bool,
) -> CompiledRun:
    G = cluster.num_gpus
    shapes = _Shapes(loop)
    rows: list[dict[str, Any]] = []
    spans: list[tuple[str, str, int, float, float]] = []
    now = 0.0
    bar = tqdm(
        layers, desc="simulate", unit="layer", disable=None if progress else True, leave=False
    )
    for layer in bar:
        t0 = now
        dispatch, combine = phases[layer]
        expert_us = ev.compute_us[layer] + shared_expert_us
        ready = np.full(G, t0 + attention_us) if attention_us > 0 else np.full(G, t0)
        first_flow = int(loop.ei[N_FLOWS])
        d_out, c_out, phase_of = loop.play_pair(
            dispatch, combine, ready, mode=CHAIN_PER_GPU, delay_us=expert_us
        )
        now = float(c_out.end_us.max())
        ids = first_flow + np.arange(phase_of.size)
        shape_d = shapes.shape(d_out, ids[phase_of == 0])
        shape_c = shapes.shape(c_out, ids[phase_of == 1])
        tag = f"L{layer}"
        for g in range(G):
            if attention_us > 0:
                spans.append((f"attention {tag}", "compute", g, t0, t0 + attention_us))
            spans.append(_comm_span(f"dispatch {tag}", d_out, g))
            if expert_us[g] > 0:
                d_end = float(d_out.end_us[g])
                spans.append((f"experts {tag}", "compute", g, d_end, d_end + float(expert_us[g])))
            spans.append(_comm_span(f"combine {tag}", c_out, g))
        moved = d_out.link_bytes + c_out.link_bytes
        busy_us = attention_us + expert_us
        compute_max = float(expert_us.max())
        terms = layer_terms(
            now - t0,
            [shape_d, shape_c],
            ev=ev,
            layer=layer,
            cluster=cluster,
            compute_us=compute_max,
            attention_us=float(attention_us),
        )
        rows.append(
            {
                "layer": layer,
                "dispatch_us": _collective_us(d_out),
                "compute_us": compute_max,
                "combine_us": _collective_us(c_out),
                "layer_us": now - t0,
                "exposed_comm_us": float(max(now - t0 - busy_us.max(), 0.0)),
                "attention_us": float(attention_us),
                "comm_lower_bound_us": float((moved / loop.caps).max()) if moved.any() else 0.0,
                "flows": d_out.flows + c_out.flows,
                **terms,
            }
        )
    bar.close()
    st = loop.stats()
    stats = {
        "events": st.events,
        "recomputes": st.recomputes,
        "flows": st.flows,
        "worst_link_utilisation": st.worst_utilisation,
    }
    return CompiledRun(rows, spans, loop.eng[4].copy(), loop.caps.copy(), now, stats)


def _comm_span(name: str, out: PhaseOutcome, g: int) -> tuple[str, str, int, float, float]:
    """A phase on GPU ``g``'s timeline (``_Runner._phase_span``): its first send to its last receipt."""
    start = out.start_us[g] if np.isfinite(out.start_us[g]) else out.end_us[g]
    return (name, "comm", g, float(min(start, out.end_us[g])), float(out.end_us[g]))
