"""The core packages form a layered graph: no two subpackages of ``alignguard`` import each other,
directly or through others. Read statically (ast), so imports inside functions count as much as
those at the top of a module: a lazy import hides a cycle from Python, not from a reader."""

from __future__ import annotations

import ast
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "alignguard"


def _unit(module: str) -> str | None:
    """The node of ``alignguard.<unit>[...]``: a subpackage or a top-level module (None: the root)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "alignguard" and len(parts) > 1 else None


def _imported_modules(tree: ast.Module, package: str) -> list[tuple[str, int]]:
    """Every module an import statement anywhere in ``tree`` names, with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if base == "alignguard"]
    return found


def import_graph(library: Path = LIBRARY) -> dict[str, dict[str, str]]:
    """``{unit: {imported unit: "file:line" of the first such import}}`` over the library."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(library.rglob("*.py")):
        parts = path.relative_to(library.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else ".".join(parts[:-1])
        source = _unit(module)
        if source is None:
            continue
        for name, line in _imported_modules(ast.parse(path.read_text(), filename=str(path)), package):
            target = _unit(name) if name.startswith("alignguard.") else None
            if target is not None and target != source:
                graph[source].setdefault(target, f"{path.relative_to(library.parent)}:{line}")
    return graph


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one unit (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for target in graph.get(unit, {}):
            if target not in index:
                visit(target)
                low[unit] = min(low[unit], low[target])
            elif target in stack:
                low[unit] = min(low[unit], index[target])
        if low[unit] == index[unit]:
            component = []
            while (member := stack.pop()) != unit:
                component.append(member)
            components.append([unit, *component])

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return [_cycle_in(graph, sorted(c)) for c in components if len(c) > 1]


def _cycle_in(graph: dict[str, dict[str, str]], component: list[str]) -> list[str]:
    """A concrete cycle through the component's first unit (breadth-first, so a shortest one)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        unit = queue.pop(0)
        for target in sorted(graph.get(unit, {})):
            if target == start:
                return [*paths[unit], start]
            if target in members and target not in paths:
                paths[target] = [*paths[unit], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start} in {component}")  # unreachable for an SCC


def describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    hops = [f"{a} -> {b} ({graph[a][b]})" for a, b in pairwise(cycle)]
    return " ; ".join(hops)


def test_no_import_cycle_between_library_packages():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between alignguard packages:\n" + "\n".join(
        describe(graph, cycle) for cycle in cycles
    )


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    library = tmp_path / "alignguard"
    for package in ("a", "b", "c"):
        (library / package).mkdir(parents=True)
        (library / package / "__init__.py").write_text("")
    (library / "a" / "x.py").write_text("def f():\n    from alignguard.b.y import g\n")
    (library / "b" / "y.py").write_text("from ..c import z\n")
    (library / "c" / "z.py").write_text("import alignguard.a.x\n")
    graph = import_graph(library)
    assert {unit: set(targets) for unit, targets in graph.items()} == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    cycles = find_cycles(graph)
    assert cycles == [["a", "b", "c", "a"]]
    assert "a -> b (alignguard/a/x.py:2)" in describe(graph, cycles[0])


def test_the_families_layer_sits_below_every_stage():
    """Families are consulted by every stage, so they import none of them (nor the guards)."""
    stages = {"synthesis", "training", "merge", "evaluation", "guards"}
    assert not stages & set(import_graph()["families"])
