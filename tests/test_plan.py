"""Plan invariants (each named on failure) and JSON round trip (golden); engine exporters are tested in
test_engine_exports.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.errors import PlacementError
from moe_placement.plan import Plan, PlanInvariantError, Provenance

GOLDEN = Path(__file__).parent / "golden"


def sample_plan() -> Plan:
    # 2 layers, 4 GPUs (2 per node), 3 slots per GPU, 10 experts + 2 redundant
    phy2log = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1],
            [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 5],
        ]
    )
    return Plan(
        4,
        2,
        3,
        phy2log,
        provenance=Provenance(
            "golden", objective=1.5, bound=1.4, gap=0.0667, seconds=0.25, method="test"
        ),
    )


def test_golden_plan_json() -> None:
    expected = json.loads((GOLDEN / "plan_v1.json").read_text())
    assert sample_plan().to_dict() == expected
    loaded = Plan.load(GOLDEN / "plan_v1.json")
    np.testing.assert_array_equal(loaded.phy2log, sample_plan().phy2log)
    assert loaded.provenance == sample_plan().provenance


def test_round_trip_with_shares(tmp_path: Path) -> None:
    plan = sample_plan()
    share = plan.shares().copy()
    share[0, 0], share[0, 10] = 0.25, 0.75
    plan = Plan(4, 2, 3, plan.phy2log, replica_share=share, provenance=plan.provenance)
    plan.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json")
    np.testing.assert_allclose(again.shares(), share)
    assert again.fingerprint() == plan.fingerprint()


def test_maps_agree() -> None:
    plan = sample_plan()
    log2phy, cnt = plan.log2phy(), plan.logcnt()
    assert cnt[0, 0] == 2 and cnt[0, 2] == 1 and cnt[1, 9] == 2
    for layer in range(2):
        for e in range(10):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == cnt[layer, e]
            assert (plan.phy2log[layer, slots] == e).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.__setitem__((0, 1), 0), "no two replicas of one expert on one GPU"),
        (lambda p: p.__setitem__((0, 11), -1), "negative expert id"),
        # an id past the others implies experts that hold no slot
        (lambda p: p.__setitem__((0, 11), 99), "layer 0 has no slot for expert 10"),
        (lambda p: p.__setitem__((1, 1), 5), "every expert placed"),
    ],
)
def test_validate_names_the_invariant(mutate, message) -> None:  # type: ignore[no-untyped-def]
    phy2log = sample_plan().phy2log.copy()
    mutate(phy2log)
    with pytest.raises(PlanInvariantError, match=message):
        Plan(4, 2, 3, phy2log).validate()


def test_validate_shape_and_shares() -> None:
    with pytest.raises(PlanInvariantError, match="slots per layer"):
        Plan(4, 2, 2, sample_plan().phy2log).validate()
    with pytest.raises(PlanInvariantError, match="multiple of gpus_per_node"):
        Plan(3, 2, 4, sample_plan().phy2log).validate()
    bad = np.ones((2, 12))
    with pytest.raises(PlanInvariantError, match="sum to 1"):
        Plan(4, 2, 3, sample_plan().phy2log, replica_share=bad).validate()


def test_num_experts_is_derived_from_the_maps() -> None:
    plan = sample_plan()
    assert plan.num_experts == 10 and plan.logcnt().shape == (2, 10)
    assert plan.num_redundant == 2


def test_plan_files_with_and_without_num_experts_load(tmp_path: Path) -> None:
    """Old files carry ``num_experts``; it must agree with the maps. Files without it load too."""
    data = sample_plan().to_dict()
    assert data["num_experts"] == 10  # still written: readers outside this package use it
    without = {k: v for k, v in data.items() if k != "num_experts"}
    assert Plan.from_dict(without).num_experts == 10
    with pytest.raises(PlacementError, match="num_experts is 11 but its phy2log implies 10"):
        Plan.from_dict({**data, "num_experts": 11})
    with pytest.raises(PlacementError, match="num_layers is 3 but its phy2log implies 2"):
        Plan.from_dict({**data, "num_layers": 3})
    with pytest.raises(PlacementError, match="num_experts 'ten' is not an integer"):
        Plan.from_dict({**data, "num_experts": "ten"})


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(PlacementError, match="not JSON"):
        Plan.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"schema_version": 1, "num_gpus": 4}))
    with pytest.raises(PlacementError, match="missing key"):
        Plan.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({**sample_plan().to_dict(), "schema_version": 7}))
    with pytest.raises(PlacementError, match="schema_version"):
        Plan.load(tmp_path / "c.json")


@settings(max_examples=40, deadline=None)
@given(
    gpus=st.integers(1, 6),
    per_node=st.sampled_from([1, 2]),
    experts=st.integers(1, 12),
    extra=st.integers(0, 6),
    seed=st.integers(0, 1000),
)
def test_maps_are_inverse(gpus: int, per_node: int, experts: int, extra: int, seed: int) -> None:
    """For any valid random layout, log2phy/logcnt invert phy2log."""
    gpus = gpus * per_node
    slots = experts + extra
    if slots % gpus or slots // gpus > experts:
        return
    rng = np.random.default_rng(seed)
    spg = slots // gpus
    # build a valid layout: experts once each, extras on GPUs that lack them
    held: list[list[int]] = [[] for _ in range(gpus)]
    order = list(rng.permutation(experts)) + list(rng.integers(0, experts, size=extra))
    for e in order:
        options = [g for g in range(gpus) if len(held[g]) < spg and e not in held[g]]
        if not options:
            return
        held[int(rng.choice(options))].append(int(e))
    plan = Plan(gpus, per_node, spg, np.array([[x for g in held for x in g]])).validate()
    log2phy = plan.log2phy()
    recovered = np.full(slots, -1)
    for e in range(experts):
        for s in log2phy[0, e]:
            if s >= 0:
                recovered[s] = e
    np.testing.assert_array_equal(recovered, plan.phy2log[0])
    assert plan.shares().sum() == pytest.approx(experts)
