"""Shared fixtures: tiny synthetic traces and clusters, and the path of the optional shared data.

Skipped tests say why at the end of every run (``-rs`` in pyproject's ``addopts``), next to the
optional pieces this machine lacks and how to add them, so a skip is never a surprise. Property tests
are derandomized (profile ``ci``): the same examples on every run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from moe_placement.cluster import load_cluster
from moe_placement.traces.synth import SynthConfig, generate

# Property tests draw the same examples on every run (CI must not fail on a draw no one can replay;
# a test's own @settings still sets how many). HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
        not DSV3_LOADS.exists(),
        reason="../shared/data/dsv3-expert-loads absent (DeepSeek-V3 loads beside the clone)",
    )


def _absent_optional_pieces() -> list[str]:
    """What the tests could use and this machine lacks, with the tests that then skip."""
    absent = []
    for module, extra, what in (
        ("torch", "capture or executor", "capture and executor tests"),
        ("transformers", "capture", "capture tests"),
        ("ray", "executor", "Ray executor tests"),
    ):
        if importlib.util.find_spec(module) is None:
            absent.append(f"{module} (pip install -e '.[{extra}]'): {what} skip")
    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        absent.append("chromium (not on the PATH): the report rendering test skips")
    if not DSV3_LOADS.exists():
        absent.append(f"{DSV3_LOADS} (shared data): the DeepSeek-V3 load tests skip")
    return absent


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Beside the skip reasons (``-rs``): which optional pieces are absent, and how to add them."""
    absent = _absent_optional_pieces()
    if absent:
        terminalreporter.write_line("optional pieces absent here (their tests skip):")
        for line in absent:
            terminalreporter.write_line(f"  {line}")
