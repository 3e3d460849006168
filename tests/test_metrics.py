"""Evaluator against hand-computed small cases: deduplication, inter-node bytes, coherent hops, replicas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.metrics import ReplicaRouter, dedup_copies, evaluate, replica_split
from moe_placement.plan import Plan, Provenance
from moe_placement.shapes import ModelShape
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TokenChunk, TraceFile
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter
from moe_placement.workload import Workload, home_gpus

# 2 nodes x 2 GPUs; with one slot per GPU, expert e lives on GPU e.
CLUSTER = load_cluster("h100-multirail").with_counts(4, 2)


def identity_plan(layers: int = 1) -> Plan:
    return Plan(4, 2, 1, np.tile(np.arange(4), (layers, 1)), provenance=Provenance("test"))


def test_dedup_one_copy_per_gpu_and_per_node() -> None:
    # Token at GPU 0 choosing experts on GPUs 1 (same node), 2 and 3 (other node).
    copies = dedup_copies(np.array([0]), np.array([[1, 2, 3]]), 4, 2)
    expected_nvlink = np.zeros((4, 4))
    expected_nvlink[0, 1] = 1  # intra-node
    expected_nvlink[2, 3] = 1  # fan-out from the forwarder (GPU 2 = node 1, local index 0)
    expected_nic = np.zeros((4, 4))
    expected_nic[0, 2] = 1  # ONE NIC copy for the two GPUs of node 1
    np.testing.assert_array_equal(copies.nvlink, expected_nvlink)
    np.testing.assert_array_equal(copies.nic, expected_nic)
    assert copies.local == 0


def test_dedup_same_gpu_twice_counts_once() -> None:
    # Two experts on the same destination GPU: one copy; the token's own GPU costs nothing.
    copies = dedup_copies(np.array([1, 1]), np.array([[3, 3], [1, 0]]), 4, 2)
    assert (
        copies.nic[1, 3] == 1 and copies.nic.sum() == 1
    )  # forwarder of node 1 for local index 1 is GPU 3
    assert copies.nvlink[1, 0] == 1 and copies.nvlink.sum() == 1
    assert copies.local == 1


def _workload(tmp_path: Path, ids: np.ndarray, hidden: int = 10) -> Workload:
    layers, n, k = ids.shape
    meta = TraceMeta(
        "hand", layers, 4, k, hidden, 8, dispatch_bytes_per_elem=1.0, combine_bytes_per_elem=2.0
    )
    with TraceWriter(tmp_path / "h.parquet", meta) as w:
        weights = np.tile(np.linspace(1, 0.5, k), (layers, n, 1))
        w.write(np.zeros(n), np.zeros(n), np.arange(n), ids, weights)
    return derive_workload(TraceFile(tmp_path / "h.parquet"), num_gpus=4)


def test_evaluate_bytes_standard(tmp_path: Path) -> None:
    # seq 0, pos p -> home GPU p (token policy: 7919*seq + pos mod 4).
    ids = np.array([[[1, 2, 3], [0, 1, 2]]])
    wl = _workload(tmp_path, ids, hidden=10)
    assert home_gpus(np.zeros(2), np.arange(2), 4).tolist() == [0, 1]
    ev = evaluate(identity_plan(), CLUSTER, wl, tokens_per_gpu=None)
    # token 0 at GPU 0 -> {1, 2, 3}: NVLink 0->1, NIC 0->2, NVLink 2->3
    # token 1 at GPU 1 -> {0, 1, 2}: NVLink 1->0, NIC 1->3 (forwarder of node 1 for local index 1), NVLink 3->2
    d = ev.dispatch[0]
    assert (
        d.nvlink[0, 1] == 1 and d.nvlink[2, 3] == 1 and d.nvlink[1, 0] == 1 and d.nvlink[3, 2] == 1
    )
    assert d.nic[0, 2] == 1 and d.nic[1, 3] == 1 and d.nic.sum() == 2 and d.nvlink.sum() == 4
    intra, inter = ev.phase_bytes("dispatch")
    assert intra[0] == 4 * 10 * 1.0 and inter[0] == 2 * 10 * 1.0
    c_intra, c_inter = ev.phase_bytes("combine")
    assert c_intra[0] == 4 * 10 * 2.0 and c_inter[0] == 2 * 10 * 2.0
    np.testing.assert_array_equal(ev.combine[0].nic, d.nic.T)
    assert ev.gpu_load[0].tolist() == [1, 2, 2, 1]
    assert ev.max_over_mean()[0] == pytest.approx(2 / 1.5)


def test_evaluate_coherent_hops(tmp_path: Path) -> None:
    # one token (home GPU 0); layer 0 top-1 expert 2 (node 1), layer 1 top-1 expert 3 (node 1), top-1 only
    ids = np.array([[[2]], [[3]]])
    wl = _workload(tmp_path, ids)
    ev = evaluate(identity_plan(2), CLUSTER, wl, mode="coherent", tokens_per_gpu=None)
    assert ev.hops.tolist() == [1, 1]
    assert ev.node_hops.tolist() == [1, 0]
    # layer 0: dispatch 0 -> 2 over the NIC; combine none (the expert's GPU is where the token stays)
    assert (
        ev.dispatch[0].nic[0, 2] == 1
        and ev.combine[0].nic.sum() == 0
        and ev.combine[0].nvlink.sum() == 0
    )
    # layer 1: the token is now on GPU 2; expert 3 is one NVLink hop
    assert ev.dispatch[1].nvlink[2, 3] == 1 and ev.dispatch[1].nic.sum() == 0
    std = evaluate(identity_plan(2), CLUSTER, wl, mode="standard", tokens_per_gpu=None)
    assert std.phase_bytes("combine")[1].sum() > 0  # standard mode always returns home


def test_replicas_prefer_nearest_then_capacity() -> None:
    # 4 GPUs x 2 slots, expert 0 replicated on GPU 0 and GPU 2 (one per node)
    phy2log = np.array([[0, 1, 2, 3, 0, 1, 2, 3]])
    plan = Plan(4, 2, 2, phy2log)
    router = ReplicaRouter(plan, np.ones((1, 4, 4)))
    src = np.arange(4)
    gpus = router.slots(0, src, np.zeros((4, 1), dtype=np.int64), np.zeros(4), np.arange(4)) // 2
    assert gpus[:, 0].tolist() == [0, 0, 2, 2]  # homes 0,1 use node 0's replica; homes 2,3 node 1's


def test_replica_split_follows_uneven_shares() -> None:
    # replicas on GPUs 0 and 1 of one node, planned 80/20; every home has the same demand
    split = replica_split(np.array([0, 1]), np.array([80.0, 20.0]), np.full(4, 25.0), 2)
    np.testing.assert_allclose(split.sum(axis=1), 1.0)
    np.testing.assert_allclose((split * 25.0).sum(axis=0), [80.0, 20.0])
    assert split[0, 0] == 1.0 and split[1, 1] == pytest.approx(
        0.8
    )  # home 1 first uses its own replica


def test_realised_loads_follow_shares(tmp_path: Path) -> None:
    # one expert chosen by 4000 tokens, replicated on 2 GPUs with shares 0.7 / 0.3
    n = 4000
    meta = TraceMeta("r", 1, 4, 1, 8, 8)
    with TraceWriter(tmp_path / "r.parquet", meta) as w:
        w.write(
            np.zeros(n),
            np.arange(n),
            np.zeros(n),
            np.zeros((1, n, 1), dtype=np.int64),
            np.ones((1, n, 1)),
        )
    wl = derive_workload(TraceFile(tmp_path / "r.parquet"), num_gpus=4, home_policy="sequence")
    phy2log = np.array([[0, 1, 2, 3, 0, 1, 2, 3]])
    share = np.array([[0.7, 1.0, 1.0, 1.0, 0.3, 0.0, 0.0, 0.0]])
    share[0, 1], share[0, 5] = 0.5, 0.5
    share[0, 2], share[0, 6] = 0.5, 0.5
    share[0, 3], share[0, 7] = 0.5, 0.5
    plan = Plan(4, 2, 2, phy2log, replica_share=share).validate()
    ev = evaluate(plan, CLUSTER, wl, tokens_per_gpu=None)
    # slot 0 on GPU 0, slot 4 on GPU 2
    assert ev.gpu_load[0, 0] == pytest.approx(2800, rel=0.05)
    assert ev.gpu_load[0, 2] == pytest.approx(1200, rel=0.1)


def test_load_only_uses_planned_shares() -> None:
    shape = ModelShape("m", 1, 4, 2, 8, 8)
    wl = Workload(
        shape=shape, load=np.array([[300.0, 100.0, 100.0, 100.0]]), num_tokens=300, source="mem"
    )
    phy2log = np.array([[0, 1, 2, 3, 0, 2, 1, 3]])
    share = np.array([[0.25, 0.5, 1.0, 0.5, 0.75, 0.0, 0.5, 0.5]])
    share[0, 5] = 0.0
    share[0, 2] = 1.0
    plan = Plan(4, 2, 2, phy2log, replica_share=share).validate()
    ev = evaluate(plan, CLUSTER, wl, tokens_per_gpu=None)
    # GPU loads: g0: 0@.25 + 1@.5 = 75+50; g1: 2@1 + 3@.5 = 100+50; g2: 0@.75 + 2@0 = 225; g3: 1@.5 + 3@.5 = 100
    np.testing.assert_allclose(ev.gpu_load[0], [125, 150, 225, 100])
    assert "estimate" in ev.bytes_model
    with pytest.raises(PlacementError, match="per-token"):
        evaluate(plan, CLUSTER, wl, mode="coherent")


def test_evaluate_rejects_mismatched_cluster(tiny_trace: Path) -> None:
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=4)
    plan = Plan(4, 2, 4, np.tile(np.arange(16), (4, 1)))
    with pytest.raises(PlacementError, match="cluster has"):
        evaluate(plan, CLUSTER.with_counts(8, 4), wl)


def test_times_grow_with_slower_nic(tmp_path: Path) -> None:
    ids = np.array([[[1, 2, 3], [0, 1, 2]]])
    wl = _workload(tmp_path, ids, hidden=4096)
    fast = evaluate(identity_plan(), CLUSTER, wl, tokens_per_gpu=4096)
    slow_cluster = dataclasses.replace(CLUSTER, nic_gbits_per_s=100.0)
    slow = evaluate(identity_plan(), slow_cluster, wl, tokens_per_gpu=4096)
    assert slow.dispatch_us[0] > fast.dispatch_us[0]
    assert slow.summary()["inter_node_bytes"] == fast.summary()["inter_node_bytes"]


def test_streamed_chunks_equal_whole(tiny_trace: Path) -> None:
    """Evaluating chunk by chunk equals evaluating the trace as one chunk."""
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=8)
    cluster = load_cluster("h100-multirail").with_counts(8, 4)
    plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)))
    whole = TraceFile(tiny_trace).read_all()
    a = evaluate(plan, cluster, wl)
    b = evaluate(plan, cluster, wl, chunks=[whole])
    assert a.summary() == b.summary()
    assert isinstance(whole, TokenChunk)


def test_one_definition_of_load_and_time(tiny_trace: Path) -> None:
    """``max_load`` and the per-layer times in the JSON rows and the summary are those of
    :meth:`Evaluation.max_load` and :meth:`Evaluation.step_time`, the figures every consumer uses."""
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=8)
    cluster = load_cluster("h100-multirail").with_counts(8, 4)
    plan = Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)))
    ev = evaluate(plan, cluster, wl)
    rows, step = ev.per_layer(), ev.step_time()
    assert step.source == "evaluator" and len(step.layers) == plan.num_layers
    np.testing.assert_array_equal([r["max_load"] for r in rows], ev.max_load())
    np.testing.assert_array_equal(ev.max_load(), ev.gpu_load.max(axis=1))
    np.testing.assert_array_equal(ev.max_over_mean(), ev.max_load() / ev.mean_load())
    for row, t in zip(rows, step.layers, strict=True):
        assert (row["dispatch_us"], row["compute_us"], row["combine_us"], row["layer_us"]) == (
            t.dispatch_us,
            t.compute_us,
            t.combine_us,
            t.layer_us,
        )
        assert t.layer_us == pytest.approx(t.dispatch_us + t.compute_us + t.combine_us)
    summary = ev.summary()
    assert summary["moe_time_us"] == step.moe_time_us
    assert summary["compute_us"] == pytest.approx(ev.compute_us.max(axis=1).sum())
