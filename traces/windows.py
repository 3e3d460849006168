"""Time windows of a per-token trace: the tokens of a trace in file order, cut into parts.

A trace's rows are written in the order the tokens were served (step, then batch order), so a token
range ``[start, stop)`` of the file is a window of time. :class:`TraceWindow` reads only that range and
:func:`window_workload` derives its :class:`moe_placement.workload.Workload`, so that a placement can be
fitted on one part of a trace and scored on another (out-of-sample), or replayed window by window.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

from moe_placement.errors import PlacementError
from moe_placement.shapes import ModelShape
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TokenChunk, TraceFile
from moe_placement.workload import Workload


def _slice(chunk: TokenChunk, lo: int, hi: int) -> TokenChunk:
    """Tokens ``[lo, hi)`` of one chunk."""
    return TokenChunk(
        step=chunk.step[lo:hi],
        seq_id=chunk.seq_id[lo:hi],
        pos=chunk.pos[lo:hi],
        expert_ids=chunk.expert_ids[:, lo:hi],
        weights=chunk.weights[:, lo:hi],
        domain=None if chunk.domain is None else chunk.domain[lo:hi],
    )


class TraceWindow(TraceFile):
    """The tokens ``[start, stop)`` (file order) of a trace, read as a trace of their own."""

    def __init__(self, path: str | os.PathLike[str], start: int, stop: int) -> None:
        super().__init__(path)
        total = super().num_tokens
        if not 0 <= start < stop <= total:
            raise PlacementError(
                f"trace window [{start}, {stop}) is outside the {total} tokens of {path}"
            )
        self.start, self.stop = start, stop

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}[{self.start}:{self.stop}]"

    def iter_chunks(self) -> Iterator[TokenChunk]:
        offset = 0
        for chunk in super().iter_chunks():
            n = chunk.num_tokens
            lo, hi = max(self.start - offset, 0), min(self.stop - offset, n)
            offset += n
            if lo < hi:
                yield chunk if (lo, hi) == (0, n) else _slice(chunk, lo, hi)
            if offset >= self.stop:
                return


def token_bounds(num_tokens: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive, near-equal token ranges covering ``[0, num_tokens)``."""
    if parts < 1 or parts > num_tokens:
        raise PlacementError(f"cannot cut {num_tokens} tokens into {parts} windows")
    edges = [round(i * num_tokens / parts) for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def window_workload(
    path: str | os.PathLike[str],
    start: int,
    stop: int,
    *,
    num_gpus: int | None = None,
    home_policy: str = "token",
    shape: ModelShape | None = None,
) -> Workload:
    """The workload of tokens ``[start, stop)`` of a per-token trace (one streaming pass)."""
    return derive_workload(
        TraceWindow(path, start, stop), num_gpus=num_gpus, home_policy=home_policy, shape=shape
    )


def split_workloads(
    path: str | os.PathLike[str],
    fit_fraction: float = 0.5,
    *,
    num_gpus: int | None = None,
    home_policy: str = "token",
    shape: ModelShape | None = None,
) -> tuple[Workload, Workload]:
    """(first ``fit_fraction`` of the tokens, the rest): fit on the first, score on the second."""
    if not 0 < fit_fraction < 1:
        raise PlacementError("the fit fraction must be in (0, 1)")
    total = TraceFile(path).num_tokens
    cut = round(total * fit_fraction)
    if not 0 < cut < total:
        raise PlacementError(f"{path}: {total} tokens are too few to split at {fit_fraction}")
    return (
        window_workload(path, 0, cut, num_gpus=num_gpus, home_policy=home_policy, shape=shape),
        window_workload(path, cut, total, num_gpus=num_gpus, home_policy=home_policy, shape=shape),
    )
