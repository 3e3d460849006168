"""The simulator against the evaluator: equal when nothing is congested, and a named term for every gap.

Uncongested case: every home GPU sends all its tokens to one partner GPU (across nodes on its own rail,
or across NVLink in one node) and gets them back, so each phase's busiest link carries one flow alone and
the GPU with the most tokens is the busiest in dispatch, compute and combine alike: the evaluator's
busiest-link model is exact and the simulator must reproduce it to floating-point precision (DeepEP
included: its forwarders here are the destinations, so the test also checks that a forwarder waits for
its own copies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_placement.cluster import ClusterSpec, load_cluster
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan, Provenance
from moe_placement.simulator import simulate_moe
from moe_placement.timing import TIME_KEYS
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter
from moe_placement.workload import Workload, home_gpus

EXPERTS = 4


def _partner_workload(tmp_path: Path, cluster: ClusterSpec, tokens_per_home: list[int]) -> Workload:
    """One layer; the tokens homed on GPU h (token policy: position h mod G) all choose the first expert
    of GPU ``partner(h)``: the same local index on the next node, or the next GPU of a one-node cluster."""
    G, gpn = cluster.num_gpus, cluster.gpus_per_node
    per_gpu = EXPERTS // G
    partner = [(h + gpn) % G if cluster.num_nodes > 1 else (h + 1) % G for h in range(G)]
    pos = np.concatenate([h + G * np.arange(n) for h, n in enumerate(tokens_per_home)])
    assert (home_gpus(np.zeros(pos.size), pos, G) == pos % G).all()
    ids = np.array([[[partner[p % G] * per_gpu] for p in pos]])
    meta = TraceMeta("pairs", 1, EXPERTS, 1, 7168, 2048, dispatch_bytes_per_elem=1.0)
    path = tmp_path / f"pairs-{G}.parquet"
    with TraceWriter(path, meta) as w:
        w.write(np.zeros(pos.size), np.zeros(pos.size), pos, ids, np.ones(ids.shape))
    return derive_workload(TraceFile(path), num_gpus=G)


@pytest.mark.parametrize(
    ("gpus", "per_node", "tokens_per_home"),
    [(4, 2, [300, 200, 0, 0]), (2, 2, [300, 0])],
    ids=["two nodes, rail-local NIC", "one node, NVLink"],
)
@pytest.mark.parametrize("algo", ["direct", "deepep"])
def test_simulator_equals_evaluator_without_congestion(
    tmp_path: Path, gpus: int, per_node: int, tokens_per_home: list[int], algo: str
) -> None:
    """Only the first node's GPUs have tokens (one-way traffic with unequal loads): no GPU's combine
    meets another GPU's dispatch on a link, so nothing is congested."""
    cluster = load_cluster("h100-multirail").with_counts(gpus, per_node)
    workload = _partner_workload(tmp_path, cluster, tokens_per_home)
    slots = EXPERTS // gpus
    plan = Plan(
        gpus,
        per_node,
        slots,
        np.arange(EXPERTS)[None, :],
        provenance=Provenance("test"),
    )
    want = evaluate(plan, cluster, workload).step_time()
    got = simulate_moe(plan, cluster, workload, algo=algo, progress=False).step_time()
    assert want.layers[0].dispatch_us > 0 and want.layers[0].combine_us > 0
    for key in TIME_KEYS:
        assert got.column(key) == pytest.approx(want.column(key), rel=1e-9, abs=1e-9), key
