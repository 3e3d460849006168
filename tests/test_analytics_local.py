"""Trace analytics: local routing consistency, per-domain preference and drift on hand-built traces,
property tests of their ranges, and ``placement stats`` with plots and ``--compare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.cli.main import main
from moe_placement.traces.analytics import token_level_stats, trace_stats
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter


def _write(
    path: Path,
    ids: np.ndarray,
    seq: np.ndarray,
    domain: list[str] | None = None,
    experts: int = 8,
    row_group_tokens: int = 32768,
) -> Path:
    layers, n, k = ids.shape
    meta = TraceMeta("hand", layers, experts, k, 64, 32)
    with TraceWriter(
        path, meta, with_domain=domain is not None, row_group_tokens=row_group_tokens
    ) as w:
        pos = np.concatenate([np.arange((seq == s).sum()) for s in np.unique(seq)])
        w.write(
            np.zeros(n, dtype=np.int32),
            seq,
            pos,
            ids,
            np.full(ids.shape, 1.0 / k),
            None if domain is None else np.asarray(domain, dtype=object),
        )
    return path


def test_constant_routing_is_fully_consistent(tmp_path: Path) -> None:
    """Every token of a sequence uses the same experts: repeat share and window coverage are 1."""
    n = 64
    seq = np.repeat([0, 1], n // 2)
    ids = np.zeros((2, n, 2), dtype=np.int64)
    ids[:, :, 0] = np.where(seq == 0, 1, 5)
    ids[:, :, 1] = np.where(seq == 0, 2, 6)
    work = derive_workload(TraceFile(_write(tmp_path / "c.parquet", ids, seq)))
    local = token_level_stats(work, window=8, cache_experts=2)
    assert local["repeat_share"] == [1.0, 1.0]
    assert local["window_coverage"] == [1.0, 1.0]
    assert max(local["repeat_share_shuffled"]) < 1.0


def test_consistency_spans_row_groups(tmp_path: Path) -> None:
    """The (t-1, t) pairs cut by a row-group boundary still count."""
    n = 40
    seq = np.zeros(n, dtype=np.int64)
    ids = np.zeros((1, n, 1), dtype=np.int64)
    ids[0, :, 0] = 3
    work = derive_workload(TraceFile(_write(tmp_path / "r.parquet", ids, seq, row_group_tokens=16)))
    assert token_level_stats(work, window=4)["repeat_share"] == [1.0]


def test_domain_determines_expert(tmp_path: Path) -> None:
    n = 80
    seq = np.arange(n) // 10
    domain = ["a" if s % 2 == 0 else "b" for s in seq]
    ids = np.zeros((2, n, 1), dtype=np.int64)
    ids[:, :, 0] = np.where(np.asarray(domain) == "a", 0, 3)
    stats = trace_stats(
        derive_workload(TraceFile(_write(tmp_path / "d.parquet", ids, seq, domain)))
    )
    assert stats["domains"] == {"a": 40, "b": 40}
    assert stats["mean_domain_nmi"] == pytest.approx(1.0)
    assert stats["domain_load"]["a"][0][0] == pytest.approx(1.0)


def test_drift_between_halves(tmp_path: Path) -> None:
    n = 32
    seq = np.zeros(n, dtype=np.int64)
    ids = np.zeros((1, n, 1), dtype=np.int64)
    ids[0, n // 2 :, 0] = 7  # the second half moves to another expert
    stats = trace_stats(derive_workload(TraceFile(_write(tmp_path / "h.parquet", ids, seq))))
    assert stats["mean_drift_js_halves"] == pytest.approx(np.log(2))


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 60),
    experts=st.integers(2, 10),
    k=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_shares_are_in_range(
    n: int, experts: int, k: int, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    k = min(k, experts)
    rng = np.random.default_rng(seed)
    ids = np.stack(
        [np.stack([rng.choice(experts, k, replace=False) for _ in range(n)]) for _ in range(2)]
    )
    seq = np.sort(rng.integers(0, 3, size=n))
    path = _write(tmp_path_factory.mktemp("p") / "t.parquet", ids, seq, experts=experts)
    local = token_level_stats(derive_workload(TraceFile(path)), window=4)
    for key in (
        "repeat_share",
        "repeat_share_shuffled",
        "window_coverage",
        "window_coverage_shuffled",
    ):
        assert all(0.0 <= v <= 1.0 for v in local[key])
    assert all(v >= 0 for v in local["drift_js_halves"])


def test_stats_cli_plots_and_compare(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.parquet"
    assert main(["synth", "--out", str(other), "--tokens", "1024", "--seed", "9"]) == 0
    plots = tmp_path / "plots"
    capsys.readouterr()
    assert (
        main(
            [
                "stats",
                "--trace",
                str(tiny_trace),
                "--compare",
                str(other),
                "--plots",
                str(plots),
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["drift_js"] > 0 and "drift_js_transitions" in stats
    assert {"consistency.png", "drift.png", "affinity.png", "coactivation_l0.png"} <= {
        p.name for p in plots.iterdir()
    }
    assert main(["stats", "--trace", str(tiny_trace), "--window", "0"]) == 2
    assert main(["stats", "--trace", str(tmp_path / "missing.parquet")]) == 2
