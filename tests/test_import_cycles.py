"""No import cycles between failstore modules (imports inside functions and under
TYPE_CHECKING count too). The layering itself is checked by `lint-imports` (pyproject.toml)."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph, modules: list[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c.startswith("failstore")), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("failstore.a", "failstore.b", "failstore.c"):
        graph.add_module(m)
    graph.add_import(importer="failstore.a", imported="failstore.b")
    graph.add_import(importer="failstore.b", imported="failstore.a")
    graph.add_import(importer="failstore.b", imported="failstore.c")
    assert _cycles(graph, sorted(graph.modules)) == [["failstore.a", "failstore.b"]]


def test_failstore_has_no_import_cycles():
    graph = grimp.build_graph("failstore", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith("failstore"))
    assert len(modules) > 50
    assert _cycles(graph, modules) == []
