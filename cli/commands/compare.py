"""``placement compare``: every solver (or the ones named) on one trace and cluster, one table side by
side; the same as ``placement solve --solver all``, with the same problem options."""

from __future__ import annotations

import argparse

from moe_placement.cli.commands._common import Command
from moe_placement.cli.commands.solve import (
    add_problem_arguments,
    build_problem,
    compare_solvers,
    say_notices,
    solver_config,
)
from moe_placement.errors import PlacementError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_problem_arguments(p)
    p.add_argument(
        "--solvers",
        default=None,
        help="comma-separated solver names to compare (default: every registered solver)",
    )


def run(args: argparse.Namespace) -> int:
    from moe_placement.solvers import REGISTRY

    names = sorted(REGISTRY)
    if args.solvers:
        names = [n.strip() for n in args.solvers.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown or not names:
            raise PlacementError(
                f"unknown solver {', '.join(unknown) or '(none given)'}; known: {', '.join(sorted(REGISTRY))}"
            )
    if args.redundant_total is not None or args.memory_gib is not None:
        raise PlacementError(
            "compare places every layer with --redundant; a model-wide budget "
            "(--redundant-total, --memory-gib) is for placement solve"
        )
    problem, config = build_problem(args), solver_config(args)
    say_notices(args)
    return compare_solvers(args, problem, config, names)


COMMAND = Command(
    "compare", "compare every solver on one trace: one table side by side", add_arguments, run
)
