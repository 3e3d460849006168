"""The solver interface: the registry and :func:`run_solver` (problem and config: :mod:`.problem`).

A solver is a pure function ``solve(problem, config, *, rng) -> Plan``: no I/O, no globals, no imports
of Ray or the simulator. ``rng`` is a ``numpy.random.Generator`` made from ``config.seed`` at the
boundary (:func:`run_solver`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from moe_placement import interrupt
from moe_placement.errors import PlacementError
from moe_placement.plan import Plan
from moe_placement.solvers.common import check_memory
from moe_placement.solvers.objective import report
from moe_placement.solvers.problem import PlacementProblem, SolverConfig
from moe_placement.solvers.sizing import check_size


class SolverFn(Protocol):
    def __call__(
        self, problem: PlacementProblem, config: SolverConfig, *, rng: np.random.Generator
    ) -> Plan: ...


@dataclass(frozen=True)
class SolverEntry:
    name: str
    fn: SolverFn
    description: str
    baseline: bool


REGISTRY: dict[str, SolverEntry] = {}


def register(
    name: str, description: str, *, baseline: bool = False
) -> Callable[[SolverFn], SolverFn]:
    """Decorator adding a solver to :data:`REGISTRY` under ``name``."""

    def wrap(fn: SolverFn) -> SolverFn:
        REGISTRY[name] = SolverEntry(name, fn, description, baseline)
        return fn

    return wrap


def get_solver(name: str) -> SolverEntry:
    if name not in REGISTRY:
        raise PlacementError(f"unknown solver {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def hard_limit_s(config: SolverConfig) -> float | None:
    """Wall seconds after which a solver's CP-SAT calls stop and no new layer model starts (each layer
    left keeps its greedy warm start): the hard edge behind the solver's own budget, which plans to
    finish by 85% of the limit (:mod:`moe_placement.interrupt`). None for a deterministic run: its
    budget is CP-SAT's deterministic time, and a wall-clock edge would make its plan depend on the
    machine's load (what-if sweeps, regress); ``placement solve`` puts a wider wall edge around it."""
    if config.extra.get("deterministic", False):
        return None
    return config.time_limit_s


def run_solver(name: str, problem: PlacementProblem, config: SolverConfig | None = None) -> Plan:
    """Run a registered solver with a generator seeded from ``config.seed``; fill in wall time, the
    trace fingerprint and the objective every plan reports (the evaluator's MoE time, with the solver's
    search objective kept beside it: :func:`moe_placement.solvers.objective.report`); validate the plan."""
    config = config or SolverConfig()
    entry = get_solver(name)
    rng = np.random.default_rng(config.seed)
    check_memory(problem, config)  # every solver, baselines included, must respect GPU memory
    # and fit this machine and the time limit: refused up front, with the estimate
    check_size(problem, config)
    start = time.perf_counter()
    with interrupt.deadline(hard_limit_s(config)) as limit:
        plan = entry.fn(problem, config, rng=rng)
    seconds = time.perf_counter() - start
    stopped = interrupt.requested() or (interrupt.TIME_LIMIT_REACHED if limit.reached else None)
    if stopped:  # the best plan found before a SIGINT or the time limit's hard edge: say so
        prov = plan.provenance
        plan = replace(plan, provenance=replace(prov, extra={**prov.extra, "stopped": stopped}))
    if problem.for_engine:
        # the engine's rule, not the solver, decides the replica shares: store what it will give
        # (the search objective is rescored with them: the solver's own assumed free shares)
        shares = problem.engine_shares(plan) if problem.num_redundant > 0 else None
        prov = replace(plan.provenance, objective=None, bound=None, gap=None)
        plan = replace(plan, replica_share=shares, provenance=prov)
    plan = replace(
        plan,
        provenance=replace(
            plan.provenance,
            seconds=plan.provenance.seconds or seconds,
            trace_fingerprint=",".join(w.fingerprint for w in problem.workloads),
            engine=problem.engine if problem.for_engine else None,
        ),
        # the model layers the trace's MoE layers are, so exports to engines need no flag
        layers=plan.layers or problem.workload.shape.layer_identity(),
    )
    return replace(plan, provenance=report(problem, config, plan, name)).validate()


__all__ = ["REGISTRY", "PlacementProblem", "SolverConfig", "get_solver", "register", "run_solver"]
