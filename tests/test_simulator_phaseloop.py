"""The compiled event loop (simulator/phaseloop.py) against the SimPy path it replaces for whole phases.

Both play the same model; the loop must give the same completion times per GPU, the same flows and
bytes per link, and - at the SimPy path's regrouping cadence - the very same events. Checked on every
algorithm, on uneven random plans (relays pipelined and store-and-forward, GPU-local copies, staggered
starts), on ECMP and without PXN, and when the loop runs out of room and plays again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.cluster import preset
from moe_placement.simulator import phaseloop, simulate_uniform
from moe_placement.simulator.collectives import ALGOS, PhasePlan
from moe_placement.simulator.moe import _Runner, _topology_for
from moe_placement.simulator.phaseloop import OUT_OF_CLASSES, OUT_OF_FLOWS

SCALARS = ("dispatch_us", "combine_us")


def _cluster(name: str, gpus: int) -> Any:
    return preset(name).with_counts(gpus, 8)


def _uniform(algo: str, event_loop: str, **kw: Any) -> dict[str, Any]:
    cluster = kw.pop("cluster")
    limit = None if algo.startswith("deepep-ll") else 2
    return simulate_uniform(
        cluster, tokens=128, algo=algo, node_limit=limit, event_loop=event_loop, **kw
    )


@pytest.fixture(scope="module")
def mpft32() -> Any:
    return _cluster("h800-mpft", 32)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_matches_the_simpy_path(algo: str, mpft32: Any) -> None:
    fast = _uniform(algo, "compiled", cluster=mpft32)
    ref = _uniform(algo, "simpy", cluster=mpft32)
    for key in SCALARS:
        assert fast[key] == pytest.approx(ref[key], rel=1e-9), key
    assert fast["flows"] == ref["flows"]
    # batching of finishes within the float tolerance may split or merge one event
    assert abs(fast["events"] - ref["events"]) <= max(2, ref["events"] // 1000)
    for key in ("nvlink_bytes_sent", "nic_bytes_sent"):
        np.testing.assert_allclose(fast[key], ref[key], rtol=1e-9, atol=1e-6)
    for phase in ("dispatch", "combine"):
        assert fast[phase]["lower_bound_us"] == pytest.approx(
            ref[phase]["lower_bound_us"], rel=1e-9
        )
    assert fast["worst_link_utilisation"] <= 1.0 + 1e-9


def test_at_the_simpy_cadence_the_events_are_the_same(
    mpft32: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phaseloop, "REGROUP_CADENCE", [64, 32])
    fast = _uniform("deepep", "compiled", cluster=mpft32)
    ref = _uniform("deepep", "simpy", cluster=mpft32)
    for key in (*SCALARS, "events", "recomputes", "flows", "worst_link_utilisation"):
        assert fast[key] == ref[key], key


@pytest.mark.parametrize(("routing", "pxn"), [("ecmp", True), ("spray", False), ("ecmp", False)])
def test_ecmp_and_no_pxn_match(routing: str, pxn: bool) -> None:
    cluster = _cluster("h100-multirail", 16)
    fast = _uniform("direct", "compiled", cluster=cluster, routing=routing, pxn=pxn)
    ref = _uniform("direct", "simpy", cluster=cluster, routing=routing, pxn=pxn)
    for key in SCALARS:
        assert fast[key] == pytest.approx(ref[key], rel=1e-9)


def _simpy_phases(
    cluster: Any, algo: str, plans: Sequence[PhasePlan], ready: np.ndarray, chunks: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The SimPy path on ``plans`` one after the other, GPUs of the first starting at ``ready``."""
    runner = _Runner.for_algo(cluster, algo, routing="spray", pxn=True, seed=0, chunks=chunks)
    env, G = runner.env, cluster.num_gpus
    out: list[tuple[np.ndarray, np.ndarray]] = []

    def main() -> Any:
        starts = [env.timeout(float(t)) for t in ready]
        for plan in plans:
            run = runner.phase(plan, starts, plan.name)
            yield env.all_of(run.done)
            out.append((run.start_us.copy(), run.end_us.copy()))
            go = env.event()
            go.succeed()
            starts = [go] * G

    env.process(main())
    env.run()
    return out


def _random_plan(rng: np.random.Generator, G: int, gpn: int, name: str, relay: str) -> PhasePlan:
    """Uneven bytes: direct pairs, and a relay through the GPU of the destination node on the source's
    rail, with some GPU-local (relay = destination) copies and some empty rows."""
    sparse = rng.random((G, G)) < 0.6
    direct = np.where(sparse, rng.uniform(1e4, 2e6, (G, G)), 0.0)
    np.fill_diagonal(direct, 0.0)
    stage1 = np.zeros((G, G))
    stage2 = np.zeros((G, G))
    for s in range(G):
        for node in range(G // gpn):
            if node == s // gpn or rng.random() < 0.3:
                continue
            relay_gpu = node * gpn + s % gpn
            stage1[s, relay_gpu] += rng.uniform(1e5, 1e6)
    for r in range(G):
        if stage1[:, r].sum() > 0:
            for d in range((r // gpn) * gpn, (r // gpn + 1) * gpn):
                stage2[r, d] = rng.uniform(1e4, 5e5)  # d == r: a copy that stays on the GPU
    own = rng.uniform(0, 1e5, G) * (stage1.sum(axis=0) > 0)
    return PhasePlan(name, direct, stage1, stage2, relay=relay, own=own, overhead_us=0.5)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    relay=st.sampled_from(["pipelined", "store-and-forward"]),
    chunks=st.integers(1, 4),
    staggered=st.booleans(),
)
def test_random_plans_match_the_simpy_path(
    seed: int, relay: str, chunks: int, staggered: bool
) -> None:
    cluster = _cluster("h800-mpft", 16)
    G, gpn = cluster.num_gpus, cluster.gpus_per_node
    rng = np.random.default_rng(seed)
    plans = [
        _random_plan(rng, G, gpn, "dispatch", relay),
        _random_plan(rng, G, gpn, "combine", relay),
    ]
    ready = rng.uniform(0, 50, G) if staggered else np.zeros(G)
    topo = _topology_for(cluster, "deepep", routing="spray", pxn=True, seed=0)
    outcomes, stats = phaseloop.play_phases(topo, plans, chunks=chunks, ready_us=ready)
    ref = _simpy_phases(cluster, "deepep", plans, ready, chunks)
    for got, (start_us, end_us) in zip(outcomes, ref, strict=True):
        np.testing.assert_allclose(got.start_us, start_us, rtol=1e-12)
        np.testing.assert_allclose(got.end_us, end_us, rtol=1e-9)
    assert stats.worst_utilisation <= 1.0 + 1e-9


def test_out_of_room_plays_again_with_the_same_result() -> None:
    cluster = _cluster("h800-mpft", 16)
    rng = np.random.default_rng(3)
    plans = [_random_plan(rng, 16, 8, name, "pipelined") for name in ("dispatch", "combine")]
    topo = _topology_for(cluster, "deepep", routing="spray", pxn=True, seed=0)
    full, _ = phaseloop.play_phases(topo, plans, chunks=2)
    for flows, classes, status in ((8, 10_000, OUT_OF_FLOWS), (10_000, 4, OUT_OF_CLASSES)):
        loop = phaseloop._Loop(topo, plans, 2, flows, classes, progress=False)
        with pytest.raises(phaseloop.OutOfRoomError) as err:
            loop.play_pair(plans[0], plans[1], np.zeros(16), mode=phaseloop.CHAIN_BARRIER)
        assert err.value.status == status
    loop = phaseloop._Loop(topo, plans, 2, 10_000, 10_000, progress=False)
    _, second, _ = loop.play_pair(plans[0], plans[1], np.zeros(16), mode=phaseloop.CHAIN_BARRIER)
    np.testing.assert_allclose(second.end_us, full[1].end_us, rtol=1e-12)


def test_a_phase_played_in_slices_is_the_same(mpft32: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _uniform("deepep", "compiled", cluster=mpft32)
    monkeypatch.setattr(phaseloop, "EVENTS_PER_CALL", 7)  # return to Python every 7 events
    sliced = _uniform("deepep", "compiled", cluster=mpft32)
    for key in (*SCALARS, "events", "recomputes", "flows"):
        assert sliced[key] == whole[key], key


def _layers_workload(layers: int, gpus: int) -> tuple[Any, Any, Any]:
    """A DeepSeek-V3-shaped load-only workload (log-normal loads) on a round-robin plan."""
    from moe_placement.plan import Plan, Provenance
    from moe_placement.shapes import model_shape
    from moe_placement.workload import Workload

    shape = model_shape("deepseek-v3")
    load = np.random.default_rng(0).lognormal(0.0, 0.6, (layers, shape.num_experts)) * 1000.0
    tokens = int(load.sum(axis=1).mean() / shape.top_k)
    workload = Workload(
        shape=shape.replace(num_moe_layers=layers), load=load, num_tokens=tokens, source="test"
    )
    phy2log = np.tile(np.arange(shape.num_experts), (layers, 1))
    plan = Plan(gpus, 8, shape.num_experts // gpus, phy2log, provenance=Provenance("round-robin"))
    return plan, _cluster("h800-mpft", gpus), workload


@pytest.mark.parametrize("algo", ["deepep", "direct", "deepep-ll", "2dh", "hybrid-ep"])
def test_layers_without_overlap_match_the_simpy_path(algo: str) -> None:
    from moe_placement.simulator import simulate_moe

    plan, cluster, workload = _layers_workload(2, 16)
    kw: dict[str, Any] = {"algo": algo, "progress": False, "attention_us": 12.0}
    kw["shared_expert_us"] = 4.0
    fast = simulate_moe(plan, cluster, workload, event_loop="compiled", **kw)
    ref = simulate_moe(plan, cluster, workload, event_loop="simpy", **kw)
    assert fast.total_us == pytest.approx(ref.total_us, rel=1e-12)
    for got, want in zip(fast.per_layer, ref.per_layer, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():  # times, flows and every named difference term
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert fast.link_names == ref.link_names
    np.testing.assert_allclose(fast.link_bytes, ref.link_bytes, rtol=1e-9)
    spans = sorted((s.name, s.cat, s.gpu, s.start_us, s.end_us) for s in fast.spans)
    ref_spans = sorted((s.name, s.cat, s.gpu, s.start_us, s.end_us) for s in ref.spans)
    assert [s[:3] for s in spans] == [s[:3] for s in ref_spans]
    np.testing.assert_allclose([s[3:] for s in spans], [s[3:] for s in ref_spans], rtol=1e-12)
    assert fast.stats["flows"] == ref.stats["flows"]
    assert abs(fast.stats["events"] - ref.stats["events"]) <= 2


def test_overlap_is_refused_by_the_compiled_loop() -> None:
    from moe_placement.errors import PlacementError
    from moe_placement.simulator import simulate_moe

    plan, cluster, workload = _layers_workload(1, 16)
    with pytest.raises(PlacementError, match="without overlap"):
        simulate_moe(plan, cluster, workload, overlap="two-batch", event_loop="compiled")


def _sort_ints() -> Any:
    """kernels.sort_ints callable from Python: it has no CPython wrapper, so a compiled caller calls it."""
    from moe_placement.simulator import kernels

    if not kernels.HAVE_NUMBA:
        return kernels.sort_ints
    from numba import njit

    return njit(lambda v: kernels.sort_ints(v))


_SORT_INTS: list[Any] = []


@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=200))
@settings(max_examples=60, deadline=None)
def test_the_kernels_merge_sort_sorts_like_numpy(values: list[int]) -> None:
    # sort_ints stands in for np.sort in the filling (whose member order fixes the order of float
    # sums): it must give numpy's order for any length, across the insertion runs' edges, duplicates too
    if not _SORT_INTS:
        _SORT_INTS.append(_sort_ints())
    array = np.array(values, dtype=np.int64)
    assert np.array_equal(_SORT_INTS[0](array), np.sort(array))
    assert np.array_equal(array, np.array(values, dtype=np.int64))  # the input is left as it was
