"""What solvers and the evaluator consume: a model shape plus routing statistics.

A :class:`Workload` comes from a per-token trace (everything known) or from a load-only input such as
the ``logical_count`` JSON of EPLB and SGLang (only ``load``). Anything that needs per-token data calls
:meth:`Workload.require_per_token`, which says so clearly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.shapes import ModelShape

HOME_POLICIES = ("token", "sequence")


class Chunk(Protocol):
    """Complete tokens: ``seq_id[n]``, ``pos[n]``, ``step[n]``, ``expert_ids[layers, n, k]``."""

    step: np.ndarray
    seq_id: np.ndarray
    pos: np.ndarray
    expert_ids: np.ndarray


def home_gpus(
    seq_id: np.ndarray, pos: np.ndarray, num_gpus: int, policy: str = "token"
) -> np.ndarray:
    """The data-parallel rank (home GPU) of each token.

    ``token``: tokens spread round-robin by (sequence, position), as when a batch's tokens are split
    evenly over DP ranks; ``sequence``: whole sequences per rank (``seq_id mod num_gpus``).
    """
    seq = np.asarray(seq_id, dtype=np.int64)
    if policy == "sequence":
        return np.mod(seq, num_gpus)
    if policy == "token":
        return np.mod(seq * 7919 + np.asarray(pos, dtype=np.int64), num_gpus)
    raise PlacementError(f"unknown home policy {policy!r}; known: {', '.join(HOME_POLICIES)}")


@dataclass(frozen=True, eq=False)
class Workload:
    """Routing statistics for one trace.

    ``load[layers, experts]``: (token, expert) assignments; ``coact[layers, experts, experts]``: tokens
    choosing both experts (symmetric, zero diagonal); ``transitions[layers-1, experts, experts]``: tokens
    with expert i at layer l among their top-k and expert j at layer l+1; ``top1_transitions``: the same for
    the top-1 experts only; ``home_demand[layers, gpus, experts]``: assignments by home GPU.
    """

    shape: ModelShape
    load: np.ndarray
    num_tokens: int
    source: str
    fingerprint: str = ""
    coact: np.ndarray | None = None
    transitions: np.ndarray | None = None
    top1_transitions: np.ndarray | None = None
    home_demand: np.ndarray | None = None
    home_num_gpus: int | None = None
    home_policy: str = "token"
    chunk_source: Callable[[], Iterable[Any]] | None = None

    @property
    def per_token(self) -> bool:
        return self.chunk_source is not None

    @property
    def num_layers(self) -> int:
        return int(self.load.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.load.shape[1])

    def require_per_token(self, who: str) -> None:
        if not self.per_token or self.coact is None or self.transitions is None:
            raise PlacementError(
                f"{who} needs per-token routing (co-activation, inter-layer transitions), but {self.source} "
                "is load-only (a logical_count JSON): give a Parquet trace"
            )

    def chunks(self) -> Iterable[Any]:
        if self.chunk_source is None:
            raise PlacementError(f"{self.source} is load-only: no per-token data")
        return self.chunk_source()

    def demand(self, num_gpus: int) -> np.ndarray:
        """``[layers, gpus, experts]`` assignments by home GPU (uniform split for load-only inputs)."""
        if self.home_demand is not None and self.home_num_gpus == num_gpus:
            return self.home_demand
        if self.per_token:
            raise PlacementError(
                f"internal: workload derived for {self.home_num_gpus} home GPUs, asked for {num_gpus}"
            )
        return np.repeat(self.load[:, None, :] / num_gpus, num_gpus, axis=1)
