"""The shape of service/: settings are read in config.py only, no `global`, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

SERVICE = ROOT / "service"
CONFIG = SERVICE / "config.py"


def module_name(path: Path) -> str:
    """Return the dotted name of a file under the repository root (a package is its __init__)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(SERVICE.rglob("*.py"))}


def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def reads_the_environment(tree: ast.Module) -> list[int]:
    """Return the lines that touch os.environ / os.getenv / os.putenv, however imported."""
    names = {"environ", "environb", "getenv"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines.extend(node.lineno for alias in node.names if alias.name in names)
    return lines


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_only_config_reads_the_environment(name):
    path = SOURCES[name]
    if path == CONFIG:
        assert reads_the_environment(tree_of(path))  # the check itself still sees a read
        return
    assert reads_the_environment(tree_of(path)) == [], f"{path}: read settings through config.py"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_no_global_statement(name):
    tree = tree_of(SOURCES[name])
    found = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Global)]
    assert found == [], f"{SOURCES[name]}: process-global state at lines {found}"


def imports_of(name: str) -> set[str]:
    """Return the service modules `name` imports, at module level or inside functions."""
    path = SOURCES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree_of(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from . import model` imports the module service.model; `from .x import y` imports x.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in SOURCES and target != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules (first repeated last), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = {name: imports_of(name) for name in SOURCES}
    assert graph["service.pages"] >= {"service.config"}  # the check sees ordinary imports
    assert "service.model" in graph["service.storage.base"]  # and `from .. import model`
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
