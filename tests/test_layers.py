"""Imports point one way: no cycles inside the package, and each layer imports only those below it.

The layers are the folders: ``core/`` < ``engine/`` < ``search/`` < ``app/`` < ``cli.py``; the
CLI reaches the engine and the search only through the application layer.
Read from the source (every ``import``, at module level or inside a function), so a cycle
held together by a function-level import fails here as surely as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fmnist_search"

# Bottom to top; docs/architecture.md explains each layer.
LAYERS = ["core", "engine", "search", "app", "cli"]
SKIPS = {"cli": {"engine", "search"}}  # layers a layer must not import though they lie below it
FORBIDDEN = {  # third-party packages a layer must not import
    "core": {"torch", "torchvision", "optuna", "sqlalchemy", "pandas", "plotly", "numpy"},
    "engine": {"optuna", "sqlalchemy", "pandas", "plotly"},
}


def module_name(path: Path) -> str:
    """``core.config`` for fmnist_search/core/config.py, ``cli`` for fmnist_search/cli.py."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer(module: str) -> str:
    first = module.split(".")[0]
    return "cli" if first in ("__main__", "console") else first  # console.py: the CLI's printing


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """Package modules a relative ``from ... import ...`` in ``module`` names."""
    base = module.split(".")[: -node.level]  # the importing module's package, then up
    if node.module:
        base = [*base, *node.module.split(".")]
    names = [".".join([*base, alias.name]) for alias in node.names]  # `from .engine import data`
    found = [n for n in names if (PACKAGE / f"{n.replace('.', '/')}.py").exists()]
    target = ".".join(base)
    face = _face(target)  # `from ..search.store import mask_url`: the module the face loads it from
    if face:
        found += [f"{target}.{face[alias.name]}" for alias in node.names if alias.name in face]
    return found or ([target] if (PACKAGE / f"{target.replace('.', '/')}.py").exists() else [])


def _face(package: str) -> dict[str, str]:
    """A package face's table (``FACE = {name: module}`` in its ``__init__``), or {}."""
    init = PACKAGE / package.replace(".", "/") / "__init__.py"
    if not init.exists():
        return {}
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FACE" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, third-party top-level packages) that ``path`` imports anywhere."""
    module, inner, outer = module_name(path), set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            inner.update(_resolve(module, node))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("fmnist_search"):
                pytest.fail(f"{module}: import the package relatively, not as {node.module}")
            outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(alias.name.split(".")[0] for alias in node.names)
    return inner, outer


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py") if p.stem != "__init__"}


def test_every_module_is_in_a_layer():
    strays = sorted(m for m in GRAPH if layer(m) not in LAYERS)
    assert not strays, "put these under core/, engine/ or search/ (and in docs/architecture.md)"


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
    rank = LAYERS.index(layer(module))
    upward = sorted(dep for dep in inner if LAYERS.index(layer(dep)) > rank)
    assert not upward, f"{module} ({layer(module)}) imports {upward} from a layer above"
    banned = FORBIDDEN.get(layer(module), set()) & outer
    assert not banned, f"{module} ({layer(module)}) imports {sorted(banned)}"
    skipped = sorted(dep for dep in inner if layer(dep) in SKIPS.get(layer(module), set()))
    assert not skipped, f"{module} imports {skipped}: go through the application layer (app/)"


def test_the_checker_sees_through_a_packages_face():
    inner, _ = imports(PACKAGE / "app" / "studies.py")
    assert {"search.trials.coordination", "search.store.locks", "search.artifacts.weights"} <= inner


def test_the_checker_sees_function_level_imports_and_every_form():
    inner, _ = imports(PACKAGE / "cli.py")
    assert "app.options" in inner  # `from .app.options import (...)`, at the top
    assert "app.results" in inner  # `from .app.results import list_studies`, inside a command
    inner, _ = imports(PACKAGE / "app" / "models.py")
    assert "engine.data" in inner  # `from ..engine import data as data_mod`, inside a function
    inner, _ = imports(PACKAGE / "search" / "trials" / "lifecycle.py")
    assert {
        "core.interrupts",
        "engine.train",
        "search.trials.context",
        "search.store.storage",
    } <= inner  # ..., ..x.y, .y


def test_the_cycle_check_can_fail(monkeypatch):
    graph = dict(GRAPH)
    graph["core.errors"] = ({"core.config"}, set())  # config imports errors: a made-up cycle
    monkeypatch.setitem(globals(), "GRAPH", graph)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def test_the_cli_check_can_fail(monkeypatch):
    graph = dict(GRAPH)
    graph["cli"] = ({*GRAPH["cli"][0], "engine.train"}, GRAPH["cli"][1])  # a made-up reach past app/
    monkeypatch.setitem(globals(), "GRAPH", graph)
    with pytest.raises(AssertionError, match="go through the application layer"):
        test_imports_point_down("cli")


@pytest.mark.parametrize("package", ["search.store", "search.trials", "search.results", "search.artifacts"])
def test_every_name_a_face_offers_is_there(package):
    import importlib

    module = importlib.import_module(f"fmnist_search.{package}")
    face = _face(package)
    assert face and sorted(face) == module.__all__
    for name in face:
        assert getattr(module, name) is getattr(importlib.import_module(f"fmnist_search.{package}.{face[name]}"), name)
    with pytest.raises(AttributeError, match="offers no"):
        _ = module.nothing_here
