"""Folders are floors: imports only run downward, never between packages of one floor, never in a circle.

Floors, bottom to top (each a top folder of the repository, installed as ``moe_placement.<folder>``):

0. ``placement/`` (the root package ``moe_placement``): the shared domain model;
1. ``traces/``, ``solvers/``, ``simulator/``: the engines of work, independent of each other;
2. ``executor/``: Ray actors on torch.distributed;
3. ``pipeline/``: one scenario from trace to simulated time, and sweeps of them;
4. ``reports/``: pure functions of stored results;
5. ``cli/``: the ``placement`` command.

Checked statically on every module's imports, function-level ones included, so that a lazy import cannot
hide a wrong direction or a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = "moe_placement"
FLOORS: dict[str, int] = {
    "placement": 0,
    "traces": 1,
    "solvers": 1,
    "simulator": 1,
    "executor": 2,
    "pipeline": 3,
    "reports": 4,
    "cli": 5,
}
# Ray stays at the edge: only the executor (its actors) and the pipeline's sweep may import it.
RAY_ALLOWED = ("executor/", "pipeline/sweep.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    folder = parts.pop(0)
    prefix = [ROOT] if folder == "placement" else [ROOT, folder]
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(prefix + parts)


def package_of(module: str) -> str:
    """The top folder a dotted ``moe_placement...`` module lives in."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FLOORS and parts[1] != "placement":
        return parts[1]
    return "placement"


def source_files() -> Iterator[Path]:
    for folder in FLOORS:
        yield from sorted((REPO / folder).rglob("*.py"))


def imports_of(path: Path, known: dict[str, Path] | None = None) -> set[str]:
    """Absolute module names imported anywhere in ``path``: ``from a import b`` counts as ``a.b`` when
    that is one of the ``known`` modules (a submodule), else as ``a``."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            inner = {s for s in subs if known is not None and s in known}
            names.update(inner)
            if len(inner) < len(subs):
                names.add(node.module)
    return names


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for p in source_files()}


def test_every_top_folder_has_a_floor() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS), "a new top folder needs a floor in tests/test_layering.py"


def test_old_import_names_are_gone() -> None:
    """The folders are never imported by their bare names, which a user's folder could shadow."""
    bad = []
    for path in source_files():
        for name in imports_of(path):
            if name.split(".")[0] in FLOORS:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", sorted(FLOORS))
def test_imports_only_run_downward(folder: str) -> None:
    known = our_modules()
    floor = FLOORS[folder]
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for name in imports_of(path, known):
            if name == "ray" or name.startswith("ray."):
                if not rel.startswith(RAY_ALLOWED):
                    bad.append(f"{rel} imports Ray")
                continue
            if not name.startswith(ROOT):
                continue
            target = package_of(name)
            if target != folder and FLOORS[target] >= floor:
                bad.append(f"{rel} (floor {floor}) imports {name} (floor {FLOORS[target]})")
    assert not bad, "\n".join(bad)


def test_no_module_cycles() -> None:
    """No two modules import each other, directly or through others (function-level imports too)."""
    known = our_modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        graph[name] = {n for n in imports_of(path, known) if n in known and n != name}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
