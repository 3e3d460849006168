"""How per-rank clock readings become one phase time, and many repetitions one figure.

Every timed phase starts after a barrier, and each rank reads its own start and end. By default a
phase's time is the slowest rank's own duration (end minus its own start after the barrier), the
figure that also exists across hosts. Ranks on one host read the same ``CLOCK_MONOTONIC``
(``time.perf_counter``), so the phase can instead be timed from the last rank's release to the last
rank's end, which drops the barrier's release skew (``SPAN_ON_SHARED_CLOCK``). Measured side by side
on this project's 2-core VM (docs/executor.md), the span predicted *worse* (38-88% of held-out layers
within 20%, against 94-100% with the slowest rank's own time; calibration and replay carry the same
skew, which the fitted host model absorbs). It stays as an option of the bench.

Repetitions of a phase on a shared host are bimodal (either nobody is preempted, or someone waits a
scheduler slice of several milliseconds): their median flips between the two modes from one layer to
the next, while their mean moves smoothly with how often preemption happens. Measurements and
calibration alike therefore take a trimmed mean (the outer ``TRIM`` of repetitions on each side
dropped, to ignore rare stalls from other jobs), so the model is fitted to the statistic it predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TRIM = 0.1  # fraction of repetitions dropped on each side by central_us (0.5: the median)
SPAN_ON_SHARED_CLOCK = (
    False  # True: last release to last end on a shared clock (see the module docstring)
)


def share_clock(infos: Sequence[dict[str, Any]]) -> bool:
    """Whether every rank reported the same host id (one machine, one boot): one monotonic clock."""
    ids = {str(info.get("host_id", "")) for info in infos}
    return len(ids) == 1 and "" not in ids


def across_ranks(stamps_us: np.ndarray, shared_clock: bool) -> np.ndarray:
    """``[ranks, ..., 2]`` (start, end) readings -> ``[...]`` phase times in us: the slowest rank's own
    duration, or, with :data:`SPAN_ON_SHARED_CLOCK` on a shared clock, last release to last end."""
    stamps = np.asarray(stamps_us, dtype=float)
    if stamps.shape[-1] != 2:
        raise ValueError("stamps need a trailing (start, end) axis")
    if shared_clock and SPAN_ON_SHARED_CLOCK:
        return stamps[..., 1].max(axis=0) - stamps[..., 0].max(axis=0)
    return (stamps[..., 1] - stamps[..., 0]).max(axis=0)


def central_us(times_us: np.ndarray, axis: int = 0, trim: float | None = None) -> np.ndarray:
    """Trimmed mean along ``axis``: the outer ``trim`` (default :data:`TRIM`) of the sorted values
    dropped on each side, never all of them (``trim=0.5`` gives the median). NaN where the axis is
    empty."""
    trim = TRIM if trim is None else trim
    t = np.sort(np.asarray(times_us, dtype=float), axis=axis)
    n = t.shape[axis]
    if n == 0:
        shape = list(t.shape)
        del shape[axis]
        return np.full(shape, np.nan)
    cut = min(int(np.floor(trim * n)), (n - 1) // 2)
    kept = np.take(t, np.arange(cut, n - cut), axis=axis)
    return np.asarray(kept.mean(axis=axis))
