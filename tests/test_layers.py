"""Imports point one way: no cycles inside the package, and each layer imports only those below it.

Read from the source (every ``import``, at module level or inside a function), so a cycle
held together by a function-level import fails here as surely as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fmnist_search"

# Bottom to top; docs/architecture.md explains each layer.
LAYERS = {
    "core": {"errors", "interrupts", "config"},  # no torch, no Optuna
    "engine": {"devices", "augment", "schedules", "data", "models", "train", "weights", "teachers", "inference"},
    "search": {"storage", "study", "space", "objective", "workers", "artifacts", "export", "report", "plots"},
    "app": {"app"},  # prints nothing: messages and progress through callbacks
    "cli": {"cli", "__main__"},
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
FORBIDDEN = {  # third-party packages a layer must not import
    "core": {"torch", "torchvision", "optuna", "sqlalchemy", "pandas", "plotly", "numpy"},
    "engine": {"optuna", "sqlalchemy", "pandas", "plotly"},
}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, third-party top-level packages) that ``path`` imports anywhere."""
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                inner.add(node.module.split(".")[0])
            else:
                inner.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(alias.name.split(".")[0] for alias in node.names)
    return {m for m in inner if (PACKAGE / f"{m}.py").exists()}, outer  # not `from . import __version__`


GRAPH = {p.stem: imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    assert set(GRAPH) == set(RANK), "add the new module to LAYERS (and docs/architecture.md)"


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH[module][0]):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    inner, outer = GRAPH[module]
    upward = sorted(dep for dep in inner if RANK[dep] > RANK[module])
    assert not upward, f"{module} ({_layer(module)}) imports {upward} from a layer above"
    banned = FORBIDDEN.get(_layer(module), set()) & outer
    assert not banned, f"{module} ({_layer(module)}) imports {sorted(banned)}"


def test_the_checker_sees_function_level_imports():
    inner, _ = imports(PACKAGE / "cli.py")
    assert "app" in inner  # cli imports it only inside its commands


def _layer(module: str) -> str:
    return next(name for name, modules in LAYERS.items() if module in modules)
