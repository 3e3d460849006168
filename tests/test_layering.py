"""Import direction: core <- traces <- solvers / simulator <- executor / reports / CLI.

Solvers and the simulator never import Ray, each other, the executor or the reports; the core never
imports anything above it. Checked statically on every module's imports (including function-level ones).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "placement/" + p.name for p in (REPO / "placement").glob("*.py") if p.name != "cli.py"
]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    # core: cluster, plan, metrics, workload, shapes, errors, atomic
    "placement/*.py": (
        "traces",
        "solvers",
        "simulator",
        "reports",
        "ray",
        "placement.executor",
        "placement.commands",
    ),
    "traces": (
        "solvers",
        "simulator",
        "reports",
        "ray",
        "placement.executor",
        "placement.commands",
    ),
    "solvers": ("simulator", "reports", "ray", "placement.executor", "placement.commands"),
    "simulator": ("solvers", "reports", "ray", "placement.executor", "placement.commands"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files_of(scope: str) -> list[Path]:
    if scope == "placement/*.py":
        return [REPO / p for p in CORE_MODULES]
    return sorted((REPO / scope).rglob("*.py"))


@pytest.mark.parametrize("scope", sorted(FORBIDDEN))
def test_import_direction(scope: str) -> None:
    bad = []
    for path in files_of(scope):
        for name in imported_modules(path):
            for forbidden in FORBIDDEN[scope]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)
