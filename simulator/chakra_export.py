"""Export a plan's MoE traffic as Chakra execution traces (``{prefix}.{rank}.et``) for ASTRA-sim.

Chakra's ALL_TO_ALL node has a single size, so the uneven dispatch and combine of MoE are written as
per-peer ``COMM_SEND_NODE`` / ``COMM_RECV_NODE`` pairs (the issue's requirement). Per rank and layer:
dispatch sends and receives, then a ``COMP_NODE`` for the experts (``duration_micros`` from the evaluator's
roofline), then combine sends (after the experts) and receives; the next layer starts after the combine
has landed. Relayed algorithms (``deepep``, ``2dh``) write both hops: a relay's second-hop sends depend on
its first-hop receives.

Needs the optional ``mlc-chakra`` package (``pip install --no-deps mlc-chakra`` plus ``protobuf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.atomic import atomic_open
from moe_placement.cluster import ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.metrics import DEFAULT_TOKENS_PER_GPU, evaluate
from moe_placement.plan import Plan
from moe_placement.simulator.collectives import PhasePlan
from moe_placement.simulator.moe import _layer_phases
from moe_placement.workload import Workload

CHAKRA_VERSION = "0.0.4"


def _chakra() -> tuple[Any, Any]:
    try:
        import chakra.schema.protobuf.et_def_pb2 as et
        from chakra.src.third_party.utils.protolib import encodeMessage
    except ImportError:
        raise PlacementError(
            "Chakra export needs the mlc-chakra package: pip install --no-deps mlc-chakra protobuf"
        ) from None
    return et, encodeMessage


class _RankTrace:
    """Nodes of one rank, with ids unique per rank."""

    def __init__(self, et: Any, rank: int) -> None:
        self.et = et
        self.rank = rank
        self.nodes: list[Any] = []

    def add(
        self,
        name: str,
        kind: int,
        deps: list[int],
        attrs: dict[str, tuple[str, Any]],
        duration_us: float = 0.0,
    ) -> int:
        node = self.et.Node()
        node.id = len(self.nodes)
        node.name = name
        node.type = kind
        node.data_deps.extend(deps)
        if duration_us:
            node.duration_micros = round(duration_us)
        node.attr.append(self.et.AttributeProto(name="is_cpu_op", bool_val=False))
        for key, (field, value) in attrs.items():
            node.attr.append(self.et.AttributeProto(name=key, **{field: value}))
        self.nodes.append(node)
        return int(node.id)


def _comm(
    trace: _RankTrace,
    phase: str,
    kind: int,
    src: int,
    dst: int,
    bytes_: float,
    tag: int,
    deps: list[int],
) -> int:
    attrs = {
        "comm_src": ("int32_val", src),
        "comm_dst": ("int32_val", dst),
        "comm_size": ("int64_val", round(bytes_)),
        "comm_tag": ("int32_val", tag),
    }
    verb = "send" if kind == trace.et.COMM_SEND_NODE else "recv"
    return trace.add(f"{phase} {verb} {src}->{dst}", kind, deps, attrs)


def _phase(
    traces: list[_RankTrace], plan: PhasePlan, start: list[list[int]], tag: int
) -> list[list[int]]:
    """Write one phase; ``start[g]``: node ids rank g's sends depend on. Returns each rank's receive ids."""
    et = traces[0].et
    G = len(traces)
    recvs: list[list[int]] = [[] for _ in range(G)]
    hops: list[tuple[np.ndarray, int]] = [(plan.direct, 0)]
    if plan.stage1 is not None and plan.stage2 is not None:
        hops += [(plan.stage1, 1), (plan.stage2, 2)]
    stage1_recvs: list[list[int]] = [[] for _ in range(G)]
    for matrix, hop in hops:
        for s, d in zip(*np.nonzero(matrix), strict=True):
            s, d = int(s), int(d)
            if s == d:
                continue
            deps = start[s] if hop != 2 else start[s] + stage1_recvs[s]
            _comm(
                traces[s], plan.name, et.COMM_SEND_NODE, s, d, float(matrix[s, d]), tag + hop, deps
            )
            rid = _comm(
                traces[d],
                plan.name,
                et.COMM_RECV_NODE,
                s,
                d,
                float(matrix[s, d]),
                tag + hop,
                start[d],
            )
            if hop == 1:
                stage1_recvs[d].append(rid)
            else:
                recvs[d].append(rid)
    return [recvs[g] + stage1_recvs[g] for g in range(G)]


def export_chakra(
    plan: Plan,
    cluster: ClusterSpec,
    workload: Workload,
    prefix: str | Path,
    *,
    algo: str = "direct",
    mode: str = "standard",
    tokens_per_gpu: int = DEFAULT_TOKENS_PER_GPU,
    layers: list[int] | None = None,
) -> list[Path]:
    """Write ``{prefix}.{rank}.et`` for every rank; returns the paths."""
    et, encode = _chakra()
    ev = evaluate(plan, cluster, workload, mode=mode, tokens_per_gpu=tokens_per_gpu, gpu_pairs=True)
    chosen = list(range(ev.num_layers)) if layers is None else list(layers)
    G = cluster.num_gpus
    traces = [_RankTrace(et, g) for g in range(G)]
    last: list[list[int]] = [[] for _ in range(G)]
    for i, layer in enumerate(chosen):
        dispatch, combine = _layer_phases(ev, layer, algo, ev.scale)
        landed = _phase(traces, dispatch, last, tag=1000 * i)
        comp = [
            [
                traces[g].add(
                    f"L{layer} experts",
                    et.COMP_NODE,
                    landed[g] + last[g],
                    {"num_ops": ("int64_val", 0)},
                    duration_us=float(ev.compute_us[layer, g]),
                )
            ]
            for g in range(G)
        ]
        last = _phase(traces, combine, comp, tag=1000 * i + 500)
        last = [ids if ids else comp[g] for g, ids in enumerate(last)]
    paths = []
    for g, trace in enumerate(traces):
        path = Path(f"{prefix}.{g}.et")
        with atomic_open(path, "wb") as handle:
            encode(handle, et.GlobalMetadata(version=CHAKRA_VERSION))
            for node in trace.nodes:
                encode(handle, node)
        paths.append(path)
    return paths
