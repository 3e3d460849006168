"""Shared fixtures: tiny synthetic traces and clusters, and the path of the optional shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_placement.cluster import load_cluster
from moe_placement.traces.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DSV3_LOADS = SHARED_DATA / "dsv3-expert-loads"


@pytest.fixture(scope="session")
def tiny_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 layers x 16 experts, top-2, 2048 tokens, with co-activation and affinity."""
    path = tmp_path_factory.mktemp("traces") / "tiny.parquet"
    generate(
        SynthConfig(num_layers=4, num_experts=16, top_k=2, num_tokens=2048, seq_len=128),
        path,
        seed=3,
    )
    return path


@pytest.fixture(scope="session")
def small_cluster():  # type: ignore[no-untyped-def]
    """8 GPUs in 2 nodes of 4."""
    return load_cluster("h100-multirail").with_counts(8, 4)


def needs_dsv3() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not DSV3_LOADS.exists(), reason="../shared/data/dsv3-expert-loads absent"
    )
