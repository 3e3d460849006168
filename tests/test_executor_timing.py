"""Phase times across ranks and the trimmed mean over repetitions (placement.executor.timing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.executor import timing


def test_span_on_a_shared_clock_drops_release_skew(monkeypatch: pytest.MonkeyPatch) -> None:
    # rank 0 released at 0 and waits for rank 1, released 3 ms late; both end at 4 ms
    stamps = np.array([[0.0, 4000.0], [3000.0, 4000.0]])
    # the default (measured best on this host, docs/executor.md): the slowest rank's own time
    assert timing.across_ranks(stamps, shared_clock=True) == pytest.approx(4000.0)
    monkeypatch.setattr(timing, "SPAN_ON_SHARED_CLOCK", True)
    assert timing.across_ranks(stamps, shared_clock=True) == pytest.approx(1000.0)
    assert timing.across_ranks(stamps, shared_clock=False) == pytest.approx(4000.0)


def test_share_clock_needs_one_known_host() -> None:
    assert timing.share_clock([{"host_id": "a:1"}, {"host_id": "a:1"}])
    assert not timing.share_clock([{"host_id": "a:1"}, {"host_id": "b:1"}])
    assert not timing.share_clock([{}, {}])


def test_across_ranks_rejects_missing_stamp_axis() -> None:
    with pytest.raises(ValueError):
        timing.across_ranks(np.zeros((2, 3)), shared_clock=True)


def test_central_is_robust_to_rare_stalls_and_median_at_half() -> None:
    x = np.array([1.0] * 9 + [1000.0])
    assert timing.central_us(x, trim=0.1) == pytest.approx(1.0)
    assert timing.central_us(np.array([1.0, 2.0, 3.0, 10.0]), trim=0.5) == pytest.approx(2.5)
    assert np.isnan(timing.central_us(np.zeros((0,))))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=40),
    st.floats(0, 0.5),
)
def test_central_lies_between_min_and_max(values: list[float], trim: float) -> None:
    x = np.array(values)
    c = float(timing.central_us(x, trim=trim))
    assert x.min() - 1e-6 <= c <= x.max() + 1e-6


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31))
def test_span_never_exceeds_slowest_own_duration(ranks: int, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 1000, size=(ranks, reps))
    stamps = np.stack([start, start + rng.uniform(0, 1000, size=(ranks, reps))], axis=-1)
    own = timing.across_ranks(stamps, shared_clock=False)
    default = timing.SPAN_ON_SHARED_CLOCK
    timing.SPAN_ON_SHARED_CLOCK = True
    try:
        span = timing.across_ranks(stamps, shared_clock=True)
    finally:
        timing.SPAN_ON_SHARED_CLOCK = default
    assert np.all(span <= own + 1e-9)


def test_validate_refuses_zero_rounds_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from moe_placement.cli.main import main

    code = main(
        ["validate", "--trace", "t.parquet", "--plan", "p.json", "--workers", "4", "--rounds", "0"]
    )
    assert code == 2
    assert "--rounds" in capsys.readouterr().err
