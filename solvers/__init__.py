"""Placement solvers: one signature ``solve(problem, config, *, rng) -> Plan`` and a registry.

Importing this package registers every built-in solver.
"""

from moe_placement.solvers import baselines as _baselines  # noqa: F401  (registers the baselines)
from moe_placement.solvers import eplb as _eplb  # noqa: F401  (registers eplb, eplb-global)
from moe_placement.solvers import ilp as _ilp  # noqa: F401  (registers cpsat, best)
from moe_placement.solvers import robust as _robust  # noqa: F401  (registers robust)
from moe_placement.solvers.base import (
    REGISTRY,
    PlacementProblem,
    SolverConfig,
    get_solver,
    register,
    run_solver,
)

__all__ = ["REGISTRY", "PlacementProblem", "SolverConfig", "get_solver", "register", "run_solver"]
