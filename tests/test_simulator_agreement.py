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
from moe_placement.simulator.decompose import TERM_KEYS
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


BUNDLED = Path(__file__).resolve().parents[1] / "traces" / "data" / "tiny_moe_trace.parquet"


@pytest.fixture(scope="module")
def bundled() -> tuple[Plan, ClusterSpec, Workload]:
    """The bundled trace (4 layers x 16 experts, top-2) on 8 GPUs in 2 nodes, two experts per GPU."""
    cluster = load_cluster("h100-multirail").with_counts(8, 4)
    workload = derive_workload(TraceFile(BUNDLED), num_gpus=8)
    plan = Plan(8, 4, 2, np.arange(16)[None, :].repeat(4, axis=0), provenance=Provenance("test"))
    return plan, cluster, workload


@pytest.mark.parametrize(
    ("algo", "overlap"), [("deepep", "none"), ("direct", "none"), ("deepep", "two-batch")]
)
def test_named_terms_explain_the_gap_on_the_bundled_trace(
    bundled: tuple[Plan, ClusterSpec, Workload], algo: str, overlap: str
) -> None:
    """Every layer: the named terms sum to the simulator's layer time; the ones that are >= 0 by
    construction are; overlap is <= 0 when nothing overlaps by design; the evaluator term is the
    evaluator's own layer time."""
    plan, cluster, workload = bundled
    want = evaluate(plan, cluster, workload).step_time()
    res = simulate_moe(plan, cluster, workload, algo=algo, overlap=overlap, progress=False)
    tol = 1e-9
    for row, ev_layer in zip(res.per_layer, want.layers, strict=True):
        total = sum(row[key] for key in TERM_KEYS) + row["attention_us"]
        assert total == pytest.approx(row["layer_us"], rel=tol)
        assert row["evaluator_us"] == pytest.approx(ev_layer.layer_us, rel=tol)
        for key in ("pipeline_us", "congestion_us", "compute_model_us"):
            assert row[key] >= -tol * row["layer_us"], key
        if overlap == "none":
            assert row["overlap_us"] <= tol * row["layer_us"]
            assert row["compute_model_us"] == pytest.approx(0.0, abs=tol)
        if algo == "deepep":
            # the simulator moves exactly the evaluator's DeepEP copies: same busiest-link bounds
            assert row["routing_us"] == pytest.approx(0.0, abs=1e-6 * row["layer_us"])
        else:
            # a direct all-to-all does not deduplicate per node: more bytes on the busiest link
            assert row["routing_us"] > 0
    if (algo, overlap) == ("deepep", "none"):
        # the simulator sits above the evaluator on this trace, and the largest term is the relay:
        # DeepEP's NVLink hop after the NIC (its chunks and latency), partly hidden by GPUs that move
        # on early (overlap)
        for r in res.per_layer:
            assert r["layer_us"] > r["evaluator_us"]
            assert r["pipeline_us"] == max(r[key] for key in TERM_KEYS[1:])


def test_simulate_table_names_the_evaluator_time_and_the_largest_added_term(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The human table of ``placement simulate`` shows the evaluator's layer time beside the
    simulator's, and the named term that adds most; with overlap it says why phases exceed the layer."""
    from moe_placement.cli import main

    trace = Path(__file__).resolve().parents[1] / "traces" / "data" / "tiny_moe_trace.parquet"
    plan = tmp_path / "plan.json"
    base = ["--trace", str(trace), "--gpus", "8", "--gpus-per-node", "4"]
    assert main(["solve", *base, "--solver", "greedy", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["simulate", *base, "--plan", str(plan), "--overlap", "two-batch"]) == 0
    out = capsys.readouterr().out
    assert "evaluator us" in out and "largest added us" in out
    assert "add up to more than the layer time" in out
    cluster = load_cluster(None).with_counts(8, 4)
    ev = evaluate(Plan.load(plan), cluster, derive_workload(TraceFile(trace), num_gpus=8))
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    printed = np.array([float(r[7]) for r in rows])
    assert np.allclose(printed, ev.layer_us(), rtol=1e-3)
