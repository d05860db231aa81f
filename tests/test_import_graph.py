"""The packages' import graph, read from the source with ``ast``: every import counts, also
those under ``TYPE_CHECKING`` and inside functions, since each is a dependency all the same.

- No cycle between modules.
- The layering: ``config`` imports neither ``app`` nor ``alpaca_bridge``; ``alpaca_bridge``
  reaches into ``app`` only through the broker seam, the bus, the event contract and the
  shared retry backoff (never
  ``app.keys``); of ``app``, only the factory (the composition root) and the CLI (for
  ``simulate``) know ``alpaca_bridge``.
- Imports sit at module level: one inside a function hides a dependency from the reader. The
  one exception is an optional dependency imported where its absence is handled.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "alpaca_bridge", "config")
BRIDGE_MAY_IMPORT = frozenset({"app.backoff", "app.broker", "app.bus", "app.events"})
# The factory composes the app with the bridge; the CLI also runs the simulated broker alone
# (``portfolio-stream simulate``).
KNOWS_THE_BRIDGE = frozenset({"app.factory", "app.cli"})
OPTIONAL_DEPENDENCIES = frozenset({"uvloop"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = our_modules()


def imported(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    """The names an import statement loads: ``from a import b`` is ``a.b`` when that is a
    module of ours, else ``a``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            package = package[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in MODULES else base


def imports_of(module: str) -> Iterator[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, inside a function?) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for name in imported(child, module):
                    yield name, child, in_function
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from visit(child, nested)

    yield from visit(tree, False)


def graph() -> dict[str, set[str]]:
    return {
        module: {name for name, _, _ in imports_of(module) if name in MODULES} for module in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    """Guards the tests below against passing on an empty graph."""
    edges = graph()
    assert {"app.keys", "app.factory", "alpaca_bridge.service", "config.settings"} <= set(edges)
    assert "alpaca_bridge.service" in edges["app.factory"]
    assert "app.broker" in edges["alpaca_bridge.service"]
    assert "app.broker" in edges["app.keys"]  # a TYPE_CHECKING import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert cycles(graph()) == []


def test_alpaca_bridge_reaches_app_only_through_the_seam() -> None:
    reached = {
        (module, target)
        for module, targets in graph().items()
        if module.startswith("alpaca_bridge")
        for target in targets
        if target.split(".")[0] == "app"
    }
    assert {target for _, target in reached} <= BRIDGE_MAY_IMPORT, sorted(reached)
    assert not {m for m, target in reached if target == "app.keys"}


def test_only_the_factory_knows_alpaca_bridge_and_config_knows_neither() -> None:
    edges = graph()
    knows_bridge = {
        module
        for module, targets in edges.items()
        if module.startswith("app") and any(t.startswith("alpaca_bridge") for t in targets)
    }
    assert knows_bridge <= KNOWS_THE_BRIDGE
    config_reaches = {
        target
        for module, targets in edges.items()
        if module.startswith("config")
        for target in targets
        if not target.startswith("config")
    }
    assert config_reaches == set()


def test_imports_are_at_module_level() -> None:
    local = [
        f"{module}:{statement.lineno} imports {name}"
        for module in MODULES
        for name, statement, in_function in imports_of(module)
        if in_function and name.split(".")[0] not in OPTIONAL_DEPENDENCIES
    ]
    assert local == []
