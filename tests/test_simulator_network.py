"""Topology and collectives: DeepEP validation, sanity checks the issue asks for, closed forms."""

from __future__ import annotations

import dataclasses

import pytest

from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.simulator import simulate_uniform
from moe_placement.simulator.topology import Topology

# DeepEP normal kernels, H800 + CX7 (DOMAIN.md section 3): (EP, kind, dispatch GB/s, combine GB/s)
DEEPEP = [(8, "nvl", 153.0, 158.0), (32, "rdma", 58.0, 57.0)]


@pytest.mark.parametrize(("ep", "kind", "dispatch_gbps", "combine_gbps"), DEEPEP)
def test_deepep_validation_within_15_percent(
    ep: int, kind: str, dispatch_gbps: float, combine_gbps: float
) -> None:
    cluster = load_cluster("h800-mpft").with_counts(ep, 8)
    res = simulate_uniform(
        cluster, tokens=4096, hidden=7168, top_k=8, node_limit=min(ep // 8, 4), algo="deepep"
    )
    for phase, published in (("dispatch", dispatch_gbps), ("combine", combine_gbps)):
        simulated = res[f"{phase}_{kind}_gbytes_per_s"]
        assert abs(simulated / published - 1) <= 0.15, (phase, simulated, published)
    assert res["worst_link_utilisation"] <= 1 + 1e-9


# DeepEP low-latency kernels, pure RDMA (deepep-ll-rdma), H800 + CX7 (DOMAIN.md section 3, README of the
# Feb-2025 version): (EP, dispatch us, dispatch GB/s, combine us, combine GB/s)
DEEPEP_LL = [(8, 163.0, 46.0, 318.0, 46.0), (64, 186.0, 40.0, 353.0, 41.0)]


@pytest.mark.parametrize(
    ("ep", "dispatch_us", "dispatch_gbps", "combine_us", "combine_gbps"), DEEPEP_LL
)
def test_deepep_low_latency_validation_within_15_percent(
    ep: int, dispatch_us: float, dispatch_gbps: float, combine_us: float, combine_gbps: float
) -> None:
    # tests/test_low_latency.py: 128 tokens, hidden 7168, top-8 of 288 experts drawn uniformly over all
    # ranks (no node limit; 288 does not split over 64 ranks, simulate_uniform keeps 256 there)
    cluster = load_cluster("h800-mpft").with_counts(ep, 8)
    res = simulate_uniform(
        cluster, tokens=128, hidden=7168, top_k=8, num_experts=288, algo="deepep-ll-rdma"
    )
    for phase, pub_us, pub_gbps in (
        ("dispatch", dispatch_us, dispatch_gbps),
        ("combine", combine_us, combine_gbps),
    ):
        assert abs(res[f"{phase}_us"] / pub_us - 1) <= 0.15, (phase, res[f"{phase}_us"], pub_us)
        simulated = res[f"{phase}_rdma_gbytes_per_s"]
        assert abs(simulated / pub_gbps - 1) <= 0.15, (phase, simulated, pub_gbps)
        # pure RDMA: nothing on NVLink, and every byte leaves through a NIC
        assert sum(res[phase]["nvlink_bytes_sent"]) == 0
        assert sum(res[phase]["nic_bytes_sent"]) > 0
    assert res["worst_link_utilisation"] <= 1 + 1e-9


# Current DeepEP low-latency kernels (deepep-ll: NVLink in the node, RDMA across; DeepEP README / docs/legacy.md
# since PR #173), H800 + CX7, 128 tokens, hidden 7168, top-8: (EP, dispatch us, combine us). EP >= 128 on
# the fast path (within 0.5% of the event simulation for these kernels, tests/test_simulator_fast.py).
DEEPEP_LL_NVL = [
    (8, 77.0, 114.0),
    (16, 118.0, 195.0),
    (32, 155.0, 273.0),
    (64, 173.0, 314.0),
    (128, 192.0, 369.0),
    (256, 194.0, 360.0),
]


@pytest.mark.parametrize(("ep", "dispatch_us", "combine_us"), DEEPEP_LL_NVL)
def test_current_low_latency_validation_within_15_percent(
    ep: int, dispatch_us: float, combine_us: float
) -> None:
    cluster = load_cluster("h800-mpft").with_counts(ep, 8)
    res = simulate_uniform(
        cluster,
        tokens=128,
        hidden=7168,
        top_k=8,
        num_experts=288,
        algo="deepep-ll",
        fast=ep >= 64,
    )
    for phase, published in (("dispatch", dispatch_us), ("combine", combine_us)):
        assert abs(res[f"{phase}_us"] / published - 1) <= 0.15, (phase, res[f"{phase}_us"])
    nvl, nic = sum(res["dispatch"]["nvlink_bytes_sent"]), sum(res["dispatch"]["nic_bytes_sent"])
    # in the node over NVLink (7 of the other ep - 1 ranks), across nodes over the NIC
    assert nvl > 0
    assert (nic > 0) == (ep > 8)
    assert nvl / (nvl + nic) == pytest.approx(7 / (ep - 1), rel=0.1)


def test_low_latency_counts_every_expert_copy_and_skips_own_rank() -> None:
    # one node of 8: every (token, expert) copy to another rank crosses two NICs; own-rank copies do not
    cluster = load_cluster("h800-mpft").with_counts(8, 8)
    kw = {"tokens": 64, "hidden": 512, "top_k": 4, "num_experts": 32, "seed": 5}
    ll = simulate_uniform(cluster, algo="deepep-ll-rdma", dispatch_bytes=2.0, **kw)  # type: ignore[arg-type]
    direct = simulate_uniform(cluster, algo="direct", dispatch_bytes=2.0, **kw)  # type: ignore[arg-type]
    msg = 512 * 2.0 + 16.0
    sent = sum(ll["dispatch"]["nic_bytes_sent"])
    copies = sent / msg
    assert copies == pytest.approx(round(copies), abs=1e-6)  # whole messages, header included
    assert 64 * 4 * 8 * 0.7 < copies < 64 * 4 * 8  # all selections but roughly 1/8 own-rank ones
    # the same traffic over NVLink (direct, deduplicated per GPU) is faster than two NIC hops
    assert sum(direct["dispatch"]["nic_bytes_sent"]) == 0
    assert direct["dispatch_us"] < ll["dispatch_us"]
    with pytest.raises(PlacementError):
        simulate_uniform(load_cluster("h100-single-node"), algo="deepep-ll-rdma", **kw)  # type: ignore[arg-type]
    # the current kernels need no NIC in one node: the same copies go over NVLink
    one_node = load_cluster("h100-single-node")
    nvl = simulate_uniform(one_node, algo="deepep-ll", dispatch_bytes=2.0, **kw)  # type: ignore[arg-type]
    assert sum(nvl["dispatch"]["nic_bytes_sent"]) == 0
    assert sum(nvl["dispatch"]["nvlink_bytes_sent"]) == pytest.approx(sent)


def test_low_latency_doubling_nic_bandwidth_halves_the_time() -> None:
    base = load_cluster("h800-mpft").with_counts(16, 8)
    fast = dataclasses.replace(base, nic_gbits_per_s=800.0, pcie_gbytes_per_s=128.0)
    kw = {"tokens": 64, "algo": "deepep-ll-rdma", "num_experts": 64}
    t_base = simulate_uniform(base, **kw)["dispatch_us"]  # type: ignore[arg-type]
    t_fast = simulate_uniform(fast, **kw)["dispatch_us"]  # type: ignore[arg-type]
    assert t_fast < t_base * 0.6


def _uniform_us(cluster, **kw) -> float:  # type: ignore[no-untyped-def]
    res = simulate_uniform(cluster, tokens=kw.pop("tokens", 512), **kw)
    assert res["worst_link_utilisation"] <= 1 + 1e-9
    return float(res["dispatch_us"] + res["combine_us"])


def test_more_nic_bandwidth_is_faster_and_more_gpus_changes_the_answer() -> None:
    base = load_cluster("h100-multirail").with_counts(16, 8)
    fast = dataclasses.replace(base, nic_gbits_per_s=800.0, pcie_gbytes_per_s=128.0)
    t_base, t_fast = _uniform_us(base, algo="direct"), _uniform_us(fast, algo="direct")
    assert t_fast < t_base * 0.8
    t_32 = _uniform_us(base.with_counts(32, 8), algo="direct")
    assert t_32 != pytest.approx(t_base, rel=0.01)


def test_mpft_like_multirail_with_pxn_and_slower_without() -> None:
    mpft = load_cluster("h800-mpft").with_counts(32, 8)
    rail = dataclasses.replace(mpft, fabric="multi-rail", planes=1)
    t_mpft = _uniform_us(mpft, algo="direct")
    t_rail = _uniform_us(rail, algo="direct", pxn=True)
    t_rail_nopxn = _uniform_us(rail, algo="direct", pxn=False, routing="ecmp")
    assert t_rail == pytest.approx(t_mpft, rel=0.05)
    assert t_rail_nopxn > t_rail * 1.05


def test_topology_changes_the_answer_and_ecmp_is_no_faster_than_spray() -> None:
    rail = load_cluster("h100-multirail").with_counts(32, 8)
    ft3 = dataclasses.replace(rail, fabric="three-tier", switch_radix=8)
    t_rail = _uniform_us(rail, algo="direct", pxn=False)
    t_ecmp = _uniform_us(rail, algo="direct", pxn=False, routing="ecmp")
    t_ft3 = _uniform_us(ft3, algo="direct", pxn=False, routing="ecmp")
    assert t_ecmp >= t_rail * (1 - 1e-9)
    assert t_ft3 != pytest.approx(t_rail, rel=1e-3)


def test_uncongested_single_pair_is_the_closed_form() -> None:
    # two nodes of one GPU: a single NIC flow each way, nothing shared
    cluster = load_cluster("h100-single-switch").with_counts(2, 1)
    res = simulate_uniform(
        cluster,
        tokens=64,
        hidden=1024,
        top_k=1,
        num_experts=2,
        algo="direct",
        dispatch_bytes=2.0,
        seed=3,
    )
    topo = Topology(cluster)
    route = topo.route(0, 1)
    per_copy = 1024 * 2.0
    sent = res["dispatch"]["nic_bytes_sent"]
    expected = max(sent) / (cluster.nic_effective_gbytes_per_s * 1e3) + route.latency_us
    assert res["dispatch_us"] == pytest.approx(expected, rel=1e-9)
    assert sum(sent) % per_copy == pytest.approx(0.0, abs=1e-6)


def test_graph_and_routes() -> None:
    cluster = load_cluster("h800-mpft").with_counts(16, 8)
    topo = Topology(cluster)
    g = topo.graph
    assert g.number_of_nodes() > 16
    import networkx as nx

    assert nx.has_path(g, ("gpu", 0), ("gpu", 15))
    # MPFT: cross-plane traffic relays over NVLink (PXN) before the NIC
    names = [topo.link_names[i] for i in topo.route(0, 9).links]
    assert names[0] == "nvl-tx/0" and names[1] == "nvl-rx/1" and "nic-tx/1.0" in names
    assert topo.route(0, 9).latency_us == pytest.approx(
        cluster.nvlink_latency_us + cluster.nic_latency_us
    )
    with pytest.raises(PlacementError):
        Topology(cluster, routing="random")


def test_uniform_rejects_bad_input() -> None:
    cluster = load_cluster("h800-mpft").with_counts(8, 8)
    with pytest.raises(PlacementError):
        simulate_uniform(cluster, algo="ring")
    with pytest.raises(PlacementError):
        simulate_uniform(cluster, top_k=0)
