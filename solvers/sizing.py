"""Refuse, before any work, a problem larger than this machine can hold or solve in the time limit.

Two costs grow faster than the input and cannot be cut short once started:

* memory: the evaluator (:mod:`moe_placement.metrics`), which scores every plan, keeps per layer four
  ``[G, G]`` float64 tables of copies between GPU pairs (dispatch and combine, over NVLink and over NICs),
  ``4 L G^2 x 8`` bytes; the search context holds the ``[L, G, E]`` demand by home GPU;
* time: the greedy warm start that every CP-SAT solver and the greedy baselines build per layer places
  each of the ``G spg`` slots on the least loaded GPU by scanning the ``G`` GPUs (:func:`moe_placement.
  solvers.common.lpt`), ``L G^2 spg`` steps at about :data:`SECONDS_PER_LPT_STEP` each (measured on the
  2-core development VM: 0.8-1.1 us per (slot, GPU) step for 256-1024 GPUs).

Before this check, ``--gpus 100000 --redundant 99984`` on a 16-expert trace ran for hours with no answer
(the estimate: ~11 h of warm start and 1.3 PB of tables). The local search after the warm start and the
CP-SAT searches stop at the time limit (:mod:`moe_placement.interrupt`), so they need no estimate here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from moe_placement.errors import PlacementError
from moe_placement.solvers.problem import PlacementProblem, SolverConfig

SECONDS_PER_LPT_STEP = 1.0e-6  # one (slot, GPU) step of the greedy warm start, measured (see above)
TIME_SLACK = 3.0  # refuse when the estimate exceeds the time limit by more than this factor
MEMORY_SHARE = 0.8  # refuse when the estimate exceeds this share of the memory available now


@dataclass(frozen=True)
class SizeEstimate:
    """What a problem will take before a plan can be scored: bytes held at once, seconds of work that
    cannot stop early."""

    evaluator_bytes: float
    demand_bytes: float
    warm_start_s: float

    @property
    def memory_bytes(self) -> float:
        return self.evaluator_bytes + self.demand_bytes


def estimate(problem: PlacementProblem) -> SizeEstimate:
    L, G, E = problem.num_layers, problem.num_gpus, problem.num_experts
    spg = problem.slots_per_gpu
    return SizeEstimate(
        evaluator_bytes=4.0 * L * G * G * 8,
        demand_bytes=float(L) * G * E * 8,
        warm_start_s=SECONDS_PER_LPT_STEP * L * G * G * spg,
    )


def available_memory_bytes() -> float | None:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else physical memory, else None (unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 2 * 3600:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def check_size(problem: PlacementProblem, config: SolverConfig) -> SizeEstimate:
    """Raise :class:`PlacementError` with the estimate when the problem cannot fit this machine's memory
    or be warm-started within ``TIME_SLACK`` times the time limit; return the estimate otherwise.
    Deterministic runs are checked the same way (their limit is in CP-SAT's deterministic seconds)."""
    est = estimate(problem)
    shape = (
        f"{problem.num_layers} layers x {problem.num_gpus} GPUs x {problem.slots_per_gpu} slots "
        f"per GPU ({problem.num_experts} experts + {problem.num_redundant} redundant)"
    )
    free = available_memory_bytes()
    if free is not None and est.memory_bytes > MEMORY_SHARE * free:
        raise PlacementError(
            f"problem too large for this machine: {shape} needs about {_bytes(est.memory_bytes)} "
            f"(the evaluator's GPU-pair tables, 4 x layers x GPUs^2 x 8 B) but {_bytes(free)} "
            "is available; use fewer GPUs or fewer layers"
        )
    if est.warm_start_s > TIME_SLACK * config.time_limit_s:
        raise PlacementError(
            f"problem too large for the time limit: {shape} needs about "
            f"{_seconds(est.warm_start_s)} for the greedy warm start alone (layers x GPUs^2 x slots "
            f"per GPU x ~{SECONDS_PER_LPT_STEP * 1e6:g} us) against --time-limit "
            f"{config.time_limit_s:g} s; raise --time-limit to {est.warm_start_s:.0f} or use fewer GPUs"
        )
    return est
