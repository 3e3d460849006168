"""The placement problem and the solver options: plain data, below the registry and every solver.

``PlacementProblem`` says what to place and where; ``SolverConfig`` how long and how to search. Both are
frozen and validated on construction, with no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe_placement.cluster import ClusterSpec
from moe_placement.dispatch import SHARE, check_engine, engine_plan_shares, slot_shares
from moe_placement.errors import InfeasibleError, PlacementError
from moe_placement.plan import Plan
from moe_placement.workload import Workload


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """What to place and where.

    ``workloads`` holds one or more traces (several for robust placement, with ``weights``); the first is
    the primary. ``num_redundant`` extra slots hold replicas. ``current`` and ``max_moves`` describe an
    incremental re-placement. ``slots_per_gpu`` is ``(experts + redundant) / gpus``. ``engine`` names
    whose replica dispatch the plan is solved for (:mod:`moe_placement.dispatch`): the share-aware router
    (default; replica shares are free variables) or a serving engine, whose rule fixes the shares from
    where the replicas sit.
    """

    workloads: tuple[Workload, ...]
    cluster: ClusterSpec
    num_redundant: int = 0
    mode: str = "standard"
    weights: tuple[float, ...] = ()
    current: Plan | None = None
    max_moves: int | None = None
    engine: str = SHARE

    def __post_init__(self) -> None:
        check_engine(self.engine)
        if not self.workloads:
            raise PlacementError("a placement problem needs at least one trace")
        first = self.workloads[0]
        for other in self.workloads[1:]:
            if other.load.shape != first.load.shape:
                raise PlacementError(
                    f"traces disagree on shape: {first.source} is {first.load.shape}, "
                    f"{other.source} is {other.load.shape}"
                )
        if self.weights and len(self.weights) != len(self.workloads):
            raise PlacementError("give one weight per trace")
        if self.num_redundant < 0:
            raise PlacementError("--redundant must be >= 0")
        slots = first.num_experts + self.num_redundant
        gpus = self.cluster.num_gpus
        if slots % gpus:
            raise InfeasibleError(
                f"experts + redundant = {slots} slots cannot be spread evenly over {gpus} GPUs; "
                f"choose --redundant so that {first.num_experts} + R is a multiple of {gpus}"
            )
        spg = slots // gpus
        if first.num_experts > slots:
            raise InfeasibleError(f"{first.num_experts} experts do not fit in {slots} slots")
        max_replicas = gpus  # no two replicas of one expert on one GPU
        if self.num_redundant > first.num_experts * (max_replicas - 1):
            raise InfeasibleError(
                f"{self.num_redundant} redundant slots exceed what {gpus} GPUs can hold without two "
                "replicas of one expert on one GPU"
            )
        if spg > first.num_experts:
            raise InfeasibleError(
                f"{spg} slots per GPU but only {first.num_experts} experts: a GPU would hold one expert twice"
            )
        if self.current is not None and (
            self.current.num_gpus != gpus
            or self.current.num_experts != first.num_experts
            or self.current.num_layers != first.num_layers
        ):
            raise PlacementError("--current plan does not match the cluster or the trace")

    @property
    def workload(self) -> Workload:
        return self.workloads[0]

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def num_experts(self) -> int:
        return self.workload.num_experts

    @property
    def num_layers(self) -> int:
        return self.workload.num_layers

    @property
    def slots_per_gpu(self) -> int:
        return (self.num_experts + self.num_redundant) // self.num_gpus

    @property
    def for_engine(self) -> bool:
        """Whether a serving engine's dispatch fixes the replica shares (not the share-aware router)."""
        return self.engine != SHARE

    def source_demand(self) -> np.ndarray | None:
        """``[layers, gpus, experts]`` the primary trace's assignments by home GPU for per-token traces,
        ``None`` for load-only inputs (tokens spread evenly over the home GPUs)."""
        wl = self.workload
        return wl.demand(self.num_gpus) if wl.per_token else None

    def engine_shares(self, plan: Plan) -> np.ndarray:
        """``[layers, slots]`` the shares ``plan``'s slots take under this problem's engine."""
        return engine_plan_shares(plan, self.engine, self.source_demand())

    def layer_engine_shares(self, layer: int, row: np.ndarray) -> np.ndarray:
        """``[slots]`` the shares one layer's ``phy2log`` row gives its slots under this problem's engine."""
        flat = np.asarray(row, dtype=np.int64).ravel()
        one = Plan(self.num_gpus, self.gpus_per_node, self.slots_per_gpu, flat[None, :])
        demand = self.source_demand()
        layer_demand = None if demand is None else demand[layer]
        # the search's estimate: SGLang's expectation (its draw runs over the whole plan at the end)
        return slot_shares(one, 0, self.engine, layer_demand, sglang_expected=True)

    def combined_load(self) -> np.ndarray:
        """``[layers, experts]`` load over all traces, each normalised to one token then weighted."""
        weights = self.weights or tuple(1.0 for _ in self.workloads)
        total = np.zeros_like(self.workload.load, dtype=np.float64)
        for w, wl in zip(weights, self.workloads, strict=True):
            total += w * wl.load / max(wl.load.sum(axis=1, keepdims=True).mean(), 1e-12)
        return total * self.workload.load.sum(axis=1, keepdims=True).mean() / sum(weights)


@dataclass(frozen=True)
class SolverConfig:
    """Solver options. ``time_limit_s`` bounds the whole solve; ``seed`` makes it deterministic."""

    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 2
    balance_weight: float = 1.0
    traffic_weight: float = 1.0
    robust: str = "weighted"
    free_memory_gib: float | None = None
    node_limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_limit_s <= 0:
            raise PlacementError("--time-limit must be > 0")
        if self.node_limit is not None and self.node_limit < 1:
            raise PlacementError("--node-limit must be >= 1")
        if self.robust not in ("weighted", "worst"):
            raise PlacementError("robust must be 'weighted' or 'worst'")
