"""Cluster model: presets, files (YAML, TOML, JSON), overrides and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_placement.cluster import PRESETS, ClusterSpec, load_cluster, save_cluster
from moe_placement.errors import PlacementError
from moe_placement.shapes import MODEL_SHAPES, model_shape


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_valid(name: str) -> None:
    spec = load_cluster(name)
    assert spec.num_gpus == spec.num_nodes * spec.gpus_per_node
    assert spec.nic_effective_gbytes_per_s > 0


def test_h800_preset_matches_domain_figures() -> None:
    spec = load_cluster("h800-mpft")
    assert spec.nvlink_effective_gbytes_per_s == pytest.approx(140.0)  # 0.7 x 200: see the preset
    assert spec.nic_gbytes_per_s_per_gpu == pytest.approx(50.0)
    assert spec.fabric == "multi-plane" and spec.planes == 8


def test_with_counts() -> None:
    spec = load_cluster("h800-mpft").with_counts(256, 8)
    assert spec.num_nodes == 32 and spec.planes == 8
    single = load_cluster("h100-single-node").with_counts(16, 8)
    assert single.fabric == "single-switch"
    with pytest.raises(PlacementError, match="multiple"):
        spec.with_counts(20, 8)


def test_files_round_trip(tmp_path: Path) -> None:
    spec = load_cluster("h100-multirail")
    save_cluster(spec, tmp_path / "c.yaml")
    assert load_cluster(str(tmp_path / "c.yaml")).to_dict() == {**spec.to_dict(), "name": spec.name}
    (tmp_path / "c.toml").write_text(
        'preset = "h800-mpft"\nnum_nodes = 4\nnic_gbits_per_s = 200.0\n'
    )
    toml = load_cluster(str(tmp_path / "c.toml"))
    assert toml.num_nodes == 4 and toml.gpu.name == "H800" and toml.nic_gbits_per_s == 200
    (tmp_path / "g.yaml").write_text(
        "gpu: {name: X1, bf16_tflops: 100, fp8_tflops: 200, hbm_gbytes_per_s: 1000, memory_gib: 40,"
        " nvlink_gbytes_per_s: 100}\nnum_nodes: 1\nfabric: none\n"
    )
    assert load_cluster(str(tmp_path / "g.yaml")).gpu.name == "X1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("fabric: torus\n", "fabric must be one of"),
        ("num_nodes: 0\n", ">= 1"),
        ("nvlink_efficiency: 1.5\n", "nvlink_efficiency"),
        ("gpu: Z9000\n", "unknown gpu type"),
        ("colour: blue\n", "unknown keys colour"),
        ("[not: yaml", "cannot parse"),
        ("- 1\n- 2\n", "mapping"),
        ("fabric: multi-plane\nplanes: 3\n", "multi-plane needs planes"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PlacementError, match=message):
        load_cluster(str(path))


def test_unknown_preset() -> None:
    with pytest.raises(PlacementError, match="neither a preset"):
        load_cluster("h900")


def test_default_construction_is_valid() -> None:
    assert ClusterSpec().num_gpus == 64


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_model_shapes(name: str) -> None:
    shape = model_shape(name)
    assert shape.expert_weight_bytes > 0 and shape.top_k <= shape.num_experts
    with pytest.raises(PlacementError):
        model_shape("gpt-5")
