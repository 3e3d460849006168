"""Scenario axes: parsing ``--sweep``, expanding the product, the cluster each scenario builds, the cache key."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.pipeline.scenario import Scenario, expand, parse_sweep

BASE = load_cluster("h100-multirail")


def _scenario(**changes: object) -> Scenario:
    s = Scenario(
        trace="/t.parquet",
        trace_fingerprint="abc",
        gpus=8,
        gpus_per_node=4,
        gpu="H100",
        topology="multi-rail",
        nic_gbps=400.0,
        solver="greedy",
    )
    return dataclasses.replace(s, **changes)  # type: ignore[arg-type]


def test_parse_sweep_values_and_order() -> None:
    sweep = parse_sweep(
        ["gpus=16,8,16", "topology=multi-plane,three-tier", "nic-gbps=200,400.5", "gpu=h200"]
    )
    assert sweep == {
        "gpus": [16, 8],
        "topology": ["multi-plane", "three-tier"],
        "nic_gbps": [200.0, 400.5],
        "gpu": ["H200"],
    }


@pytest.mark.parametrize(
    "item, words",
    [
        ("gpus", "AXIS=V1"),
        ("colour=red", "unknown axis"),
        ("gpus=0", ">= 1"),
        ("gpus=eight", "not an integer"),
        ("topology=torus", "not one of"),
        ("solver=magic", "unknown solver"),
        ("redundant=-1", ">= 0"),
        ("nic_gbps=8,,16", "empty value"),
        ("gpu=Z80", "unknown gpu"),
    ],
)
def test_parse_sweep_rejects(item: str, words: str) -> None:
    with pytest.raises(PlacementError, match=words):
        parse_sweep([item])


def test_axis_twice_rejected() -> None:
    with pytest.raises(PlacementError, match="twice"):
        parse_sweep(["gpus=8", "gpus=16"])


def test_expand_caps_gpus_per_node() -> None:
    scenarios = expand(_scenario(gpus_per_node=8), parse_sweep(["gpus=4,8,16"]))
    assert [(s.gpus, s.gpus_per_node) for s in scenarios] == [(4, 4), (8, 8), (16, 8)]


@pytest.mark.parametrize("topology", ["single-switch", "multi-rail", "multi-plane", "three-tier"])
def test_cluster_per_topology(topology: str) -> None:
    spec = _scenario(
        topology=topology, gpus=16, gpus_per_node=8, nic_gbps=200.0, gpu="H200"
    ).cluster(BASE)
    assert spec.fabric == topology
    assert (spec.num_nodes, spec.gpus_per_node, spec.num_gpus) == (2, 8, 16)
    assert spec.nic_gbits_per_s == 200.0 and spec.gpu.name == "H200"
    assert spec.planes == (8 if topology == "multi-plane" else 1)


def test_cluster_not_divisible() -> None:
    with pytest.raises(PlacementError, match="multiple"):
        _scenario(gpus=12, gpus_per_node=8).cluster(BASE)


def test_key_depends_on_content_not_path() -> None:
    a = _scenario()
    assert a.key(BASE, "analytic") == dataclasses.replace(a, trace="/elsewhere.parquet").key(
        BASE, "analytic"
    )
    assert a.key(BASE, "analytic") != dataclasses.replace(a, trace_fingerprint="abd").key(
        BASE, "analytic"
    )
    assert a.key(BASE, "analytic") != a.key(BASE, "simulator")
    assert a.key(BASE, "analytic") != a.key(load_cluster("h200-multirail"), "analytic")


axis_values = st.fixed_dictionaries(
    {},
    optional={
        "gpus": st.lists(
            st.sampled_from(["4", "8", "16", "32"]), min_size=1, max_size=3, unique=True
        ),
        "topology": st.lists(
            st.sampled_from(["multi-rail", "multi-plane", "three-tier"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        "tokens": st.lists(
            st.sampled_from(["128", "1024", "4096"]), min_size=1, max_size=3, unique=True
        ),
        "overlap": st.lists(
            st.sampled_from(["none", "two-batch", "chunked"]), min_size=1, max_size=3, unique=True
        ),
    },
)


@settings(max_examples=40, deadline=None)
@given(axis_values)
def test_expand_is_the_full_product_with_distinct_keys(axes: dict[str, list[str]]) -> None:
    sweep = parse_sweep([f"{a}={','.join(v)}" for a, v in axes.items()])
    scenarios = expand(_scenario(), sweep)
    assert len(scenarios) == math.prod(len(v) for v in axes.values())
    keys = {s.key(BASE, "analytic") for s in scenarios}
    assert len(keys) == len(scenarios)
    for s in scenarios:
        spec = s.cluster(BASE)
        assert spec.num_gpus == s.gpus
