"""The layout docs/development.md promises: the domain modules (data, models, training, metrics,
search) import nothing from the console, tracking, the commands or the command line, and no
module of ecgtune imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "ecgtune"
DOMAIN = ("data", "models", "training", "metrics", "search")
UPPER = ("ecgtune.console", "ecgtune.tracking", "ecgtune.commands", "ecgtune.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ecgtune module a file imports, at any depth of the file (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("ecgtune")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ecgtune modules it imports (names that are attributes, not modules, are
    dropped)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in imported_modules(path) if target in files and target != name}
        for name, path in files.items()
    }


def is_domain(module: str) -> bool:
    return module.removeprefix("ecgtune.").split(".")[0] in DOMAIN


def test_domain_modules_import_nothing_from_the_layers_above() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if is_domain(module)
        for target in targets
        if target.startswith(UPPER)
    )
    assert [module for module in graph if is_domain(module)], "no domain module found"
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_imports_itself_back() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_circles(
    graph: dict[str, set[str]], expected: list[str] | None
) -> None:
    assert find_cycle(graph) == expected
