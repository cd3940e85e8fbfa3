"""No import circles in the code that runs: chalicelib, hpc_functions, offline, first_cli.

The graph is read with ``ast`` from the source files. An edge is any import that runs: at module
level or inside a function (a function-level import still ties the two modules together both
ways; three of the four circles issue 18 found closed through one), but not one under
``if TYPE_CHECKING:``, which never runs. An edge goes to the module named: ``from pkg import x``
to ``pkg.x`` when that is a module, else to ``pkg`` (its ``__init__``). The parent packages that
Python imports on the way are not edges: every package whose ``__init__`` re-exports its
submodules would otherwise be a circle.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chalicelib", "hpc_functions", "offline", "first_cli")

# Circles known and fixed elsewhere, each with where. An entry whose circle is gone fails the
# test too, so this list only shrinks.
ALLOWED: set[frozenset[str]] = set()

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def modules_under(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        visit(node)

    visit(tree)
    return found


def import_graph(modules: dict[str, Path]) -> Graph:
    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            targets: list[str | None]
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base)
                    for a in node.names
                ]
            for target in targets:
                if target is not None and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Each circle (a strongly connected component of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def describe(graph: Graph, component: list[str]) -> str:
    """One shortest circle through the component's first module, with each import's line."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in graph[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                path.reverse()
                hops = [*path, start]
                return (
                    " -> ".join(
                        f"{a} (line {graph[a][b]})" for a, b in zip(hops, hops[1:], strict=False)
                    )
                    + f" -> {start}"
                )
            if w in members and w not in came_from:
                came_from[w] = v
                queue.append(w)
    return " <-> ".join(component)


def test_the_code_that_runs_has_no_import_circles() -> None:
    graph = import_graph(modules_under(ROOT, PACKAGES))
    found = cycles(graph)
    unexpected = [c for c in found if frozenset(c) not in ALLOWED]
    assert not unexpected, "import circles:\n" + "\n".join(describe(graph, c) for c in unexpected)
    gone = ALLOWED - {frozenset(c) for c in found}
    assert not gone, f"allowed circles that no longer exist (remove them from ALLOWED): {gone}"


# The API's own modules: its routes' path, its authenticators, its operator views. No other
# process's root may load one (issue 18: each process builds only what it uses).
API_ONLY = (
    "app",
    "chalicelib.services",
    "chalicelib.gateway",
    "chalicelib.fleet",
    "chalicelib.dashboard",
    "chalicelib.http",
    "chalicelib.streaming.service",
    "chalicelib.streaming.relay",
    "chalicelib.batch.api",
    "chalicelib.auth.chain",
    "chalicelib.auth.globus",
    "chalicelib.auth.policy",
)
# Of ``chalicelib.auth`` the poller loads only the ``Principal`` value type (the limits it
# releases name one): no authenticator, no key check.
POLLER_AUTH = {"chalicelib.auth", "chalicelib.auth.principal"}


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module an import of ``start`` may load (function-level imports included)."""
    seen = {start}
    queue = deque([start])
    while queue:
        for w in graph.get(queue.popleft(), {}):
            if w not in seen:
                seen.add(w)
                queue.append(w)
    return seen


def _api_only(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == a or m.startswith(f"{a}.") for a in API_ONLY))


@pytest.mark.parametrize("root", ["chalicelib.poller.main", "chalicelib.batch.main"])
def test_a_workers_root_loads_none_of_the_apis_modules(root: str) -> None:
    graph = import_graph({**modules_under(ROOT, PACKAGES), "app": ROOT / "app.py"})
    assert _api_only(reachable(graph, root)) == []


def test_the_poller_loads_no_authenticator() -> None:
    graph = import_graph(modules_under(ROOT, PACKAGES))
    auth = {
        m for m in reachable(graph, "chalicelib.poller.main") if m.startswith("chalicelib.auth")
    }
    assert auth <= POLLER_AUTH


def test_the_apis_root_is_what_loads_them() -> None:
    # The check above can fail: the API's own root reaches what it forbids.
    graph = import_graph(modules_under(ROOT, PACKAGES))
    assert {"chalicelib.gateway", "chalicelib.dashboard.data", "chalicelib.auth.chain"} <= set(
        _api_only(reachable(graph, "chalicelib.services"))
    )


def _package(root: Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(modules_under(root, ("pkg",)))


def test_a_function_level_import_closes_a_circle(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "thing = 1\ndef later():\n    from pkg import a\n    return a\n",
        },
    )
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert describe(graph, ["pkg.a", "pkg.b"]) == "pkg.a (line 1) -> pkg.b (line 3) -> pkg.a"


@pytest.mark.parametrize(
    "guard", ["if TYPE_CHECKING:", "if typing.TYPE_CHECKING:"], ids=["name", "attribute"]
)
def test_imports_only_for_type_checking_are_no_edge(tmp_path: Path, guard: str) -> None:
    graph = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": f"import typing\nfrom typing import TYPE_CHECKING\n{guard}\n"
            "    from pkg.a import other\nthing = 1\n",
        },
    )
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {}
    assert cycles(graph) == []


def test_a_name_from_a_package_is_an_edge_to_its_init(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub.run import go\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/run.py": "def go():\n    from pkg import go as again\n    return again\n",
        },
    )
    assert cycles(graph) == [["pkg", "pkg.sub.run"]]
